"""The bundled T5 base (nemo_peft/data/bundled/t5_dates, built by examples/pretrain_t5.py): the script is
deterministic, and the shipped model knows its pre-training task (date_reformat) and writes US dates when the
input carries the tag, but answers the plain date_us prompt (the task model=t5 adapts it to) day first."""
import hashlib
import json
import os
import subprocess
import sys

import lightning as L

from nemo_peft import Seq2SeqDataModule, T5SFTModel, bundled_path, load_pretrained
from tests.helpers import ROOT


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_pretrain_script_is_deterministic(tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "pretrain_t5.py"), "--steps", "6",
                              "--tag-steps", "4", "--output", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "pre-trained T5" in res.stdout and "saved to" in res.stdout
        digests.append(_sha(out / "model.safetensors"))
    assert digests[0] == digests[1]
    model, tok = load_pretrained(str(tmp_path / "a"))
    assert type(model).__name__ == "T5Model" and tok is not None


def _exact_match(test_file):
    model, tokenizer = load_pretrained(bundled_path("t5_dates"))
    split = {"file_names": [test_file], "context_key": "input", "label_key": "output",
             "max_seq_length": 32, "max_target_length": 24, "micro_batch_size": 50, "max_num_samples": 50}
    module = T5SFTModel(model, tokenizer, generation={"max_new_tokens": 24})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(module, datamodule=Seq2SeqDataModule(tokenizer, test_ds=split), verbose=False)[0][
        "test_exact_match"]


def test_bundled_base_knows_date_reformat_and_tagged_us_dates_but_not_plain_date_us(tmp_path):
    assert _exact_match(bundled_path("date_reformat/test.jsonl")) >= 80
    assert _exact_match(bundled_path("date_us/test.jsonl")) <= 5
    tagged = tmp_path / "tagged.jsonl"
    with open(bundled_path("date_us/test.jsonl")) as src:
        rows = [json.loads(line) for line in src]
    tagged.write_text("".join(json.dumps({**r, "input": "US " + r["input"]}) + "\n" for r in rows))
    assert _exact_match(str(tagged)) >= 70
