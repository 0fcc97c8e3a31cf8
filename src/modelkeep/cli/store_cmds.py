"""Store maintenance commands: ``sync`` (replicate versions to another store) and ``gc``.

Presentation only, like :mod:`modelkeep.cli.main`: each command calls one
:class:`~modelkeep.keep.Keep` method and prints the result for a person or, with ``--json``, as
JSON. :func:`add_to` adds them to the ``modelkeep`` app.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer

from modelkeep.cli._output import PROGRESS_DELAY, human_bytes
from modelkeep.cli._state import State
from modelkeep.cli._state import state as _state
from modelkeep.errors import InvalidInputError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")
_UNITS = {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``2d`` or a number of seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidInputError(f"invalid duration {text!r}", hint="e.g. --grace 1h, 30m, 90s, 2d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])




@contextmanager
def _counting(st: State, description: str) -> Iterator[Callable[[int], None]]:
    """A progress display counting objects (the total is not known up front)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    enabled = not st.out.quiet and sys.stderr.isatty()
    state: dict[str, Any] = {"n": 0, "bar": None}
    start = time.monotonic()

    def advance(n: int) -> None:
        state["n"] += n
        if not enabled:
            return
        if state["bar"] is None:
            if time.monotonic() - start < PROGRESS_DELAY:
                return
            bar = Progress(SpinnerColumn(), TextColumn("{task.description}: "
                                                       "{task.completed} objects"),
                           console=st.out.err, transient=True)
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(description, total=None)
        state["bar"].update(state["task"], completed=state["n"])

    try:
        yield advance
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


def sync(
    ctx: typer.Context,
    refs: Annotated[list[str] | None, typer.Argument(
        metavar="REF", help="Versions (NAME@REF) or models (NAME, every version); "
        "default: every version of every model in the store (--store).")] = None,
    to: Annotated[str, typer.Option("--to", metavar="STORE", help="Destination: a store named in "
                                    "modelkeep.toml, or a URL.")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be copied; "
                                          "write nothing.")] = False,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, metavar="N",
                                             help="Parallel transfers "
                                             "(default 16 with an object store, else 4).")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
    = False,
) -> None:
    """Copy versions to another store, sending only the chunks it lacks; resumable."""
    if not to:
        raise InvalidInputError("no destination store", hint="pass --to STORE")
    st = _state(ctx, json_out)
    keep = st.keep()
    dest = keep.open_store(to)
    total = keep.sync_size(dest, refs or None)
    with st.out.progress(f"copying to {to}", total or 1) as advance:
        report = keep.sync(dest, refs or None, dry_run=dry_run, workers=jobs, progress=advance)

    def human() -> None:
        c = st.out.console
        verb = "would copy" if dry_run else "copied"
        c.print(f"{verb} {report.snapshots_copied} of {report.snapshots} snapshot(s) to "
                f"{report.dest} ({report.snapshots_present} already there)", highlight=False)
        c.print(f"chunks: {report.chunks_copied} {verb.split()[-1]} "
                f"({human_bytes(report.bytes_copied)}), {report.chunks_present} already "
                f"present ({human_bytes(report.bytes_present)})", highlight=False)

    st.out.emit(report.to_json(), human)


def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would go; change "
                                          "nothing.")] = False,
    grace: Annotated[str, typer.Option("--grace", metavar="AGE",
                                       help="Keep unreferenced chunks younger than "
                                       "this, and hidden ones for this long (30m, 1h, 2d).")]
    = "1h",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
    = False,
) -> None:
    """Remove chunks no version or run artifact uses, safely while others register.

    Two phases: a run hides unreferenced chunks older than the grace period; a later run deletes
    those still unreferenced once hidden that long, and puts back any that a version now uses.
    """
    st = _state(ctx, json_out)
    period = parse_duration(grace)
    keep = st.keep()
    with _counting(st, "collecting") as advance:
        report = keep.gc(grace=period, dry_run=dry_run, progress=advance)

    def human() -> None:
        c = st.out.console
        words = {"hide": ("would hide", "hid"), "delete": ("would delete", "deleted"),
                 "restore": ("would restore", "restored"),
                 "purge": ("would delete the quarantined copy of",
                           "deleted the quarantined copy of")}
        for v in report.versions:
            if "error" in v:
                c.print(f"could not delete version {v['ref']}: {v['error']}", highlight=False)
                continue
            verb = "would delete" if dry_run else ("deleted" if v["deleted"] else "kept")
            c.print(f"{verb} version {v['ref']}: {'; '.join(v['reasons'])}", highlight=False)
        for sid in report.deleted_snapshots:
            c.print(f"{'would delete' if dry_run else 'deleted'} snapshot {sid[:12]}",
                    highlight=False)
        for item in sorted(report.items, key=lambda i: (i.action, i.id)):
            c.print(f"{words[item.action][0 if dry_run else 1]} chunk {item.id[:12]} "
                    f"({human_bytes(item.size)}): {item.reason}", highlight=False)
        c.print(f"{report.snapshots} snapshot(s) and {report.manifests} run manifest(s) use "
                f"{report.referenced} chunk(s); {report.chunks} chunk(s) stored", highlight=False)
        lead = "would reclaim" if dry_run else "reclaimed"
        c.print(f"{lead} {human_bytes(report.bytes_reclaimed)} ({len(report.deleted)} chunk(s)); "
                f"{'would hide' if dry_run else 'hid'} {len(report.hidden)} chunk(s) "
                f"({human_bytes(report.bytes_hidden)}), reclaimed by a run at least "
                f"{grace} later unless a version uses them by then", highlight=False)
        if report.young or report.waiting:
            c.print(f"kept for the grace period: {report.young} unreferenced chunk(s) "
                    f"({human_bytes(report.young_bytes)}) written recently, {report.waiting} "
                    f"hidden recently ({human_bytes(report.waiting_bytes)})", highlight=False)

    st.out.emit(report.to_json(), human)


def add_to(app: typer.Typer) -> None:
    """Add the store maintenance commands to *app*."""
    app.command()(sync)
    app.command()(gc)
