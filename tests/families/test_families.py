"""Model families: every model maps to its descriptor, and a third family is one descriptor away."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from nemo_peft import load_adapters, load_pretrained, save_hf, save_model
from nemo_peft.data.datamodule import SFTDataModule
from nemo_peft.families import FAMILIES, ModelFamily, family_named, family_of, register
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.recipes.build import build_data, build_model


class ToyConfig(GPTConfig):
    """A stand-in for a new architecture's config."""


class ToyModel(GPTModel):
    """A stand-in for a new architecture: its own class, so its own family."""


@pytest.fixture
def toy_family():
    family = register(ModelFamily(name="toy", kind="toy decoder", model_cls=ToyModel, config_cls=ToyConfig,
                                  sft_module_cls=GPTSFTModel, data_module_cls=SFTDataModule,
                                  data_preset="date_reformat", scratch_ids={"bos_token_id": "bos_id"}))
    yield family
    del FAMILIES["toy"]


def test_every_model_and_wrapper_maps_to_its_family():
    gpt, t5 = GPTModel(GPTConfig(num_layers=1)), T5Model(T5Config(num_layers=1))
    assert family_of(gpt).name == "gpt" and family_of(t5).name == "t5"
    assert family_of(GPTSFTModel(gpt)) is family_of(gpt)  # the Lightning wrapper is looked through
    assert family_named("t5").model_cls is T5Model
    with pytest.raises(ValueError, match=r"model\.arch='bert'.*gpt.*t5"):
        family_named("bert")
    with pytest.raises(TypeError, match="Linear belongs to no registered model family"):
        family_of(torch.nn.Linear(2, 2))


def test_a_third_family_is_one_descriptor(toy_family, tmp_path):
    """No recipe or converter knows the toy family, yet it builds, trains, saves and loads."""
    cfg = OmegaConf.create({"arch": "toy", "from_scratch": {"hidden_size": 32, "num_layers": 1,
                                                            "num_attention_heads": 2, "ffn_hidden_size": 32},
                            "peft": {"peft_scheme": "lora", "lora_tuning": {"dim": 2}}})
    module = build_model(cfg)
    assert type(module.model) is ToyModel and family_of(module) is toy_family
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"input": f"x: {w} =>", "output": w}) + "\n" for w in ("abc", "dab")))
    data = build_data(OmegaConf.create({"train_ds": {"file_names": [str(train)], "micro_batch_size": 2}}),
                      module.tokenizer, module.model)
    data.setup("fit")
    loss = module.loss(next(iter(data.train_dataloader())))
    loss.backward()
    assert torch.isfinite(loss) and module.model.num_trainable_parameters() > 0
    save_model(module.model, str(tmp_path / "toy"), module.tokenizer)
    assert json.load(open(tmp_path / "toy" / "config.json"))["format"] == "nemo_peft_toy"
    loaded, tok = load_pretrained(str(tmp_path / "toy"))
    assert type(loaded) is ToyModel and tok is not None
    with pytest.raises(ValueError, match="toy model family has no save_hf"):
        save_hf(loaded, str(tmp_path / "hf"))


def test_core_load_adapters_reads_only_our_format(tmp_path):
    """An HF PEFT directory is converted by nemo_peft.load_adapters; the model's own method names it."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(num_layers=1))
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2))
    from nemo_peft import save_hf_peft

    save_hf_peft(model, str(tmp_path / "hf"), base_model_name_or_path="base")
    torch.manual_seed(0)  # the same base: adapters record theirs
    fresh = GPTModel(GPTConfig(num_layers=1))
    with pytest.raises(ValueError, match=r"Hugging Face PEFT adapter.*nemo_peft\.load_adapters"):
        fresh.load_adapters(str(tmp_path / "hf"))
    assert load_adapters(fresh, str(tmp_path / "hf")) == ["default"]
