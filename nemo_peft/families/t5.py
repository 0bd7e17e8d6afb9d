"""The encoder-decoder family: T5, T5 v1.1, Flan-T5 and mT5 as one ``T5Model``."""
from nemo_peft.convert.hf_t5 import SUPPORTED, T5_PEFT_SPEC, load_hf_t5, save_hf_t5
from nemo_peft.data.seq2seq_dataset import Seq2SeqDataModule
from nemo_peft.families.base import ModelFamily, register
from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.models.t5_sft import T5SFTModel

T5 = register(ModelFamily(
    name="t5", kind="encoder-decoder (T5)", model_cls=T5Model, config_cls=T5Config,
    sft_module_cls=T5SFTModel, data_module_cls=Seq2SeqDataModule, data_preset="date_reformat_t5",
    # the decoder's inputs start with the model's own start token
    data_module_args=lambda model: {"decoder_start_id": model.config.decoder_start_token_id},
    scratch_ids={"decoder_start_token_id": "pad_id"},  # T5 has no BOS; decoding starts from the pad token
    hf_model_types=SUPPORTED, load_hf=load_hf_t5, save_hf=save_hf_t5, hf_peft=T5_PEFT_SPEC,
))
