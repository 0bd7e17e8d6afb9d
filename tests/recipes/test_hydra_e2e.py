"""End-to-end: examples/finetune.py then examples/generate.py through Hydra on a tiny model."""
import json

import pytest

from tests.helpers import predict, run_example


def test_finetune_then_generate(tiny_task, tmp_path):
    out = tmp_path / "run"
    ft = run_example(
        "finetune.py", "model=tiny", f"exp_manager.output_dir={out}", "trainer.max_steps=30",
        f"data.train_ds.file_names=[{tiny_task['train']}]", f"data.test_ds.file_names=[{tiny_task['test']}]",
        f"data.validation_ds.file_names=[{tiny_task['test']}]", "model.optim.lr=5e-3",
        "trainer.enable_progress_bar=false", "model.peft.lora_tuning.dim=4", cwd=tmp_path,
    )
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert "held-out exact match: before" in ft.stdout
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_weights.safetensors").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()

    _, rows = predict("tiny", adapter, tiny_task, tmp_path)
    assert len(rows) == 16 and {"input", "prediction", "label"} <= set(rows[0])
    assert rows[0]["input"].startswith("x: ")


@pytest.mark.parametrize("override,message", [
    ("model.not_a_key=1", "not_a_key"),
    ("model.peft.lora_tuning.rank=4", "rank"),
    ("model.restore_from_path=/no/such/model.gguf", "does not exist"),
    ("model.peft.peft_scheme=loraa", "loraa"),
])
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    res = run_example("finetune.py", "model=tiny" if "restore" not in override else "model=smollm2",
                      override, f"exp_manager.output_dir={tmp_path / 'x'}", cwd=tmp_path)
    assert res.returncode != 0
    assert message in res.stderr


@pytest.mark.parametrize("schemes", [pytest.param("ptuning,adapter", marks=pytest.mark.slow), "lora,ia3"])  # CI time
def test_comma_list_of_schemes_trains_saves_and_generates(tiny_task, tmp_path, schemes):
    out = tmp_path / "run"
    ft = run_example(
        "finetune.py", "model=tiny", f"model.peft.peft_scheme={schemes}", f"exp_manager.output_dir={out}",
        "trainer.max_steps=3", "eval_before=false", "exp_manager.checkpoint=null",
        "model.peft.p_tuning.bottleneck_dim=16", "model.peft.p_tuning.embedding_dim=16",
        f"data.train_ds.file_names=[{tiny_task['train']}]", f"data.test_ds.file_names=[{tiny_task['test']}]",
        f"data.validation_ds.file_names=[{tiny_task['test']}]", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr[-3000:]
    saved = json.load(open(out / "adapter" / "adapter_config.json"))["adapters"]["default"]
    assert [c["method"] for c in saved] == [{"adapter": "adapter"}.get(s, s) for s in schemes.split(",")]
    _, rows = predict("tiny", out / "adapter", tiny_task, tmp_path)
    assert len(rows) == 16
