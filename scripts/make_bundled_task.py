#!/usr/bin/env python
"""Generate the small bundled task used by the default fine-tune (``examples/finetune.py``).

Task ``date_reformat``: rewrite an ISO date (``YYYY-MM-DD``) as ``D Month YYYY``.

    input : "Date: 2023-05-07 ->"
    output: "7 May 2023"

Training text is ``"{input} {output}"`` (plain text, no chat template); the loss is
taken on the answer tokens only. Exact match = greedy generation (stripped) equals
``output`` (stripped).

The generator is fully deterministic (seeded ``random.Random``, no external data) and
writes ``nemo_peft/data/bundled/date_reformat/{train,validation,test}.jsonl`` with
pairwise-disjoint inputs, plus a ``README.md``.

Usage::

    python scripts/make_bundled_task.py [--out-dir DIR] [--seed 1234]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random

TASK_NAME = "date_reformat"
SEED = 1234
SPLITS = (("train", 2000), ("validation", 100), ("test", 100))
YEAR_RANGE = (1950, 2049)  # inclusive

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]

README = """\
# Bundled task: `date_reformat`

Small synthetic task used by the default fine-tune (`python examples/finetune.py`).
Generated deterministically by `scripts/make_bundled_task.py` (seed {seed}); do not edit
by hand, re-run the script instead.

Rewrite an ISO-8601 date as `D Month YYYY` (day without leading zero, full English
month name, four-digit year):

| input                 | output             |
|-----------------------|--------------------|
| `Date: 2023-05-07 ->` | `7 May 2023`       |
| `Date: 1987-11-23 ->` | `23 November 1987` |

* Format: JSONL, one object per line with string fields `input` and `output`.
* Prompt: the plain `input` text (no chat template). Training text is
  `"{{input}} {{output}}"` (the answer follows a single space) followed by the
  tokenizer's EOS token (`<|im_end|>` for SmolLM2); loss on the answer tokens and
  EOS only. The EOS is required: without it the model learns the answer but never
  stops, and exact match drops to 0.
* Metric: exact match, greedy generation stripped == `output` stripped.
* Splits: train {n_train}, validation {n_val}, test {n_test}; inputs are
  pairwise disjoint across splits. Dates are valid calendar dates in
  {y0}-{y1}.

The base SmolLM2-135M-Instruct model scores ~0% exact match (it continues the ISO
date instead of rewriting it); ~100 LoRA steps (batch 8) on CPU bring it to ~100%.
"""


def _all_dates():
    start = _dt.date(YEAR_RANGE[0], 1, 1)
    end = _dt.date(YEAR_RANGE[1], 12, 31)
    n = (end - start).days + 1
    return [start + _dt.timedelta(days=i) for i in range(n)]


def make_example(d: _dt.date) -> dict:
    return {
        "input": f"Date: {d.year:04d}-{d.month:02d}-{d.day:02d} ->",
        "output": f"{d.day} {MONTHS[d.month - 1]} {d.year:04d}",
    }


def generate(seed: int = SEED):
    rng = random.Random(seed)
    total = sum(n for _, n in SPLITS)
    dates = rng.sample(_all_dates(), total)  # distinct dates -> disjoint inputs
    out, i = {}, 0
    for name, n in SPLITS:
        out[name] = [make_example(d) for d in dates[i:i + n]]
        i += n
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "nemo_peft", "data", "bundled", TASK_NAME)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=default_out)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()

    splits = generate(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, rows in splits.items():
        path = os.path.join(args.out_dir, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows):5d} examples -> {os.path.normpath(path)}")
    sizes = dict(SPLITS)
    with open(os.path.join(args.out_dir, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write(README.format(seed=args.seed, n_train=sizes["train"], n_val=sizes["validation"],
                              n_test=sizes["test"], y0=YEAR_RANGE[0], y1=YEAR_RANGE[1]))


if __name__ == "__main__":
    main()
