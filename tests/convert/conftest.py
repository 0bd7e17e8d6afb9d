import shutil

import pytest
import torch

from tests.helpers import HF_T5_CASES, T5_STDS, randomize_base


@pytest.fixture(scope="module")
def hf_t5_checkpoint(tmp_path_factory):
    """hf_t5_checkpoint(tmp_path, case, name="hf") -> (transformers model reloaded from disk, a private copy of
    its checkpoint directory) for a case of HF_T5_CASES; each case is built once per module."""
    T = pytest.importorskip("transformers")
    store = tmp_path_factory.mktemp("hf_t5")
    built: dict[str, tuple] = {}  # case -> (transformers model, pristine checkpoint dir)

    def checkpoint(tmp_path, case, name="hf"):
        if case == "t5_tied_unscaled" and not hasattr(T.T5Config(), "scale_decoder_outputs"):
            pytest.skip("transformers < 5 cannot build a tied-but-unscaled T5")
        if case not in built:
            cls_name, kwargs, own_head = HF_T5_CASES[case]
            cls = getattr(T, cls_name)
            config = cls(**kwargs)
            model_cls = T.MT5ForConditionalGeneration if cls is T.MT5Config else T.T5ForConditionalGeneration
            model = model_cls(config)
            if own_head:  # transformers 5 always ties at construction; untie the way a v1.1 checkpoint is untied
                model.lm_head.weight = torch.nn.Parameter(torch.empty(config.vocab_size, config.d_model))
            randomize_base(model, std=0.2, stds=T5_STDS)
            pristine = str(store / case)
            model.save_pretrained(pristine)
            built[case] = (model_cls.from_pretrained(pristine, attn_implementation="eager").eval(), pristine)
        hf_model, pristine = built[case]
        path = str(tmp_path / name)
        shutil.copytree(pristine, path)
        return hf_model, path

    yield checkpoint
    built.clear()
