"""The ``modelkeep`` command: argument parsing and presentation only.

Each command calls the Python API (:class:`modelkeep.keep.Keep`) and prints the result for a
person, or as JSON on stdout with ``--json``. Errors are turned into one line and an exit code in
:mod:`modelkeep.cli._errors`, never here. Plugins add commands through the
``modelkeep_cli_commands`` hook; :func:`main` adds them to the group before parsing.
"""

from __future__ import annotations

import copy
import gc
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelkeep.aliases import AliasEvent
from modelkeep.cli import (
    auth_cmds,
    fetch_cmds,
    key_cmds,
    policy_cmds,
    registry_cmds,
    store_cmds,
    usage_cmds,
)
from modelkeep.cli._errors import emit_json_error, report
from modelkeep.cli._gitignore import add_to_gitignore, git_work_tree, ignore_entries
from modelkeep.cli._help import apply as apply_help_style
from modelkeep.cli._output import Output, human_bytes
from modelkeep.cli._params import install as install_plain_params
from modelkeep.cli._state import State, settled
from modelkeep.cli._state import state as _state
from modelkeep.errors import REGISTRY, Hint, IntegrityError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.keep import Keep

app = typer.Typer(
    name="modelkeep",
    help="Version control for large models: a deduplicating store, registered in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from modelkeep import __version__

        typer.echo(f"modelkeep {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    store: Annotated[str | None, typer.Option("--store", help="A store named in modelkeep.toml, "
                                              "or a URL (path, s3://, az://, memory://).")]
    = None,
    registry: Annotated[str | None, typer.Option("--registry", metavar="URI",
                                                 help="MLflow registry URI.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
    = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print modelkeep's version and exit.")] = False,
) -> None:
    outer = ctx.obj if isinstance(ctx.obj, State) else State()
    ctx.obj = State(store=store, registry=registry, out=Output(json=json_out, quiet=quiet),
                    plugins=outer.plugins, whole_process=outer.whole_process)


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"invalid tag {item!r}", hint="use --tag KEY=VALUE")
        tags[key] = value
    return tags


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


# -- init ---------------------------------------------------------------------------------------


@app.command()
def init(
    ctx: typer.Context,
    store: Annotated[str | None, typer.Option("--store", metavar="URL",
                                              help="Store URL to record.")] = None,
    registry: Annotated[str | None, typer.Option("--registry", metavar="URI",
                                                 help="Registry URI to record.")]
    = None,
    encrypt: Annotated[bool, typer.Option("--encrypt", help="Create an encrypted store; the key "
                                          "comes from --key-file, MODELKEEP_KEY, the store's "
                                          "key_file or a key plugin.")] = False,
    key_file: Annotated[Path | None, typer.Option("--key-file", metavar="FILE",
                                                  help="With --encrypt: file "
                                                  "holding the key; recorded as the store's "
                                                  "key_file.")] = None,
    gitignore: Annotated[bool, typer.Option(
        "--gitignore/--no-gitignore", show_default=False, help="Inside a git work tree, add "
        "the store folder and the local registry file to .gitignore (the default).")] = True,
) -> None:
    """Write modelkeep.toml in the current folder (unless there is one) and create the store."""
    from modelkeep.config import find_config, load_config, write_config
    from modelkeep.wiring import open_store

    st = _state(ctx)
    if key_file is not None and not encrypt:
        raise InvalidInputError("--key-file is only used with --encrypt",
                                hint="add --encrypt to create an encrypted store")
    existing = find_config() if encrypt else None
    if existing is not None:
        # A new encrypted store for an existing project: its settings are left as they are.
        path = existing
    else:
        path = write_config(Path.cwd(), store=store or st.store, registry=registry or st.registry,
                            key_file=str(key_file.expanduser().resolve()) if key_file else None)
    try:
        config = load_config()
        the_store = open_store(store or st.store, config=config, plugins=st.plugins)
        encrypted, key_id = _init_store(the_store, encrypt, key_file)
    except BaseException:
        if path != existing:
            path.unlink(missing_ok=True)  # a failed init leaves nothing behind
        raise
    ignored: list[str] = []
    if gitignore and git_work_tree(path.parent) is not None:
        root = the_store.location.root if the_store.location.is_local else None
        ignored = add_to_gitignore(path.parent, ignore_entries(path.parent, root,
                                                               config.registry))
    data = {"config": str(path), "store": the_store.url, "registry": config.registry,
            "encrypted": encrypted, "key_id": key_id, "gitignore": ignored}

    def human() -> None:
        verb = "settings" if path == existing else "wrote"
        text = f"{verb} {path}\nstore:    {the_store.url}\nregistry: {config.registry}"
        if ignored:
            text += (f"\nadded {', '.join(ignored)} to {path.parent / '.gitignore'} (the store "
                     "and registry stay out of git; --no-gitignore to skip)")
        if encrypted:
            text += f"\nencrypted, key id {key_id}"
            if path == existing and key_file is not None:
                text += (f"\nthe settings were left as they are: add key_file = "
                         f"\"{key_file.expanduser().resolve()}\" to the store's options, or "
                         "set MODELKEEP_KEY")
        st.out.console.print(text, highlight=False, markup=False)

    st.out.emit(data, human)


def _init_store(the_store: Any, encrypt: bool, key_file: Path | None) -> tuple[bool, str | None]:
    encrypted = False
    if encrypt:
        from modelkeep.cli.key_cmds import read_key_file

        if key_file is not None:
            kek = read_key_file(key_file, "key file")
        else:
            offered = the_store.key_candidates()
            if not offered:
                raise InvalidInputError(
                    "init --encrypt needs a key",
                    hint="create one with `modelkeep key generate FILE` and pass --key-file "
                    "FILE, or set MODELKEEP_KEY",
                )
            kek = offered[0].key
        status = the_store.init_encrypted(kek)
        encrypted = True
        key_id: str | None = status.key_id
    else:
        the_store.ensure_initialized()
        key_id = None
    return encrypted, key_id


# -- register -----------------------------------------------------------------------------------


@app.command()
def register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    path: Annotated[str, typer.Argument(help="Model folder or file, an fsspec URL (s3://, "
                                        "az://, memory:// …), or a DVC-tracked path with "
                                        "--rev/--repo (or dvc://PATH).")],
    parent: Annotated[list[str] | None, typer.Option("--parent", metavar="NAME@REF",
                                                     help="Parent version "
                                                     "(NAME@REF); repeatable.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", metavar="KEY=VALUE",
                                                  help="A tag; repeatable.")] = None,
    alias: Annotated[list[str] | None, typer.Option("--alias", help="Alias to point at the new "
                                                    "version; repeatable.")] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", metavar="TEXT",
                                                help="Description.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Register even if identical to the "
                                        "newest version.")] = False,
    rev: Annotated[str | None, typer.Option("--rev", help="Read PATH, tracked by DVC, at this "
                                            "git revision.")] = None,
    repo: Annotated[str | None, typer.Option("--repo", help="DVC repository (folder or git "
                                             "URL) holding PATH; default: the current one.")]
    = None,
    source_options: Annotated[str | None, typer.Option(
        "--source-options", metavar="JSON",
        help="fsspec options for a URL source, as JSON.")] = None,
) -> None:
    """Store a model folder (local, any fsspec URL, or DVC-tracked) as a new version of NAME."""
    import json

    st = _state(ctx)
    keep = st.keep()  # first: it imports the store with the collector paused

    from modelkeep.sources import is_url, scan_url
    from modelkeep.store import scan_local

    lineage = None
    source: str | Path = path
    if rev is not None or repo is not None or path.startswith("dvc://"):
        from modelkeep.plugins.dvc import dvc_sources

        inner = path.removeprefix("dvc://")
        sources, lineage = dvc_sources(inner, repo, rev)
        source = f"dvc://{inner}"
    elif is_url(path):
        try:
            options = json.loads(source_options) if source_options else {}
        except ValueError:
            raise InvalidInputError("--source-options is not JSON",
                                    hint='e.g. --source-options \'{"anon": true}\'') from None
        sources = scan_url(path, options)
    else:
        source = Path(path)
        sources = scan_local(source)
    total = sum(f.size for f in sources)
    with st.out.progress(f"storing {name}", total) as advance:
        mv = keep.register(
            name, source, parents=parent or (), tags=_parse_tags(tag or []), aliases=alias or (),
            message=message, force=force, progress=advance, sources=sources, lineage=lineage,
        )

    def human() -> None:
        if mv.reused:
            st.out.line(_reused_line(mv), markup=False)
            return
        st.out.line(
            f"registered {mv.ref}: {human_bytes(mv.size)} in {len(mv.files)} file(s), "
            f"added {human_bytes(mv.bytes_added)} ({_pct(mv.dedup_ratio)} already stored), "
            f"{human_bytes(mv.bytes_stored)} in the store")
        if mv.aliases:
            st.out.line(f"aliases: {', '.join(mv.aliases)}")

    st.out.emit(mv.to_json(), human)


def _reused_line(mv: Any) -> str:
    """One line for a register that found its content already registered: what it applied."""
    done = []
    if "message" in mv.applied:
        done.append("set its description")
    if mv.applied.get("tags"):
        done.append("tagged it " + ", ".join(f"{k}={v}" for k, v in
                                             sorted(mv.applied["tags"].items())))
    if mv.applied.get("aliases"):
        done.append("pointed " + ", ".join(mv.applied["aliases"]) + " at it")
    what = "; ".join(done) if done else "nothing changed"
    return (f"{mv.ref} already holds this content, nothing new stored (--force for a new "
            f"version): {what}")


# -- list / show / log --------------------------------------------------------------------------


# `list NAME` and `log` show a model's newest versions, as many as fit a screen: against an MLflow
# server each version read costs the server about 1.5 ms, so a long history read whole is seconds
# (docs/mlflow.md, "Long histories").
DEFAULT_VERSIONS = 20

LimitOption = Annotated[int | None, typer.Option(
    "--limit", "-n", min=1, metavar="N",
    help=f"Show the newest N versions (default {DEFAULT_VERSIONS}).")]
AllOption = Annotated[bool, typer.Option("--all", help="Show every version.")]


def _version_limit(limit: int | None, every: bool) -> int | None:
    """The number of newest versions to show (None: all of them)."""
    if every and limit is not None:
        raise InvalidInputError("--all and --limit contradict each other",
                                hint="pass one of them")
    return None if every else (limit or DEFAULT_VERSIONS)


def _truncation_note(st: State, listing: Any) -> None:
    if listing.truncated:
        st.out.note(f"the newest {listing.limit} versions of {listing.name}; older ones with "
                    "--all, or --limit N for the newest N")


@app.command("list")
def list_(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Model name; omit for all models.")] = None,
    limit: LimitOption = None,
    every: AllOption = False,
) -> None:
    """List models, or the newest versions of one model (--all: every version)."""
    st = _state(ctx)
    st.out.prefetch()
    keep = st.keep()
    if name is None:
        if limit is not None or every:
            raise InvalidInputError("--limit and --all choose among one model's versions",
                                    hint="name the model: modelkeep list NAME")
        rows = keep.model_list()
        if not rows and not getattr(keep.registry, "exists", True):
            # A registry that can tell "absent" from "empty" (a SQLite file not created yet).
            raise NotFoundError(f"there is no registry at {keep.registry.uri}",
                                hint=Hint("check {registry} / MLFLOW_TRACKING_URI; the first "
                                          "`modelkeep register` creates it", registry=REGISTRY))

        def human_models() -> None:
            if not rows:
                st.out.console.print("no models yet; register one with `modelkeep register`")
                return
            st.out.table(("model", "latest", "aliases"),
                         [(m.name, str(m.latest or "none"),
                           ", ".join(f"{a}@{v}" for a, v in sorted(m.aliases.items())))
                          for m in rows])

        st.out.emit([m.to_json() for m in rows], human_models)
        return
    listing = keep.version_list(name, limit=_version_limit(limit, every))

    def human_versions() -> None:
        if not listing.versions and not listing.truncated:
            # A model whose versions were all deleted, or whose first register was interrupted
            # after the registry made the model: say so rather than print an empty table.
            gone = len(keep.deletions(name))
            st.out.console.print(
                f"model {name!r} has no versions"
                + (f" ({gone} deleted: `modelkeep log {name}`)" if gone else
                   "; register one with `modelkeep register`"), highlight=False)
            return
        st.out.table(("version", "created", "size", "added", "aliases", "message"),
                     [(str(v.version), v.created.strftime("%Y-%m-%d %H:%M"), human_bytes(v.size),
                       human_bytes(v.bytes_added), ", ".join(v.aliases),
                       v.message.splitlines()[0] if v.message else "")
                      for v in listing.versions])
        _truncation_note(st, listing)

    st.out.emit(listing.to_json(), human_versions)


@app.command()
def show(
    ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")]
) -> None:
    """Show one version: files, tags, aliases, parents."""
    from modelkeep.ops.read import tensor_counts

    st = _state(ctx)
    st.out.prefetch()
    keep = st.keep()
    mv = keep.get(ref)
    counts = tensor_counts(keep, mv)  # files whose tensor map is their stored header

    def human() -> None:
        c = st.out.console
        c.print(f"{mv.ref}  (snapshot {mv.snapshot_id[:12]})", highlight=False)
        c.print(f"uri:      {mv.uri}", highlight=False)
        c.print(f"created:  {mv.created:%Y-%m-%d %H:%M:%S} UTC by {mv.author or '?'}",
                highlight=False)
        c.print(f"size:     {human_bytes(mv.size)} (added {human_bytes(mv.bytes_added)} "
                f"when registered, {_pct(mv.dedup_ratio)} deduplicated)", highlight=False)
        if mv.bytes_stored is not None:
            c.print(f"stored:   {human_bytes(mv.bytes_stored)} in the store "
                    f"({_pct(mv.stored_ratio)} of its size, coded)", highlight=False)
        if mv.aliases:
            c.print(f"aliases:  {', '.join(mv.aliases)}", highlight=False)
        if mv.parents:
            c.print(f"parents:  {', '.join(str(p) for p in mv.parents)}", highlight=False)
        if mv.message:
            c.print(f"message:  {mv.message}", highlight=False)
        for k, v in sorted(mv.user_tags.items()):
            c.print(f"tag:      {k}={v}", highlight=False)
        for line in _lineage_lines(mv.lineage):
            c.print(line, highlight=False, markup=False)
        from rich.table import Table

        table = Table("file", "size", "chunks", "tensors")
        for f in mv.files:
            n = len(f.tensors) if f.tensors is not None else counts.get(f.path)
            table.add_row(f.path, human_bytes(f.size), str(len(f.chunks)),
                          str(n) if n is not None else "")
        c.print(table)

    data = mv.to_json()
    for item in data["files"]:
        if item["path"] in counts:
            item["tensors"] = counts[item["path"]]
    st.out.emit(data, human)


def _lineage_lines(lineage: dict[str, Any] | Any) -> list[str]:
    from modelkeep.lineage import data_versions

    lines = []
    git = lineage.get("git") if lineage else None
    if isinstance(git, dict):
        if git.get("status") == "ok" and git.get("commit"):
            flags = [f for f in ("dirty", "shallow") if git.get(f)]
            where = git.get("branch") or "detached HEAD"
            extra = f" ({', '.join(flags)})" if flags else ""
            lines.append(f"git:      {git['commit']} on {where}{extra}")
            if git.get("remote"):
                lines.append(f"remote:   {git['remote']}")
        else:
            lines.append(f"git:      {git.get('status')}")
    dvc = lineage.get("dvc") if lineage else None
    if isinstance(dvc, dict):
        if dvc.get("status") != "ok":
            lines.append(f"dvc:      {dvc.get('status')}")
        else:
            stages = ", ".join(sorted(dvc.get("stages") or {})) or "none"
            lines.append(f"dvc:      stages {stages}; remote {dvc.get('remote') or '-'}")
            for d in data_versions(lineage):
                lines.append(f"data:     {d['path']} {d['hash']} ({d['via']})")
    source = lineage.get("source") if lineage else None
    if isinstance(source, dict):
        lines.append("source:   " + " ".join(f"{k}={v}" for k, v in sorted(source.items())
                                             if v is not None))
    return lines


@app.command()
def log(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")],
    limit: LimitOption = None,
    every: AllOption = False,
) -> None:
    """History of a model, newest first: its newest versions (--all: every one), the alias
    changes and the deleted versions since."""
    from modelkeep.catalog.deletions import DeletionEvent

    st = _state(ctx)
    st.out.prefetch()
    history = st.keep().log(name, limit=_version_limit(limit, every))
    listing = history.versions
    versions = list(reversed(listing.versions))
    events = list(reversed(history.alias_history))
    deleted = list(reversed(history.deletions))

    def human() -> None:
        # One timeline: versions by creation time, alias changes by the time they were made.
        timeline: list[tuple[str, Any]] = [(f"{v.created:%Y-%m-%dT%H:%M:%SZ}", v)
                                           for v in versions]
        timeline += [(e.time, e) for e in events]
        timeline += [(d.time, d) for d in deleted]
        timeline.sort(key=lambda item: item[0], reverse=True)
        if listing.truncated and versions:
            # Older versions are not shown, so neither is what happened among them.
            since = f"{versions[-1].created:%Y-%m-%dT%H:%M:%SZ}"
            timeline = [item for item in timeline if item[0] >= since]
        # Printed at once: rich costs a fraction of a millisecond per print call, which a
        # model's thousand versions turn into a second.
        lines: list[str] = []
        for _when, item in timeline:
            if isinstance(item, AliasEvent):
                target = f"-> {name}@{item.version}" if item.version is not None else "deleted"
                lines.append(f"[cyan]alias {item.alias}[/cyan] {target}  ({item.op})")
                lines.append(f"  {item.time.replace('T', ' ').rstrip('Z')} UTC  {item.author}")
                continue
            if isinstance(item, DeletionEvent):
                snap = f"  {item.snapshot_id[:12]}" if item.snapshot_id else ""
                lines.append(f"[red]deleted {name}@{item.version}[/red]{snap}")
                lines.append(f"  {item.time.replace('T', ' ').rstrip('Z')} UTC  {item.author}")
                continue
            v = item
            aliases = f" ({', '.join(v.aliases)})" if v.aliases else ""
            lines.append(f"[bold]{v.ref}[/bold]{aliases}  {v.snapshot_id[:12]}")
            lines.append(f"  {v.created:%Y-%m-%d %H:%M:%S} UTC  {v.author}  "
                         f"{human_bytes(v.size)}, added {human_bytes(v.bytes_added)}")
            if v.parents:
                lines.append(f"  parents: {', '.join(str(p) for p in v.parents)}")
            if v.message:
                lines.append(f"  {v.message}")
        if lines:
            st.out.console.print("\n".join(lines), highlight=False)
        if listing.truncated:
            st.out.note(f"the newest {listing.limit} versions of {name} and what happened "
                        "since; the whole history with --all, or --limit N for more versions")

    st.out.emit(history.to_json(), human)


@app.command()
def search(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Model name; omit to search every model.")]
    = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE the version must "
                                                  "carry; repeatable.")] = None,
    metric: Annotated[list[str] | None, typer.Option(
        "--metric", help="A threshold on a metric.* tag, e.g. 'loss<0.5' (<, <=, >, >=, ==, "
        "!=); repeatable.")] = None,
    order_by: Annotated[str | None, typer.Option(
        "--order-by", help="tag.KEY or metric.NAME (default: model, then version).")] = None,
    desc: Annotated[bool, typer.Option("--desc", help="Descending order.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N versions.")]
    = None,
) -> None:
    """Find versions by tag and metric, across models."""
    st = _state(ctx)
    found = st.keep().search(name, tags=_parse_tags(tag or []), metrics=metric or (),
                             order_by=order_by, desc=desc, limit=limit)

    def human() -> None:
        if not found:
            st.out.note("no version matches")
            return
        from modelkeep.ops.search import MetricCondition

        # The metrics asked about (and ordered by) are columns of the table.
        shown = [MetricCondition.parse(m).name for m in metric or ()]
        if order_by and order_by.startswith("metric."):
            shown.insert(0, order_by.removeprefix("metric."))
        keys = list(dict.fromkeys(shown))
        st.out.table(("version", "created", "size", "aliases", *keys),
                     [(v.ref, v.created.strftime("%Y-%m-%d %H:%M"), human_bytes(v.size),
                       ", ".join(v.aliases), *(v.tags.get(f"metric.{k}", "-") for k in keys))
                      for v in found])

    st.out.emit([v.to_json() for v in found], human)


# -- pull / cat ---------------------------------------------------------------------------------


@app.command()
def pull(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")],
    dest: Annotated[Path, typer.Argument(help="Destination folder (new or empty).")],
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty destination.")]
    = False,
    link: Annotated[bool, typer.Option(
        "--link", help="Read-only links into the shared cache instead of private copies.")]
    = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Read without the shared cache.")]
    = False,
) -> None:
    """Materialise a version's files in DEST, verified, all or nothing."""
    st = _state(ctx)
    keep = st.keep()
    mv = keep.get(ref)
    with st.out.progress(f"pulling {mv.ref}", mv.size) as advance:
        out = keep.pull(mv.ref, dest, overwrite=force, progress=advance, link=link,
                        cache=not no_cache)
    st.out.emit(
        {"name": mv.name, "version": mv.version, "ref": mv.ref, "snapshot_id": mv.snapshot_id,
         "path": str(out), "files": len(mv.files), "size": mv.size},
        lambda: st.out.line(
            f"pulled {mv.ref} to {out} ({len(mv.files)} file(s), {human_bytes(mv.size)})"),
    )


@app.command()
def cat(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")],
    file: Annotated[str, typer.Argument(help="Path of the file inside the version.")],
) -> None:
    """Write one file of a version to stdout (fetches only what it reads)."""
    st = _state(ctx)
    with st.keep().open_file(ref, file) as f:
        shutil.copyfileobj(f, sys.stdout.buffer, 4 << 20)
    sys.stdout.buffer.flush()


# -- diff / verify ------------------------------------------------------------------------------


@app.command()
def diff(
    ctx: typer.Context,
    ref_a: Annotated[str, typer.Argument(metavar="A", help="Old version (NAME@REF).")],
    ref_b: Annotated[str, typer.Argument(metavar="B", help="New version (NAME@REF).")],
    stat: Annotated[bool, typer.Option(
        "--stat", help="A summary only: which files and how many tensors changed, read from "
        "the two snapshots without fetching any content.")] = False,
) -> None:
    """Files and tensors that differ between two versions.

    A changed text file (UTF-8, up to 1 MiB) is shown as a unified diff; a safetensors file as
    its tensors added, removed and changed, with dtype and shape, and for a tensor whose dtype
    and shape stayed, the largest absolute difference of its values (read chunk by chunk).
    """
    from modelkeep.cli._diff import print_diff

    st = _state(ctx)
    d = st.keep().diff(ref_a, ref_b, content=not stat)
    st.out.emit(d.to_json(), lambda: print_diff(st.out.console, d, stat=stat))


@app.command()
def verify(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="Version to check; omit for the whole "
                                              "store.")] = None,
    require_signed: Annotated[bool, typer.Option(
        "--require-signed", help="Also fail for any version (REF, else every registered "
        "version) without a valid signature by a trusted key.")] = False,
    trusted_key: Annotated[list[str] | None, typer.Option(
        "--trusted-key", metavar="FILE|ID",
        help="Public key file (or key id) to trust; repeatable. The signing "
        "key in use and MODELKEEP_TRUSTED_KEYS are trusted too.")] = None,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Move damaged chunks aside (quarantine/) and, with --from, write "
        "verified copies in their place; without --from, registering the original files again "
        "rewrites them.")] = False,
    source: Annotated[str | None, typer.Option(
        "--from", metavar="FOLDER|STORE",
        help="With --repair: a folder holding the original files, or a store name "
        "or URL holding the same chunks (a replica).")] = None,
) -> None:
    """Fetch every chunk and check it against its id; with --require-signed, check signatures;
    with --repair, replace damaged chunks."""
    st = _state(ctx)
    keep = st.keep()
    if repair or source:
        _repair(st, keep, ref, source, require_signed)
        return
    signatures: list[dict[str, Any]] = []
    if require_signed:
        trusted = keep.trusted_keys(trusted_key or ())
        if not trusted:
            raise InvalidInputError(
                "--require-signed needs a trusted key",
                hint="pass --trusted-key PUB, set MODELKEEP_TRUSTED_KEYS, or set the signing key")
        # Versions other tools registered (sources that are not modelkeep:// URIs) are not
        # modelkeep's to judge; modelkeep cannot read them either.
        refs = [ref] if ref else [f"{m}@{v.version}" for m in keep.models()
                                  for v in keep.registry.versions(m)
                                  if v.source.startswith("modelkeep://")]
        for r in refs:
            try:
                status = keep.signature_status(r, trusted).to_json()
            except (IntegrityError, NotFoundError) as exc:  # no snapshot to judge
                status = {"snapshot_id": None, "state": "invalid", "key_id": None, "signers": [],
                          "problems": [exc.message]}
            signatures.append({"ref": r, **status})
    total = keep.get(ref).size if ref else 0
    with st.out.progress("verifying", total or 1) as advance:
        result = keep.verify(ref, progress=advance)
    unsigned = [s for s in signatures if s["state"] != "valid"]

    from modelkeep.ops.repair import damaged_chunks

    damaged = damaged_chunks(keep, result)

    def human() -> None:
        c = st.out.console
        for d in damaged:  # each damaged chunk once, with every version that uses it
            c.print(f"DAMAGED {d}", highlight=False)
        for p in result.problems:
            if p.path is None:  # a snapshot object itself
                c.print(f"DAMAGED {p}", highlight=False)
        for s in unsigned:
            by = f" (key {s['key_id'][:16]})" if s["key_id"] else ""
            why = f": {'; '.join(s['problems'])}" if s["problems"] else ""
            c.print(f"UNSIGNED {s['ref']}: signature {s['state']}{by}{why}", highlight=False)
        status = "ok" if result.ok and not unsigned else \
            f"{len(result.problems) + len(unsigned)} problem(s)"
        c.print(f"{status}: {result.snapshots} snapshot(s), {result.chunks} chunk(s), "
                f"{human_bytes(result.bytes)} checked", highlight=False)
        if require_signed:
            c.print(f"signatures: {len(signatures) - len(unsigned)} of {len(signatures)} "
                    f"version(s) signed by a trusted key", highlight=False)

    data = result.to_json()
    data["damaged"] = [d.to_json() for d in damaged]
    if require_signed:
        data["signatures"] = signatures
        data["ok"] = result.ok and not unsigned
    st.out.emit(data, human)
    if not result.ok or unsigned:
        raise typer.Exit(4)


def _repair(st: State, keep: Keep, ref: str | None, source: str | None,
            require_signed: bool) -> None:
    if ref is not None or require_signed:
        raise InvalidInputError("--repair works on the whole store",
                                hint="drop REF and --require-signed")
    result = keep.repair(source)

    def human() -> None:
        c = st.out.console
        for d in result.damaged:
            c.print(f"DAMAGED {d}", highlight=False)
        rep = result.repair
        if rep is not None:
            c.print(f"quarantined {len(rep.quarantined)}, rewritten {len(rep.rewritten)} "
                    f"from {source or 'nothing'}", highlight=False)
            for cid in rep.missing:
                c.print(f"NOT REPAIRED chunk {cid[:12]}: "
                        + ("no source given; register the original files again, or run "
                           "verify --repair --from FOLDER|STORE" if source is None else
                           f"{source} does not hold its bytes"), highlight=False)
        final = result.after if result.after is not None else result.before
        c.print(f"{'ok' if final.ok else f'{len(final.problems)} problem(s)'}: "
                f"{final.snapshots} snapshot(s), {final.chunks} chunk(s), "
                f"{human_bytes(final.bytes)} checked", highlight=False)

    st.out.emit(result.to_json(), human)
    if not result.ok:
        raise typer.Exit(4)


# -- config / plugins ---------------------------------------------------------------------------


@app.command("config")
def config_(ctx: typer.Context) -> None:
    """Show the effective settings (file, stores, registry, policies), secrets redacted."""
    from modelkeep.config import load_config, redact

    st = _state(ctx)
    cfg = load_config()
    data = cfg.to_json(redacted=False)
    if st.store is not None:
        choice = cfg.resolve_store(st.store)
        data["store"] = {"name": choice.name, "url": choice.url, "options": choice.options,
                         "source": "--store"}
    if st.registry is not None:
        data["registry"] = {"uri": st.registry, "source": "--registry"}
    data = redact(data)

    def human() -> None:
        c = st.out.console
        c.print(f"file:      {data['file'] or '(none; defaults)'}", highlight=False)
        c.print(f"root:      {data['root']}", highlight=False)
        store = data["store"]
        label = f"{store['name']}: " if store["name"] else ""
        c.print(f"store:     {label}{store['url']}  [{store['source']}]", highlight=False,
                markup=False)
        if store["options"]:
            c.print(f"  options: {_inline(store['options'])}", highlight=False, markup=False)
        reg = data["registry"]
        c.print(f"registry:  {reg['uri'] or '(MLflow default)'}  [{reg['source']}]",
                highlight=False, markup=False)
        for name, s in data["stores"].items():
            c.print(f"stores.{name}: {s['url']}", highlight=False, markup=False)
            if s["options"]:
                c.print(f"  options: {_inline(s['options'])}", highlight=False, markup=False)
        if data["policies"]:
            c.print(f"policies:  {_inline(data['policies'])}", highlight=False, markup=False)
        if data["plugins"] is not None:
            c.print(f"plugins:   MODELKEEP_PLUGINS={data['plugins']}", highlight=False,
                    markup=False)

    st.out.emit(data, human)


def _inline(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


@app.command("plugins")
def plugins_(ctx: typer.Context) -> None:
    """List loaded plugins and the hooks each implements."""
    from modelkeep.hooks.manager import get_plugin_manager

    st = _state(ctx)
    pm = st.plugins or get_plugin_manager()
    infos = pm.plugins_info()

    def human() -> None:
        from rich.table import Column, Table

        # Names are the point of the listing: fold them on a narrow terminal, never cut them.
        table = Table(*(Column(h, overflow="fold") for h in ("plugin", "from", "hooks")))
        for p in infos:
            origin = f"{p.origin} ({p.distribution})" if p.distribution else p.origin
            table.add_row(p.name, origin, "\n".join(p.hooks) or "-")
        st.out.console.print(table)

    st.out.emit([p.to_json() for p in infos], human)


from modelkeep.cli.gitdvc_cmds import add_commands as _add_gitdvc  # noqa: E402

_add_gitdvc(app)
registry_cmds.add_to(app)
store_cmds.add_to(app)
key_cmds.add_to(app)
auth_cmds.add_to(app)
policy_cmds.add_to(app)
fetch_cmds.add_to(app)
usage_cmds.add_to(app)


def _command(plugins: PluginManager, argv: list[str] | None = None) -> Any:
    """The click group of the built-in commands and every plugin's (a fresh one each call, so
    the module's ``app`` never accumulates plugin commands), all in the one help style, each
    taking ``--json`` after its name as well as before it.

    With *argv* naming a built-in command, that one alone is built: Typer reads every command's
    signature and type hints to build it, 20 ms for the whole tree, which only ``--help`` and
    a mistyped name need (they get the whole tree)."""
    command: Any = typer.main.get_command(_only(app, argv) or app)
    extra = typer.Typer()
    plugins.hook.modelkeep_cli_commands(app=extra)
    if extra.registered_commands or extra.registered_groups:
        group = typer.main.get_group(extra)
        for name, cmd in group.commands.items():
            command.add_command(cmd, name)
    _json_everywhere(command)
    install_plain_params(command)
    return apply_help_style(command)


def _only(full: typer.Typer, argv: list[str] | None) -> typer.Typer | None:
    """A copy of *full* holding just the command or group *argv* invokes, or None when that is
    not plain: no command named, ``--help`` or an option the group does not take before it, a
    name that is not a built-in command, a group whose name is Typer's to derive."""
    if argv is None:
        return None
    bare = copy.copy(full)
    bare.registered_commands, bare.registered_groups = [], []
    name = _invoked(typer.main.get_command(bare), argv)
    if name is None:
        return None
    commands = [c for c in full.registered_commands
                if (c.name or typer.main.get_command_name(getattr(c.callback, "__name__", "")))
                == name]
    groups = []
    for g in full.registered_groups:
        group_name = g.name
        if not isinstance(group_name, str) and g.typer_instance is not None:
            group_name = g.typer_instance.info.name
        if not isinstance(group_name, str) or not group_name:
            return None  # named by its callback, or merged into this group: Typer's to say
        if group_name == name:
            groups.append(g)
    if not commands and not groups:
        return None
    bare.registered_commands, bare.registered_groups = commands, groups
    return bare


def _invoked(group: Any, argv: list[str]) -> str | None:
    """The name of the command *argv* invokes, when everything before it is one of *group*'s
    own options (with its value); otherwise None."""
    with_value: set[str] = set()
    flags: set[str] = set()
    for param in group.params:
        if param.param_type_name == "option":
            names = {*param.opts, *param.secondary_opts}
            (flags if param.is_flag or param.count else with_value).update(names)
    args = iter(argv)
    for arg in args:
        if arg in with_value:
            next(args, None)
        elif arg.partition("=")[0] in with_value or arg in flags:
            continue
        else:
            return None if arg.startswith("-") else arg
    return None


# Commands whose output is not a document: ``cat`` writes a file's bytes.
NO_JSON = frozenset({"cat"})


def _enable_json(ctx: Any, _param: Any, value: bool) -> None:
    if value:
        found = ctx.find_object(State)
        if found is not None:
            found.out.json = True


def _json_everywhere(group: Any, flag: Any = None) -> None:
    """Give every subcommand that lacks one a ``--json`` flag meaning what the global one
    means, so ``modelkeep show REF --json`` and ``modelkeep --json show REF`` are the same.
    The flag is a copy of the global one (recent typer versions carry their own copy of click,
    whose option class is typer's to build)."""
    if flag is None:
        [flag] = [p for p in group.params if "--json" in p.opts]
    for cmd in group.commands.values():
        if hasattr(cmd, "commands"):
            _json_everywhere(cmd, flag)
        elif cmd.name not in NO_JSON and not any("--json" in getattr(p, "opts", ())
                                                 for p in cmd.params):
            option = copy.copy(flag)
            option.name, option.expose_value, option.callback = "json", False, _enable_json
            cmd.params.append(option)


def _wants_json(argv: list[str] | None) -> bool:
    """Whether ``--json`` is among the options: errors are then JSON too, even the ones
    found while parsing."""
    args = sys.argv[1:] if argv is None else argv
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _caught(ours: type[Exception], name: str) -> tuple[type[Any], ...]:
    """*ours* (typer's exception class), and click's class *name* if click is loaded: a plugin's
    commands may be built on it. Unloaded, nothing can have raised one, and importing it would
    cost every command 10 ms; the commands here are built on the copy of click that recent typer
    versions carry."""
    exceptions = sys.modules.get("click.exceptions")
    return (ours,) if exceptions is None else (getattr(exceptions, name), ours)


def main(argv: list[str] | None = None, *, plugins: PluginManager | None = None) -> int:
    """Console-script entry point; *plugins* replaces the process-wide plugin manager."""
    code = _main(argv, plugins)
    if argv is None:
        # The command line of this process, which ends when main returns. Every object moves to
        # the permanent generation, so the interpreter's shutdown does not walk them all again
        # in its final cyclic collections: 60 ms of CPU of a read command, 0.1-0.3 s of wall
        # time on a busy machine (docs/mlflow.md). Their memory goes back with the process.
        gc.freeze()
    return code


def _main(argv: list[str] | None, plugins: PluginManager | None) -> int:
    json_out = _wants_json(argv)
    whole_process = argv is None
    try:
        with settled(freeze=whole_process):  # the plugins and the command tree live till exit
            if plugins is None:
                from modelkeep.hooks.manager import get_plugin_manager

                plugins = get_plugin_manager()
            command = _command(plugins, sys.argv[1:] if argv is None else argv)
    except Exception as exc:
        return report(exc, json_out=json_out)
    try:
        result: Any = command.main(args=argv, prog_name="modelkeep", standalone_mode=False,
                                   obj=State(plugins=plugins, whole_process=whole_process))
    except _caught(typer.Exit, "Exit") as exc:
        return int(exc.exit_code)
    except _caught(typer.Abort, "Abort") as exc:
        if isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt):
            # click turns Ctrl-C into Abort
            return report(KeyboardInterrupt(), json_out=json_out)
        if json_out:
            emit_json_error("Abort", "aborted", "", 130)
        else:
            print("error: aborted", file=sys.stderr)
        return 130
    except _caught(typer.TyperException, "ClickException") as exc:
        # Recent typer versions carry their own copy of click: catch both kinds of usage error.
        if not hasattr(exc, "show"):
            return report(exc, json_out=json_out)
        code = int(getattr(exc, "exit_code", 2))
        if json_out:
            emit_json_error(type(exc).__name__, exc.format_message(), "see modelkeep --help",
                            code)
        else:
            exc.show()
        return code
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        return report(exc, json_out=json_out)
    if result == 130:
        # typer turns Ctrl-C into Exit(130), which standalone_mode=False hands back as the
        # result; no command returns 130 itself.
        return report(KeyboardInterrupt(), json_out=json_out)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
