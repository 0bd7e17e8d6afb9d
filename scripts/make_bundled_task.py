#!/usr/bin/env python
"""Generate the small bundled date tasks.

Task ``date_reformat`` (the default fine-tune, ``examples/finetune.py``, and what the bundled T5 base was
pre-trained on): rewrite an ISO date (``YYYY-MM-DD``) as ``D Month YYYY``.

    input : "Date: 2023-05-07 ->"
    output: "7 May 2023"

Task ``date_us`` (``model=t5`` adapts the bundled T5 base to it): the same inputs, written ``Month D, YYYY``
(the base learned it only behind the tag ``US Date: ...``, see ``examples/pretrain_t5.py``).

    input : "Date: 2023-05-07 ->"
    output: "May 7, 2023"

Both draw the same dates into the same splits (same seed), so no date of date_us's validation or test
split is in date_reformat's train split either.

Training text is ``"{input} {output}"`` (plain text, no chat template); the loss is
taken on the answer tokens only. Exact match = greedy generation (stripped) equals
``output`` (stripped).

The generator is fully deterministic (seeded ``random.Random``, no external data) and
writes ``nemo_peft/data/bundled/<task>/{train,validation,test}.jsonl`` with
pairwise-disjoint inputs, plus a ``README.md``.

Usage::

    python scripts/make_bundled_task.py [--task date_reformat|date_us] [--out-dir DIR] [--seed 1234]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random

SEED = 1234
SPLITS = (("train", 2000), ("validation", 100), ("test", 100))
YEAR_RANGE = (1950, 2049)  # inclusive

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]

TASKS = {  # name: (how the output is written, an example, what the README says about the base models)
    "date_reformat": (lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year:04d}", "`D Month YYYY` (day without leading "
                      "zero, full English\nmonth name, four-digit year)",
                      "Small synthetic task used by the default fine-tune (`python examples/finetune.py`) and the\n"
                      "one the bundled T5 base (`examples/pretrain_t5.py`) is pre-trained on.",
                      "The base SmolLM2-135M-Instruct model scores ~0% exact match (it continues the ISO\n"
                      "date instead of rewriting it); ~100 LoRA steps (batch 8) on CPU bring it to ~100%."),
    "date_us": (lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year:04d}", "`Month D, YYYY` (full English month name, "
                "day without\nleading zero, comma, four-digit year)",
                "The second task of the T5 story (`python examples/finetune.py model=t5`): the bundled T5 base\n"
                "was pre-trained on `date_reformat` (same inputs, `D Month YYYY`) and writes US dates only when the\n"
                "input starts with the tag `US ` (`US Date: 2023-05-07 ->`), so it answers this plain prompt day first.",
                "The bundled T5 base scores ~0% exact match (it writes `7 May 2023`); LoRA or prompt\n"
                "tuning teach it to answer the plain prompt in US order. Same dates and splits as `date_reformat`\n"
                "(same seed)."),
}

README = """\
# Bundled task: `{task}`

{purpose}
Generated deterministically by `scripts/make_bundled_task.py --task {task}` (seed {seed}); do not edit
by hand, re-run the script instead.

Rewrite an ISO-8601 date as {style}:

| input                 | output             |
|-----------------------|--------------------|
| `Date: 2023-05-07 ->` | {ex1} |
| `Date: 1987-11-23 ->` | {ex2} |

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

{bases}
"""


def _all_dates():
    start = _dt.date(YEAR_RANGE[0], 1, 1)
    end = _dt.date(YEAR_RANGE[1], 12, 31)
    n = (end - start).days + 1
    return [start + _dt.timedelta(days=i) for i in range(n)]


def make_example(d: _dt.date, task: str = "date_reformat") -> dict:
    return {"input": f"Date: {d.year:04d}-{d.month:02d}-{d.day:02d} ->", "output": TASKS[task][0](d)}


def generate(seed: int = SEED, task: str = "date_reformat"):
    rng = random.Random(seed)
    total = sum(n for _, n in SPLITS)
    dates = rng.sample(_all_dates(), total)  # distinct dates -> disjoint inputs
    out, i = {}, 0
    for name, n in SPLITS:
        out[name] = [make_example(d, task) for d in dates[i:i + n]]
        i += n
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="date_reformat")
    ap.add_argument("--out-dir", default=None, help="default: nemo_peft/data/bundled/<task>")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    args.out_dir = args.out_dir or os.path.join(here, "..", "nemo_peft", "data", "bundled", args.task)

    splits = generate(args.seed, args.task)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, rows in splits.items():
        path = os.path.join(args.out_dir, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows):5d} examples -> {os.path.normpath(path)}")
    sizes = dict(SPLITS)
    with open(os.path.join(args.out_dir, "README.md"), "w", encoding="utf-8", newline="\n") as f:
        fmt, style, purpose, bases = TASKS[args.task]
        examples = [fmt(_dt.date(2023, 5, 7)), fmt(_dt.date(1987, 11, 23))]
        f.write(README.format(task=args.task, purpose=purpose, style=style, seed=args.seed,
                              ex1=f"`{examples[0]}`".ljust(18), ex2=f"`{examples[1]}`".ljust(18), n_train=sizes["train"],
                              n_val=sizes["validation"], n_test=sizes["test"], y0=YEAR_RANGE[0], y1=YEAR_RANGE[1],
                              bases=bases))


if __name__ == "__main__":
    main()
