import json

import pytest


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture
def tiny_task(tmp_path):
    """A small copy task ("x: abc =>" -> "abc") that a tiny model learns in a few steps."""
    import random

    rng = random.Random(0)
    rows = [{"input": f"x: {w} =>", "output": w}
            for w in ("".join(rng.choice("abcd") for _ in range(3)) for _ in range(48))]
    return {"train": write_jsonl(tmp_path / "train.jsonl", rows[:32]),
            "test": write_jsonl(tmp_path / "test.jsonl", rows[32:])}
