"""Output helpers: JSON for scripts, rich tables for people, progress bars on slow transfers.

rich is imported when something is printed for a person: ``--help``, ``--json`` and ``-q`` never
load it (about 20 ms of every command's start).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelkeep import _waiting

if TYPE_CHECKING:
    from rich.console import Console

# Progress bars appear only for transfers that last longer than this: quick commands stay quiet.
PROGRESS_DELAY = 1.0
# Longer tables are printed as plain columns (Output.table).
RICH_TABLE_ROWS = 200
# What rich reads as an emoji code (":smile:"), in its own pattern (rich/_emoji_replace.py).
_EMOJI_CODE = re.compile(r":\S*?:")


@dataclass
class Output:
    json: bool = False
    quiet: bool = False

    @property
    def console(self) -> Console:
        _waiting.finished()  # rich may be being imported meanwhile (prefetch)
        from rich.console import Console

        return Console(soft_wrap=True)

    @property
    def err(self) -> Console:
        _waiting.finished()
        from rich.console import Console

        return Console(stderr=True, soft_wrap=True)

    def line(self, text: str, *, markup: bool = True) -> None:
        """Print *text* for a person, as ``console.print(text, highlight=False,
        markup=markup)`` prints it. Text that rich would print unchanged, as most one-line
        reports are, is written without loading rich (20 ms of a command such as
        ``register``)."""
        if _as_is(text):
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            self.console.print(text, highlight=False, markup=markup)

    def prefetch(self) -> None:
        """For a command about to ask the registry and then print for a person: rich is
        imported while the command waits for a server's answer (:mod:`modelkeep._waiting`)."""
        if not (self.json or self.quiet):
            _waiting.meanwhile(_import_rich)

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """Print *data* as JSON with --json, otherwise call *human* (unless -q)."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        elif not self.quiet:
            human()

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A table for a person: rich's boxed table, or for long ones (a model's thousand
        versions) plain aligned columns, since rich renders about a millisecond per row."""
        if len(rows) <= RICH_TABLE_ROWS:
            _waiting.finished()
            from rich.table import Table

            table = Table(*columns)
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
                 for row in (columns, *rows)]
        sys.stdout.write("\n".join(lines) + "\n")

    def note(self, text: str) -> None:
        """A remark for a person, on stderr so it never mixes with --json output."""
        if not self.quiet:
            self.err.print(text, highlight=False)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """Yield a callback taking byte counts; a bar shows once the work passes one second."""
        enabled = not self.quiet and sys.stderr.isatty()
        state: dict[str, Any] = {"done": 0, "bar": None, "task": None}
        start = time.monotonic()

        def advance(n: int) -> None:
            state["done"] += n
            if not enabled:
                return
            if state["bar"] is None:
                if time.monotonic() - start < PROGRESS_DELAY:
                    return
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                bar = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=self.err,
                    transient=True,
                )
                bar.start()
                state["bar"] = bar
                state["task"] = bar.add_task(description, total=total, completed=state["done"])
            else:
                state["bar"].update(state["task"], completed=state["done"])

        try:
            yield advance
        finally:
            if state["bar"] is not None:
                state["bar"].stop()


def _import_rich() -> None:
    import rich.console
    import rich.table  # noqa: F401


def _as_is(text: str) -> bool:
    """Whether rich prints *text* unchanged: printable ASCII lines without a markup bracket or
    an emoji code (rich would drop control codes, expand tabs and read ``[tag]`` and
    ``:name:``)."""
    return (text.isascii() and "[" not in text and not _EMOJI_CODE.search(text)
            and all(part.isprintable() for part in text.split("\n")))


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
