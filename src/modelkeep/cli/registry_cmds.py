"""Registry commands: ``alias``, ``rollback``, ``promote``, ``describe``, ``delete`` and
``registry rebuild``.

Presentation only, like :mod:`modelkeep.cli.main`: each command calls one
:class:`~modelkeep.keep.Keep` method and prints the result for a person or, with ``--json``, as
JSON. :func:`add_to` adds them to the ``modelkeep`` app.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from modelkeep.cli._output import human_bytes
from modelkeep.cli._state import state as _state
from modelkeep.errors import InvalidInputError

registry_app = typer.Typer(
    name="registry", help="Maintain the registry: rebuild it from the store.",
    no_args_is_help=True, rich_markup_mode=None,
)




def alias(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="REF|NAME",
                                          help="NAME@VERSION|ALIAS|latest; NAME with --delete.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="The alias.")],
    delete: Annotated[bool, typer.Option("--delete", help="Remove ALIAS from model NAME.")]
    = False,
) -> None:
    """Point ALIAS at a version (or remove it with --delete); recorded in the alias history."""
    st = _state(ctx)
    keep = st.keep()
    if delete:
        if "@" in target:
            raise InvalidInputError(f"--delete takes a model name, not {target!r}",
                                    hint="modelkeep alias --delete NAME ALIAS")
        was = keep.delete_alias(target, alias_name)
        st.out.emit(
            {"name": target, "alias": alias_name, "version": None, "previous": was},
            lambda: st.out.console.print(
                f"deleted alias {alias_name} of {target} (was version {was})", highlight=False))
        return
    mv = keep.set_alias(target, alias_name)
    st.out.emit(
        {"name": mv.name, "alias": alias_name, "version": mv.version, "ref": mv.ref},
        lambda: st.out.console.print(f"{mv.name}@{alias_name} -> {mv.ref}", highlight=False))


def rollback(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="The alias to move back.")],
    to: Annotated[int | None, typer.Option("--to", metavar="VERSION",
                                           help="Version to go back to (default: where "
                                           "the alias pointed before).")] = None,
) -> None:
    """Move ALIAS back to where it pointed before; repeat to go further back."""
    st = _state(ctx)
    keep = st.keep()
    mv = keep.rollback(name, alias_name, to=to)
    st.out.emit(
        {"name": name, "alias": alias_name, "version": mv.version, "ref": mv.ref},
        lambda: st.out.console.print(f"{name}@{alias_name} rolled back to {mv.ref}",
                                     highlight=False))


def promote(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The version to promote: NAME@VERSION|ALIAS.")],
    to: Annotated[str, typer.Option("--to", metavar="NAME",
                                    help="The registered model to add it to.")],
    alias_names: Annotated[list[str] | None, typer.Option("--alias", help="Alias to point at "
                                                          "the new version; repeatable.")] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", metavar="TEXT",
                                                help="Description (default: "
                                                "the promoted version's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Add a version even if the newest one "
                                        "of the target is identical.")] = False,
) -> None:
    """Add a version to another registered model, sharing its stored bytes."""
    st = _state(ctx)
    mv = st.keep().promote(ref, to, aliases=alias_names or (), message=message, force=force)

    def human() -> None:
        if mv.reused:
            st.out.console.print(f"{mv.ref} already holds this content", highlight=False)
        else:
            st.out.console.print(f"promoted {ref} to {mv.ref} (no file bytes copied)",
                                 highlight=False)
        if mv.aliases:
            st.out.console.print(f"aliases: {', '.join(mv.aliases)}", highlight=False)

    st.out.emit(mv.to_json(), human)


def describe(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="REF|NAME",
                                          help="A version (NAME@REF) or a model (NAME).")],
    message: Annotated[str | None, typer.Option("-m", "--message", metavar="TEXT",
                                                help="The new description; "
                                                "omit to show the current one.")] = None,
) -> None:
    """Show or set the description of a version or a model."""
    st = _state(ctx)
    keep = st.keep()
    if message is not None:
        keep.describe(target, message)
    text = keep.description(target)
    st.out.emit({"target": target, "description": text},
                lambda: st.out.console.print(text or "(no description)", highlight=False,
                                             markup=False))


def delete(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="REF|NAME",
                                          help="NAME@VERSION|ALIAS|latest; NAME with --all.")],
    all_versions: Annotated[bool, typer.Option("--all", help="Delete every version of model "
                                               "NAME.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (nor does a run "
                                      "without a terminal).")] = False,
) -> None:
    """Delete a version (or every version of a model with --all); `gc` reclaims its bytes."""
    import click

    st = _state(ctx)
    keep = st.keep()

    def confirm(refs: Sequence[str]) -> bool:
        if yes or not (sys.stdin.isatty() and sys.stderr.isatty()):
            return True
        shown = ", ".join(refs) if len(refs) <= 10 else f"{', '.join(refs[:10])}, ..."
        return click.confirm(f"delete {len(refs)} version(s): {shown}?", default=False,
                             err=True)

    report = keep.delete(target, all_versions=all_versions, confirm=confirm)
    if report.cancelled:
        st.out.note("nothing was deleted")
        raise typer.Exit(1)

    def human() -> None:
        c = st.out.console
        for d in report.versions:
            extra = f", aliases {', '.join(d.aliases_deleted)} removed" \
                if d.aliases_deleted else ""
            kept = f"; snapshot kept, used by {', '.join(d.shared_with)}" \
                if d.shared_with else ""
            c.print(f"deleted {d.ref} (snapshot {d.snapshot_id[:12]}{extra}){kept}",
                    highlight=False)
        c.print(f"`modelkeep gc` will reclaim {human_bytes(report.reclaimable_bytes)} "
                f"({report.reclaimable_chunks} chunk(s) no other version uses)",
                highlight=False)

    st.out.emit(report.to_json(), human)


@registry_app.command("rebuild")
def rebuild(
    ctx: typer.Context,
    registry: Annotated[str | None, typer.Option("--registry", metavar="URI",
                                                 help="Registry URI to rebuild "
                                                 "into (default: the configured one).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be created; write "
                                          "nothing.")] = False,
) -> None:
    """Recreate models, versions, tags, aliases and descriptions from the store alone."""
    st = _state(ctx)
    if registry is not None:
        st.registry = registry
        st._keep = None
    report = st.keep().rebuild_registry(dry_run=dry_run)

    def human() -> None:
        c = st.out.console
        verb = "would create" if dry_run else "created"
        for v in report.versions:
            mark = "=" if v.exists else "+"
            c.print(f"{mark} {v.name}@{v.version}  {v.snapshot_id[:12]}  {v.created}",
                    highlight=False)
        for sid, reason in report.skipped:
            c.print(f"skipped snapshot {sid[:12]}: {reason}", highlight=False)
        journal = report.journal
        for a in journal.aliases:
            target = f"{a.name}@{a.version}" if a.version is not None else "(not set)"
            c.print(f"{'+' if a.changed else '='} alias {a.name}@{a.alias} -> {target}  "
                    f"({a.events} change(s) in its history)", highlight=False)
        for d in journal.descriptions:
            what = f"{d.name}@{d.version}" if d.version is not None else d.name
            c.print(f"{'+' if d.changed else '='} description of {what}", highlight=False)
        for t in journal.tags:
            c.print(f"{'+' if t.changed else '='} tags of {t.name}@{t.version}: "
                    f"{', '.join(sorted(t.tags))}", highlight=False, markup=False)
        for eid, reason in journal.problems:
            c.print(f"journal{' ' + eid[:12] if eid else ''}: {reason}", highlight=False,
                    markup=False)
        c.print(f"{verb} {report.created} version(s) of {len(report.models)} model(s) in "
                f"{report.registry}; {journal.changes} alias/description/tag change(s) from "
                f"{journal.entries} journal entries", highlight=False)

    st.out.emit(report.to_json(), human)


def add_to(app: typer.Typer) -> None:
    """Add the registry commands to *app*."""
    app.command("alias")(alias)
    app.command()(rollback)
    app.command()(promote)
    app.command()(describe)
    app.command()(delete)
    app.add_typer(registry_app)
