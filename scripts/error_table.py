"""Render tests/error_catalogue.py as the README's "Errors you may see" table.

    python scripts/error_table.py            # rewrite README.md between the errors markers
    python scripts/error_table.py --check    # exit 1 if README.md is stale
    python scripts/error_table.py --verify   # run every trigger; list entries whose message changed

The "what you see" column is each entry's ``shown`` field, which tests/test_error_catalogue.py checks
against the message its trigger really raises; ``--verify`` does the same without pytest and prints the
``shown`` value to write when a message changed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

README = ROOT / "README.md"
BEGIN, END = "<!-- errors:begin -->", "<!-- errors:end -->"
SECTION_TITLE = "## Errors you may see"
INSERT_BEFORE = "## Config reference"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


def render(catalogue=None) -> str:
    """The generated text between the markers (without them)."""
    from tests.error_catalogue import CATALOGUE, GROUPS

    catalogue = CATALOGUE if catalogue is None else catalogue
    lines = [
        f"{len(catalogue)} bad inputs and faults, each provoked by `tests/test_error_catalogue.py`, which checks "
        "that it raises the error shown: its type and the first sentence of its message, where `…` stands for "
        "a path on your machine, a library's own words or the rest of a long sentence. Generated from "
        "`tests/error_catalogue.py` by `python scripts/error_table.py`.",
    ]
    for group, title in GROUPS.items():
        rows = [e for e in catalogue if e.group == group]
        if not rows:
            continue
        lines += ["", f"**{title}**", "", "| what went wrong | what you see | what to do |", "|---|---|---|"]
        lines += [f"| {_cell(e.what)} | {_code(e.shown)} | {_cell(e.fix)} |" for e in rows]
    return "\n".join(lines)


def section(text: str) -> str | None:
    """What README.md holds between the markers, or None without them."""
    m = re.search(re.escape(BEGIN) + r"\n(.*?)\n?" + re.escape(END), text, re.S)
    return None if m is None else m.group(1)


def updated(text: str, body: str) -> str:
    block = f"{BEGIN}\n{body}\n{END}"
    if section(text) is not None:
        return re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, count=1, flags=re.S)
    new = f"{SECTION_TITLE}\n\n{block}\n\n"
    if f"\n{INSERT_BEFORE}\n" in text:
        return text.replace(f"\n{INSERT_BEFORE}\n", f"\n{new}{INSERT_BEFORE}\n", 1)
    return text.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n"


def verify(ids=None) -> int:
    """Run the triggers (all, or ``ids``); print each mismatch with the ``shown`` it would need."""
    from tests.error_catalogue import CATALOGUE, provoke, shown_matches, shown_message

    bad = 0
    for entry in CATALOGUE:
        if ids and entry.id not in ids:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            exc = provoke(entry, tmp)
            seconds = time.perf_counter() - start
            actual = None if exc is None else shown_message(exc, tmp)
        kind, pattern = entry.expected
        problems = []
        if exc is None:
            problems.append("raised nothing")
        else:
            if not isinstance(exc, kind):
                problems.append(f"raised {type(exc).__name__}, expected {kind.__name__}")
            if not re.search(pattern, str(exc), re.S):
                problems.append(f"message does not match {pattern!r}: {str(exc)[:400]!r}")
            if not shown_matches(entry.shown, actual):
                problems.append(f"shown should be {actual!r}")
        bad += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {entry.id} ({seconds:.2f}s)")
        for p in problems:
            print(f"     {p}")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    parser.add_argument("--verify", nargs="*", metavar="ID", help="run the triggers (all, or these ids)")
    args = parser.parse_args(argv)
    if args.verify is not None:
        return verify(set(args.verify))
    text = README.read_text(encoding="utf-8")
    new = updated(text, render())
    if args.check:
        if new != text:
            print(f"{os.path.relpath(README)} is stale: run python scripts/error_table.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
        print(f"updated {os.path.relpath(README)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
