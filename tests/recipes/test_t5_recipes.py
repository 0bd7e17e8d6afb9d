"""T5 through the recipes: Hydra finetune + generate end to end, and T5-specific clear errors."""
import json
import re

import pytest
from omegaconf import OmegaConf

from nemo_peft.models.t5_sft import T5SFTModel
from nemo_peft.models.t5 import T5Model
from nemo_peft.recipes.build import build_data, build_model
from tests.helpers import predict, run_example


def task_overrides(tiny_task):
    return [f"data.train_ds.file_names=[{tiny_task['train']}]", f"data.test_ds.file_names=[{tiny_task['test']}]",
            f"data.validation_ds.file_names=[{tiny_task['test']}]", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("scheme", ["lora", pytest.param("ptuning,adapter", marks=pytest.mark.slow)])  # CI time
def test_t5_finetune_then_generate(tiny_task, tmp_path, scheme):
    out = tmp_path / "run"
    ft = run_example("finetune.py", "model=t5", f"model.peft.peft_scheme={scheme}", f"exp_manager.output_dir={out}",
                     "trainer.max_steps=30", "model.optim.lr=1e-2", "exp_manager.checkpoint=null",
                     "model.peft.lora_tuning.target_modules=[all]",  # cross-attention's linear_q/linear_kv too
                     "model.peft.p_tuning.bottleneck_dim=16", "model.peft.p_tuning.embedding_dim=16",
                     *task_overrides(tiny_task), cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr[-3000:]
    line = next(x for x in ft.stdout.splitlines() if x.startswith("held-out exact match"))
    before, after = (float(x) for x in re.findall(r"([\d.]+)%", line)[:2])  # (a random tiny T5 learns little)
    saved = json.load(open(out / "adapter" / "adapter_config.json"))["adapters"]["default"]
    assert [c["method"] for c in saved] == scheme.split(",")
    gen, rows = predict("t5", out / "adapter", tiny_task, tmp_path)
    assert len(rows) == 16 and rows[0]["input"].startswith("x: ") and rows[0]["label"]
    # Trainer.predict with the saved adapter reproduces the exact match finetune.py measured
    em = 100.0 * sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert abs(em - after) <= 0.05 + 1e-9, (em, after)  # finetune.py prints one decimal
    assert "exact match" in gen.stdout


def t5_model_cfg(**kw):
    return OmegaConf.create({"arch": "t5", "restore_from_path": None, "from_scratch": {"d_model": 32, "d_kv": 8,
                             "d_ff": 32, "num_layers": 1, "num_heads": 2}, **kw})


def test_build_model_gives_t5_sft_model_and_seq2seq_data(tiny_task):
    module = build_model(t5_model_cfg(peft={"peft_scheme": "lora", "lora_tuning": {"target_modules": ["q", "v"],
                                                                                   "adapter_dim": 2}}))
    assert isinstance(module, T5SFTModel) and isinstance(module.model, T5Model)
    data = build_data(OmegaConf.create({"train_ds": {"file_names": [tiny_task["train"]], "micro_batch_size": 4}}),
                      module.tokenizer, module.model)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert {"input_ids", "decoder_input_ids", "labels"} <= set(batch)
    assert module.loss(batch).item() > 0


@pytest.mark.parametrize("data,message", [
    ({"prompt_template": "{input} {output}"}, r"prompt_template.*T5.*context_key"),
    ({"add_bos": True}, r"add_bos.*decoder-only"),
])
def test_gpt_only_data_options_with_t5_are_a_clear_error(tiny_task, data, message):
    module = build_model(t5_model_cfg())
    cfg = OmegaConf.create({"train_ds": {"file_names": [tiny_task["train"]], **data}})
    with pytest.raises(ValueError, match=message):
        build_data(cfg, module.tokenizer, module.model)


def test_t5_data_options_with_gpt_are_a_clear_error(tiny_task):
    module = build_model(OmegaConf.create({"from_scratch": {"hidden_size": 32, "num_layers": 1,
                                                            "num_attention_heads": 2, "ffn_hidden_size": 32}}))
    cfg = OmegaConf.create({"train_ds": {"file_names": [tiny_task["train"]], "context_key": "input"}})
    with pytest.raises(ValueError, match=r"context_key.*encoder-decoder.*prompt_template"):
        build_data(cfg, module.tokenizer, module.model)


def test_missing_label_key_in_t5_data_names_file_and_key(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"input": "x: abc =>", "answer": "abc"}) + "\n")
    module = build_model(t5_model_cfg())
    data = build_data(OmegaConf.create({"train_ds": {"file_names": [str(path)], "label_key": "output"}}),
                      module.tokenizer, module.model)
    with pytest.raises(ValueError, match=r"bad\.jsonl.*output"):
        data.setup("fit")


@pytest.mark.parametrize("cfg,message", [
    (dict(from_scratch={"hidden_size": 32, "num_attention_heads": 2}), r"hidden_size.*GPTConfig.*arch=gpt"),
    (dict(arch="gpt", from_scratch={"d_model": 32, "num_heads": 2}), r"d_model.*T5Config.*arch=t5"),
    (dict(arch="bert"), r"model\.arch='bert'.*gpt.*t5"),
    (dict(activations_checkpoint_granularity="selective"), r"activations_checkpoint_granularity='selective'.*full"),
])
def test_arch_mismatches_are_clear_errors(cfg, message):
    base = t5_model_cfg()
    base.merge_with(OmegaConf.create(cfg))
    if "from_scratch" in cfg:  # replace, not merge, the from_scratch mapping
        base.from_scratch = cfg["from_scratch"]
    with pytest.raises(ValueError, match=message):
        build_model(base)


def test_gpt_checkpoint_with_arch_t5_is_a_clear_error(tmp_path):
    from nemo_peft import save_model
    from nemo_peft.models.gpt import GPTConfig, GPTModel
    from nemo_peft.data.tokenizer import Tokenizer

    save_model(GPTModel(GPTConfig(vocab_size=259, hidden_size=32, num_layers=1, num_attention_heads=2,
                                  ffn_hidden_size=32)), str(tmp_path / "gpt"), Tokenizer.byte_level())
    with pytest.raises(ValueError, match=r"arch=t5.*GPTModel.*model\.arch=gpt"):
        build_model(OmegaConf.create({"arch": "t5", "restore_from_path": str(tmp_path / "gpt")}))


def test_t5_native_directory_round_trips(tmp_path):
    from nemo_peft import load_pretrained
    from nemo_peft import save_model

    module = build_model(t5_model_cfg())
    save_model(module.model, str(tmp_path / "t5"), module.tokenizer)
    loaded, tok = load_pretrained(str(tmp_path / "t5"))
    assert isinstance(loaded, T5Model) and tok is not None
    for (k, v), (k2, v2) in zip(module.model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and (v == v2).all(), k
