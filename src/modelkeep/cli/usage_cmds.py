"""``du``: where the bytes go, per version, per model and for the whole store.

Presentation only, like :mod:`modelkeep.cli.main`: the figures are
:meth:`~modelkeep.keep.Keep.du`'s (:mod:`modelkeep.ops.usage`, which says what each counts).
:func:`add_to` adds the command to the ``modelkeep`` app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelkeep.cli._output import human_bytes
from modelkeep.cli._state import state as _state


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def du(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(metavar="NAME",
                                               help="Model name: its versions one by one; "
                                               "omit for every model.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
    = False,
) -> None:
    """Where the bytes go: logical size, stored bytes and what only each holds.

    size: the bytes the versions hold (a copy each, as without modelkeep). stored: the chunk
    objects they need, coded, each counted once however many files, versions or models share
    it, with the bases of chunks stored as deltas of a parent. ratio: stored / size. unique:
    the stored bytes nothing else needs (no other version, unregistered snapshot or run
    artifact), which deleting the version or model gives back at the next garbage collections.
    Read from snapshots and one listing of the chunk objects; no chunk is read.
    """
    st = _state(ctx, json_out)
    report = st.keep().du(name)

    def human() -> None:
        c = st.out.console
        if name is not None:
            [model] = report.models
            st.out.table(("version", "size", "stored", "ratio", "unique"),
                         [(str(v.version), human_bytes(v.size), human_bytes(v.bytes_held),
                           _pct(v.bytes_held / v.size if v.size else None),
                           human_bytes(v.bytes_unique)) for v in model.versions])
        rows = [(m.name, str(len(m.versions)), human_bytes(m.size), human_bytes(m.bytes_held),
                 _pct(m.bytes_held / m.size if m.size else None), human_bytes(m.bytes_unique))
                for m in report.models]
        r = report
        rows.append(("(store)", str(r.versions), human_bytes(r.size), human_bytes(r.bytes_held),
                     _pct(r.bytes_held / r.size if r.size else None), "-"))
        st.out.table(("model", "versions", "size", "stored", "ratio", "unique"), rows)
        extra = [f"{r.chunks} chunk object(s), {human_bytes(r.bytes_chunks)} in {r.store}"]
        for label, value in (("only run artifacts use", r.bytes_runs),
                             ("only unregistered snapshots use", r.bytes_unregistered),
                             ("no one uses (gc removes)", r.bytes_unreferenced)):
            if value:
                extra.append(f"{label} {human_bytes(value)}")
        c.print("; ".join(extra), highlight=False, markup=False)
        if r.missing_chunks:
            c.print(f"{r.missing_chunks} chunk(s) the versions list are missing from the store "
                    "(counted as 0 B); run `modelkeep verify`", highlight=False, markup=False)
        if r.elsewhere:
            c.print(f"{r.elsewhere} registered version(s) live in other stores and are not "
                    "counted", highlight=False, markup=False)
        if r.skipped:
            c.print(f"not counted, snapshot unreadable: {', '.join(r.skipped)}",
                    highlight=False, markup=False)

    st.out.emit(report.to_json(), human)


def add_to(app: typer.Typer) -> None:
    """Add ``du`` to *app*."""
    app.command()(du)
