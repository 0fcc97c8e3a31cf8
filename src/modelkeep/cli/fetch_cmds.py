"""Reading by reference: ``fetch`` prints the local, read-only folder of a version.

Presentation only, like :mod:`modelkeep.cli.main`: the work is :meth:`~modelkeep.keep.Keep.fetch`
(:mod:`modelkeep.ops.fetch`). The path is the last line of stdout, so ``$(modelkeep fetch REF)``
works in shell scripts; notes go to stderr.
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelkeep.cli._output import human_bytes
from modelkeep.cli._state import state as _state


def fetch(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")],
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Read without the shared cache, into a new private temporary "
        "folder (yours to remove).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the local, read-only folder of a version, fetched once into the shared cache."""
    st = _state(ctx, json_out)
    keep = st.keep()
    mv = keep.get(ref)
    with st.out.progress(f"fetching {mv.ref}", mv.size) as advance:
        got = keep.fetch_report(mv.ref, cache=not no_cache, progress=advance)

    def human() -> None:
        st.out.note(f"{got.name}@{got.version}: {human_bytes(got.downloaded_bytes)} downloaded, "
                    f"{human_bytes(got.linked_bytes)} already cached")
        print(got.path)

    st.out.emit(got.to_json(), human)


def add_to(app: typer.Typer) -> None:
    """Add the reading-by-reference commands to *app*."""
    app.command()(fetch)
