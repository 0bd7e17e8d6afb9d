"""Prediction files may hold prompts only: a prompt_template record without its label is a prompt."""
import json

import pytest

from nemo_peft.data import SFTDataset, collate_sft
from nemo_peft.data.tokenizer import Tokenizer


def test_prompt_only_records_predict_and_are_refused_for_training(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"input": "Date: 2023-05-07 ->"}) + "\n" + json.dumps({"input": "a", "output": "b"}) + "\n")
    tok = Tokenizer.byte_level()
    ds = SFTDataset(str(path), tok, predict=True)
    prompt, labelled = ds[0], ds[1]
    assert prompt["answer"] is None and prompt["input_ids"] == prompt["context_ids"] == tok.encode("Date: 2023-05-07 ->")
    assert not any(prompt["loss_mask"])
    assert labelled["answer"] == "b" and labelled["input_ids"] == tok.encode("a") + tok.encode(" b") + [tok.eos_id]
    batch = collate_sft([prompt, labelled], pad_id=tok.pad_id)
    assert batch["answers"] == [None, "b"]
    with pytest.raises(ValueError, match=r"p.jsonl, line 1: record has no label field 'output'"):
        SFTDataset(str(path), tok)
