"""Two processes (DDP over gloo, CPU) fine-tune the tiny model: one process owns the output directory
(lock, adapter), so the run finishes and writes one adapter (the full scale-out work is issue 11)."""
import torch
from omegaconf import OmegaConf

from nemo_peft.recipes.build import build_model
from tests.helpers import run_example


def test_ddp_two_processes_write_one_adapter(tmp_path):
    out = tmp_path / "run"
    run = run_example("finetune.py", "model=tiny", "trainer.strategy=ddp", "trainer.devices=2",
                      "trainer.max_steps=3", f"exp_manager.output_dir={out}", "eval_before=false",
                      "model.eval_exact_match=false", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("adapter saved to") == 1  # the second process neither saves nor takes the lock
    assert not (out / ".lock").exists()
    tiny = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_query_groups": 2,
            "ffn_hidden_size": 128, "max_position_embeddings": 512}  # conf/model/tiny.yaml
    module = build_model(OmegaConf.create({"from_scratch": tiny}))
    assert module.model.load_adapters(str(out / "adapter")) == ["default"]  # same base: the fingerprint agrees
    assert any(not torch.all(v == 0) for k, v in module.model.adapter_state_dict().items() if "lora_b" in k)
