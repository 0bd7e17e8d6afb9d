"""Every entry of the error catalogue (tests/error_catalogue.py) raises what it says, and the README's
"Errors you may see" table is the catalogue rendered by scripts/error_table.py."""
import importlib.util
import re

import pytest

from tests.error_catalogue import CATALOGUE, GROUPS, ROOT, shown_matches, shown_message


def _error_table():
    spec = importlib.util.spec_from_file_location("error_table", ROOT / "scripts" / "error_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.id for e in CATALOGUE])
def test_trigger_raises_the_catalogued_error(entry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a recipe writes with a relative path stays in tmp_path
    kind, pattern = entry.expected
    with pytest.raises(kind) as info:
        entry.trigger(tmp_path)
    message = str(info.value)
    assert re.search(pattern, message, re.S), f"{entry.id}: {pattern!r} not found in {message!r}"
    actual = shown_message(info.value, tmp_path)
    assert shown_matches(entry.shown, actual), (
        f"{entry.id}: the message changed; set its shown to {actual!r} and run python scripts/error_table.py")


def test_catalogue_is_complete_and_well_formed():
    ids = [e.id for e in CATALOGUE]
    assert len(ids) >= 45 and len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    for e in CATALOGUE:
        assert e.group in GROUPS, e.id
        assert e.what and e.fix and e.shown, e.id
        assert "\n" not in e.what + e.fix + e.shown, e.id
        assert e.shown.startswith(f"{e.expected[0].__name__}: "), e.id
    assert {e.group for e in CATALOGUE} == set(GROUPS)


def test_readme_section_is_the_rendered_catalogue():
    table = _error_table()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table.SECTION_TITLE in text.splitlines()
    assert table.section(text) == table.render(), "README.md is stale: run python scripts/error_table.py"
