"""What every operation needs: resolving a reference through the registry, loading the snapshot
a version's URI names (through the Keep's one store and snapshot cache), and presenting the two
together as a :class:`~modelkeep.ops.results.ModelVersion`."""

from __future__ import annotations

import getpass
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from modelkeep.catalog.tags import TAG_PREFIX
from modelkeep.errors import InvalidInputError, NotFoundError
from modelkeep.ops.results import ModelVersion
from modelkeep.refs import parse_ref
from modelkeep.store import parse_uri
from modelkeep.store.snapshot import CREATED_FORMAT

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.refs import Ref
    from modelkeep.registry import RegistryVersion
    from modelkeep.store import Snapshot, Store


def resolve(keep: Keep, ref: str | Ref) -> RegistryVersion:
    """The registry version *ref* names (``NAME@3``, ``NAME@alias``, ``NAME@latest``, ``NAME``,
    ``NAME@SNAPSHOT-ID-PREFIX``)."""
    parsed = parse_ref(ref) if isinstance(ref, str) else ref
    if parsed.version is not None:
        return keep.registry.get_version(parsed.name, parsed.version)
    if parsed.alias is not None:
        try:
            return keep.registry.get_by_alias(parsed.name, parsed.alias)
        except NotFoundError:
            if parsed.snapshot is None:
                raise  # a hex prefix that is also an alias name falls back to the snapshot
    if parsed.snapshot is not None:
        return by_snapshot(keep, parsed.name, parsed.snapshot)
    latest = keep.registry.latest(parsed.name)
    if latest is None:
        raise NotFoundError(f"model {parsed.name!r} has no versions",
                            hint="register one with `modelkeep register`")
    return latest


def latest_without_aliases(keep: Keep, name: str) -> RegistryVersion | None:
    """The newest version of *name* (None: no version), its aliases left out where reading
    them costs the registry a request of its own (the Registry's optional method)."""
    bare = getattr(keep.registry, "latest_without_aliases", None)
    if bare is not None:
        found: RegistryVersion | None = bare(name)
        return found
    return keep.registry.latest(name)


def by_snapshot(keep: Keep, name: str, prefix: str) -> RegistryVersion:
    """The version of *name* whose snapshot id starts with *prefix*: one, or a clear error."""
    # A registry that can search by source is asked for the candidates alone (one search, not
    # every version of a long history); either way each candidate's source decides.
    search = getattr(keep.registry, "versions_by_snapshot", None)
    candidates = search(name, prefix) if search is not None else keep.registry.versions(name)
    found = [rv for rv in candidates if (snapshot_of(rv) or "").startswith(prefix)]
    if not found:
        raise NotFoundError(f"{name} has no version whose snapshot id starts with {prefix}",
                            hint=f"`modelkeep log {name}` lists its versions and snapshot ids")
    sids = {snapshot_of(rv) for rv in found}
    if len(sids) > 1:
        raise InvalidInputError(
            f"snapshot id prefix {prefix} is ambiguous: {len(sids)} snapshots of {name} start "
            "with it", hint="give more hex digits of the id")
    if len(found) > 1:
        numbers = ", ".join(f"{name}@{rv.version}" for rv in found)
        raise InvalidInputError(f"snapshot {prefix} is held by {len(found)} versions of {name} "
                                f"({numbers})", hint="name one as NAME@VERSION")
    return found[0]


def load(keep: Keep, rv: RegistryVersion) -> tuple[Store, Snapshot, str]:
    try:
        parsed = parse_uri(rv.source)
    except InvalidInputError:
        raise NotFoundError(
            f"{rv.name}@{rv.version} was not registered by modelkeep (source {rv.source!r})"
        ) from None
    store = keep.stores.store_for(parsed.locator)
    sid = store.resolve_snapshot_id(parsed.snapshot_id)  # a source set by hand may be short
    return store, keep.stores.snapshot(store, sid), sid


def version_of(rv: RegistryVersion, snap: Snapshot, sid: str) -> ModelVersion:
    added = rv.tags.get(TAG_PREFIX + "bytes_added")
    stored = rv.tags.get(TAG_PREFIX + "bytes_stored")
    return ModelVersion(
        name=rv.name,
        version=rv.version,
        snapshot_id=sid,
        uri=rv.source,
        created=datetime.strptime(snap.created, CREATED_FORMAT).replace(tzinfo=UTC),
        size=snap.size,
        files=snap.files,
        tags=dict(rv.tags),
        aliases=rv.aliases,
        parents=snap.parents,
        message=snap.message,
        author=snap.author,
        bytes_added=int(added) if added and added.isdigit() else None,
        bytes_stored=int(stored) if stored and stored.isdigit() else None,
        lineage=snap.lineage,
    )


def snapshot_of(rv: RegistryVersion) -> str | None:
    """The snapshot id of a registry version; None for a version another tool registered."""
    try:
        return parse_uri(rv.source).snapshot_id
    except InvalidInputError:
        return None


def author() -> str:
    env = os.environ.get("MODELKEEP_AUTHOR")
    if env:
        return env
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return ""
