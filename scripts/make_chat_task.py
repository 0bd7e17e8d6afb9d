#!/usr/bin/env python
"""Generate the bundled chat task ``chat_dates`` (``data=chat_dates``), in ``messages`` form.

A system prompt picks one of two date styles; the user then asks for one to three dates in
varied words, and the assistant answers each with the date alone, in that style:

    system   : "You rewrite dates. Answer with the date only, written like 7 May 2023."
    user     : "Please rewrite 2023-05-07."
    assistant: "7 May 2023"
    user     : "And 1987-11-23?"
    assistant: "23 November 1987"

Exact match compares the generated last assistant turn (stripped) with its content, so a model
must follow the system prompt's style through the whole conversation and stop at the end of its
turn. Deterministic (seeded ``random.Random``); the splits share no date.

    python scripts/make_chat_task.py [--out-dir DIR] [--seed 1234]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random

TASK_NAME = "chat_dates"
SEED = 1234
SPLITS = (("train", 1200), ("validation", 100), ("test", 100))
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
STYLES = {  # name -> (system prompt, formatter)
    "day_first": ("You rewrite dates. Answer with the date only, written like 7 May 2023.",
                  lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}"),
    "month_first": ("You rewrite dates. Answer with the date only, written like May 7, 2023.",
                    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}"),
}
FIRST_ASKS = ["Please rewrite {iso}.", "Rewrite {iso}.", "How do I write {iso}?", "{iso}", "Convert this date: {iso}"]
NEXT_ASKS = ["And {iso}?", "Now {iso}.", "What about {iso}?", "Next one: {iso}", "{iso} please."]


def conversation(rng: random.Random, dates: list[dt.date]) -> dict:
    system, fmt = STYLES[rng.choice(sorted(STYLES))]
    messages = [{"role": "system", "content": system}]
    for i, date in enumerate(dates):
        ask = rng.choice(FIRST_ASKS if i == 0 else NEXT_ASKS).format(iso=date.isoformat())
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": fmt(date)}]
    return {"messages": messages}


def make_splits(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    start, span = dt.date(1950, 1, 1), (dt.date(2049, 12, 31) - dt.date(1950, 1, 1)).days
    needed = sum(n for _, n in SPLITS) * 3
    days = rng.sample(range(span + 1), needed)  # distinct dates: no date appears in two splits
    pool = [start + dt.timedelta(days=d) for d in days]
    out = {}
    for name, n in SPLITS:
        rows = []
        for _ in range(n):
            turns = rng.choice((1, 2, 2, 3))
            rows.append(conversation(rng, [pool.pop() for _ in range(turns)]))
        out[name] = rows
    return out


def main(argv=None) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join(here, "..", "nemo_peft", "data", "bundled", TASK_NAME))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, rows in make_splits(args.seed).items():
        with open(os.path.join(args.out_dir, f"{name}.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"wrote {len(rows)} conversations to {os.path.join(args.out_dir, name + '.jsonl')}")


if __name__ == "__main__":
    main()
