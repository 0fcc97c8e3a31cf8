"""Built-in plugin ``modelkeep.replication``: copy every new version to the stores a policy names.

After a version is registered, :func:`replicate` copies it (its snapshot and the chunks each
destination lacks) to every store in the ``replicate_to`` list that applies to the model's name::

    [policies."team-*"]
    replicate_to = ["backup", "s3://dr-bucket/models"]

The version is visible before the copy starts; a failed copy raises an error naming the store
and the command that finishes it (``modelkeep sync --to STORE NAME@VERSION``), which copies only
what is still missing. Block the plugin with ``MODELKEEP_PLUGINS=-modelkeep.replication``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelkeep.errors import Hint, ModelkeepError, Option, StoreError
from modelkeep.hooks import hookimpl

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.store import SyncReport


def replicate(keep: Keep, version: ModelVersion, stores: Sequence[str]) -> list[SyncReport]:
    """Copy *version* to each of *stores* (names from ``[stores.NAME]`` or URLs)."""
    reports = []
    for store in stores:
        try:
            reports.append(keep.sync(store, [version.ref]))
        except ModelkeepError as exc:
            raise StoreError(
                f"{version.ref} is registered, but copying it to {store} failed: {exc.message}",
                hint=Hint("finish with {sync}", sync=Option(
                    api=f"sync({store!r}, [{version.ref!r}])",
                    cli=f"`modelkeep sync --to {store} {version.ref}`"))) from exc
    return reports


@hookimpl
def modelkeep_after_register(version: ModelVersion, keep: Keep) -> None:
    stores = keep.policies.for_name(version.name).replicate_to
    if stores:
        replicate(keep, version, stores)
