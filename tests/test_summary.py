"""The generated summaries of descriptions (modelkeep.catalog.summary): the user's text is kept
apart from the block, a block is replaced and never repeated, and everything fits the 5,000
characters MLflow's database schemas allow."""

from __future__ import annotations

import json

from modelkeep.catalog import summary
from modelkeep.catalog.summary import BEGIN, END, MAX_DESCRIPTION, compose, split, user_text


def _block(n: int = 1) -> str:
    return f"{n} MiB in 1 file {BEGIN}\n\n| modelkeep | |\n|---|---|\n| Size | {n} |\n{END}"


def test_compose_puts_one_block_after_the_user_text() -> None:
    once = compose("my notes\n", [_block(1)])
    assert once == f"my notes\n\n{_block(1)}"
    assert split(once) == ("my notes", _block(1))
    again = compose(once, [_block(2)])  # the old block is replaced, not kept
    assert again == f"my notes\n\n{_block(2)}" and again.count(BEGIN) == 1
    assert compose("", [_block(1)]) == _block(1) and user_text(_block(1)) == ""
    assert user_text("plain text, no block") == "plain text, no block"
    # Text typed below the block (in the MLflow UI) stays the user's.
    assert user_text(f"above\n\n{_block(1)}\n\nbelow") == "above\n\nbelow"
    # A block whose end marker was deleted by hand reaches to the end.
    assert user_text(f"above\n\n{_block(1)[:-len(END)]}") == "above"


def test_the_user_text_wins_the_length_limit() -> None:
    long = "x" * (MAX_DESCRIPTION - 100)
    assert compose(long, ["y" * 200, "short"]) == f"{long}\n\nshort"
    assert compose("x" * MAX_DESCRIPTION, [_block(1)]) == "x" * MAX_DESCRIPTION


def test_markdown_of_names_is_literal_and_links_use_the_ui_route() -> None:
    assert summary.version_link("a_b|c d", 3) == r"[a\_b\|c d@3](#/models/a_b%7Cc%20d/versions/3)"
    assert summary.code("x|y") == r"`x\|y`" and summary.code("a`b") == "`` a`b ``"
    assert [summary.human_bytes(n) for n in (0, 1023, 1024, 5 << 30)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 GiB"]


def test_a_long_alias_history_is_cut_to_fit_with_the_newest_rows() -> None:
    events = [[v % 7 + 1, f"2026-12-05T05:{v // 60:02d}:{v % 60:02d}Z", "ana@lab", "set"]
              for v in range(200)]
    tags = {"modelkeep.alias_history.champion": json.dumps(events)}
    blocks = summary.model_block("m", tags, {"champion": 4})
    full = blocks[0]
    rows = [line for line in full.splitlines() if line.startswith("| 2026")]
    assert len(rows) == summary.MAX_ALIAS_ROWS
    assert rows[0].startswith("| 2026-12-05 05:03:19 UTC | `champion` | set to [version 4]")
    assert "175 older change(s): `modelkeep log m`" in full
    # With a long user text, fewer rows, then none.
    text = compose("u" * (MAX_DESCRIPTION - 1200), blocks)
    assert len(text) <= MAX_DESCRIPTION and text.count(BEGIN) == 1
    assert 0 < sum(line.startswith("| 2026") for line in text.splitlines()) < 25
    assert summary.model_block("m", {}, {}) == []
