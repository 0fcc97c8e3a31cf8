"""Reading by reference: ``fetch`` prints the local, read-only folder of a version; ``cache ls``,
``cache prune`` and ``cache verify`` look after the shared read cache.

Presentation only, like :mod:`modelkeep.cli.main`: the work is :meth:`~modelkeep.keep.Keep.fetch`
(:mod:`modelkeep.ops.fetch`). The path is the last line of stdout, so ``$(modelkeep fetch REF)``
works in shell scripts; notes go to stderr. The cache commands need no store or registry: the
cache (:mod:`modelkeep.store.readcache`) is the machine's.
"""

from __future__ import annotations

from typing import Annotated

import typer

from modelkeep.cli._output import human_bytes
from modelkeep.cli._state import state as _state
from modelkeep.errors import InvalidInputError

cache_app = typer.Typer(
    name="cache", help="The shared read cache of fetched versions: list, prune, verify.",
    no_args_is_help=True, rich_markup_mode=None,
)


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

    if st.out.json:
        st.out.emit(got.to_json(), lambda: None)
        return
    st.out.note(f"{got.name}@{got.version}: {human_bytes(got.downloaded_bytes)} downloaded, "
                f"{human_bytes(got.linked_bytes)} already cached")
    print(got.path)  # even with -q: the path is the command's answer


@cache_app.command("ls")
def cache_ls(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Versions held in the cache, least recently used first, and the bytes it holds."""
    from modelkeep.store.readcache import ReadCache

    st = _state(ctx, json_out)
    cache = ReadCache()
    entries = cache.entries()
    total = cache.size()

    def human() -> None:
        c = st.out.console
        for v in entries:
            used = v.to_json()["last_used"]
            names = ", ".join(v.refs) or v.tree[:16]
            c.print(f"{names}  {v.files} file(s)  {human_bytes(v.size)}  last used {used}",
                    highlight=False)
        c.print(f"{len(entries)} version(s), {human_bytes(total)} in {cache.root}",
                highlight=False)

    st.out.emit({"path": str(cache.root), "size": total,
                 "versions": [v.to_json() for v in entries]}, human)


@cache_app.command("prune")
def cache_prune(
    ctx: typer.Context,
    max_size: Annotated[str | None, typer.Option(
        "--max-size", metavar="SIZE",
        help="Remove least recently used versions until the cache holds at most "
        "this much (e.g. 20GiB).")] = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="AGE",
        help="Remove versions unused for this long (e.g. 30d, 12h).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Remove every version.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Remove cached versions, least recently used first, and the files no version uses.
    Pulled --link folders keep their files (hard links)."""
    from modelkeep.cli.store_cmds import parse_duration
    from modelkeep.policy.rules import parse_size
    from modelkeep.store.readcache import ReadCache

    st = _state(ctx, json_out)
    if max_size is None and older_than is None and not everything:
        raise InvalidInputError("cache prune needs --max-size, --older-than or --all",
                                hint="e.g. modelkeep cache prune --max-size 20GiB")
    try:
        limit = parse_size(max_size) if max_size is not None else None
    except ValueError:
        raise InvalidInputError(f"invalid size {max_size!r}",
                                hint="e.g. --max-size 20GiB") from None
    age = parse_duration(older_than).total_seconds() if older_than is not None else None
    report = ReadCache().prune(max_size=limit, older_than=age, everything=everything)
    st.out.emit(report.to_json(), lambda: st.out.console.print(
        f"removed {len(report.removed)} version(s) and {report.files_removed} file(s), "
        f"{human_bytes(report.bytes_freed)} freed", highlight=False))


@cache_app.command("verify")
def cache_verify(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-hash every cached file; drop bad files and the versions that link them."""
    from modelkeep.store.readcache import ReadCache

    st = _state(ctx, json_out)
    report = ReadCache().verify()

    def human() -> None:
        c = st.out.console
        c.print(f"checked {report.checked} file(s), skipped {report.skipped} of encrypted "
                f"stores; {len(report.bad)} bad, {len(report.versions_dropped)} version(s) "
                "dropped", highlight=False)

    st.out.emit(report.to_json(), human)
    if not report.ok:
        raise typer.Exit(1)


def add_to(app: typer.Typer) -> None:
    """Add the reading-by-reference commands to *app*."""
    app.command()(fetch)
    app.add_typer(cache_app)
