"""modelkeep-approval: a version needs an ``approved-by`` tag before it can be promoted.

- Refuses to point a protected alias (``production``; set ``MODELKEEP_APPROVAL_ALIASES`` to a
  comma list to change them) at a version without an ``approved-by`` tag, whether the alias is
  given to ``modelkeep register --alias`` or set later (``modelkeep alias``, ``rollback``).
- Tags every new version ``approval.status`` = ``approved`` or ``pending``.
- Adds ``modelkeep approve NAME@REF --by WHO``, which sets the ``approved-by`` tag.

Installed, it is found through the ``modelkeep`` entry-point group (see ``pyproject.toml``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from modelkeep.hooks import hookimpl

TAG = "approved-by"


def protected_aliases() -> set[str]:
    value = os.environ.get("MODELKEEP_APPROVAL_ALIASES", "production")
    return {a.strip() for a in value.split(",") if a.strip()}


@hookimpl
def modelkeep_before_alias_change(alias: str, tags: Mapping[str, str], action: str) -> str | None:
    # Taking a protected alias away needs no approval: it promotes nothing.
    if action != "delete" and alias in protected_aliases() and not tags.get(TAG):
        return f"{alias!r} needs an {TAG!r} tag; approve the version first"
    return None


@hookimpl
def modelkeep_collect_metadata(snapshot: Any) -> dict[str, str]:
    return {"approval.status": "approved" if snapshot.tags.get(TAG) else "pending"}


@hookimpl
def modelkeep_cli_commands(app: typer.Typer) -> None:
    @app.command()
    def approve(
        ctx: typer.Context,
        ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")],
        by: Annotated[str, typer.Option("--by", help="Who approves.")],
    ) -> None:
        """Approve a version: set its approved-by tag."""
        from modelkeep.cli.main import State

        keep = ctx.find_object(State).keep()
        version = keep.get(ref)
        keep.registry.set_tag(version.name, version.version, TAG, by)
        keep.registry.set_tag(version.name, version.version, "approval.status", "approved")
        print(f"{version.ref} approved by {by}")
