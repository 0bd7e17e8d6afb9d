import os

import pytest
import safetensors.torch
import torch

from nemo_peft.core import adapter_io
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.conftest import make_model


def saved(tmp_path, **kw):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], **kw))
    path = str(tmp_path / "ad")
    model.save_adapters(path)
    return model, path


def test_adapter_checkpoint_is_small_and_holds_only_adapters(tmp_path):
    model, path = saved(tmp_path, dim=2)
    tensors = safetensors.torch.load_file(os.path.join(path, adapter_io.WEIGHTS_NAME))
    assert tensors and all(".adapters.default." in k for k in tensors)
    assert sum(t.numel() for t in tensors.values()) == model.num_trainable_parameters()


def test_missing_adapter_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*save_adapters"):
        make_model("llama").load_adapters(str(tmp_path / "nope"))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    _, path = saved(tmp_path, dim=2)
    with pytest.raises(ValueError, match=r"lora_qkv.*shape \(4, 48\).*\(2, 48\)|lora_qkv.*shape \(2, 48\).*\(4, 48\)"):
        make_model("llama").load_adapters(path, cfg=LoraPEFTConfig(target_modules=["linear_qkv"], dim=4))


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    _, path = saved(tmp_path, dim=2)
    weights = os.path.join(path, adapter_io.WEIGHTS_NAME)
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match="damaged or truncated"):
        make_model("llama").load_adapters(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, path = saved(tmp_path, dim=2)
    good = open(os.path.join(path, adapter_io.WEIGHTS_NAME), "rb").read()

    def broken(tensors, filename):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(adapter_io, "save_file", broken)
    with pytest.raises(OSError):
        model.save_adapters(path)
    assert open(os.path.join(path, adapter_io.WEIGHTS_NAME), "rb").read() == good
    assert not [f for f in os.listdir(path) if f.startswith(".tmp-")]
    make_model("llama").load_adapters(path)  # still loadable


def test_duplicate_adapter_name_is_rejected():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2))
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2))


def test_multiple_named_adapters_save_and_load(tmp_path):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2), name="a")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_fc2"], dim=3), name="b")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    model.save_adapters(str(tmp_path / "both"))
    fresh = make_model("llama")
    assert fresh.load_adapters(str(tmp_path / "both")) == ["a", "b"]
    ids = torch.randint(0, 97, (1, 6))
    assert torch.equal(fresh(ids), model(ids))
