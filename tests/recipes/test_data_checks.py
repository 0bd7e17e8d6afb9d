"""finetune.py states what its training data holds before training (its refusal of data with nothing to train
is the catalogue entry data-no-answer-tokens)."""
import contextlib
import io

from tests.error_catalogue import finetune_args, hydra_config, write_jsonl
from nemo_peft.recipes.finetune import run_finetune


def test_the_first_line_counts_truncated_examples(tmp_path):
    rows = [{"input": "x" * n, "output": "abc"} for n in (3, 40, 50, 4)]  # byte tokens: 50 + " abc" + EOS = 55
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_finetune(hydra_config(*finetune_args(tmp_path, "data.train_ds.max_seq_length=32", train=train)))
    line = next(l for l in out.getvalue().splitlines() if l.startswith("train: "))
    assert "4 of 4 examples kept" in line and "2 truncated (the longest needs 55 tokens; max_seq_length 32" in line
