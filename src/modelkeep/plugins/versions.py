"""Opening a version from its ``modelkeep://`` URI alone, for adapters that get nothing else.

MLflow's artifact repositories and fsspec filesystems are constructed from a URI by the host
tool, so they cannot be handed a :class:`~modelkeep.keep.Keep`. This module finds the store the
URI names (with the storage options of the project's configuration when the store is on the same
backend, as :class:`Keep` does) and caches parsed snapshots, which are immutable, by id.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelkeep.config import load_config
from modelkeep.errors import NotFoundError
from modelkeep.store import parse_runs_uri, parse_uri
from modelkeep.store.location import parse_location

if TYPE_CHECKING:
    from modelkeep.store import RunArtifacts, Snapshot, Store
    from modelkeep.store.snapshot import FileEntry

_SNAPSHOTS_KEPT = 64
_lock = threading.Lock()
_stores: dict[str, Store] = {}
_snapshots: OrderedDict[str, Snapshot] = OrderedDict()


@dataclass(frozen=True)
class VersionView:
    """One version's files as seen from a URI: the store, the snapshot and a path inside it."""

    store: Store
    snapshot: Snapshot
    snapshot_id: str
    path: str  # "" for the version's root

    def entry(self, path: str) -> FileEntry:
        found = self.snapshot.file(path)
        if found is None:
            raise NotFoundError(
                f"no file {path!r} in version {self.snapshot.name} ({self.snapshot_id[:12]})",
                hint="list its files with `modelkeep show REF`",
            )
        return found

    def is_dir(self, path: str) -> bool:
        if not path:
            return True
        prefix = path.rstrip("/") + "/"
        return any(f.path.startswith(prefix) for f in self.snapshot.files)

    def children(self, path: str) -> list[tuple[str, FileEntry | None]]:
        """The direct children of folder *path*: ``(relative path, entry or None for a folder)``,
        sorted by path."""
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        seen: dict[str, FileEntry | None] = {}
        for f in self.snapshot.files:
            if not f.path.startswith(prefix):
                continue
            head, sep, _rest = f.path[len(prefix):].partition("/")
            child = prefix + head
            seen[child] = None if sep else f
        return sorted(seen.items())


def store_for(locator: str) -> Store:
    """The store at *locator*, opened as :class:`~modelkeep.keep.Keep` would open it from the
    project's configuration (named stores, the default store's options, plugin options)."""
    with _lock:
        store = _stores.get(locator)
        if store is None:
            from modelkeep.hooks.manager import get_plugin_manager
            from modelkeep.stores import open_locator

            config = load_config()
            default = config.resolve_store(None)
            store = open_locator(
                locator,
                get_plugin_manager(),
                config.stores.values(),
                parse_location(default.url).protocol,
                default.options,
            )
            _stores[locator] = store
        return store


def open_runs(uri: str) -> RunArtifacts | None:
    """The run artifacts a ``modelkeep://LOCATOR/@runs/PREFIX`` URI names, or None if *uri* is
    not a run-artifact URI."""
    parsed = parse_runs_uri(uri)
    if parsed is None:
        return None
    locator, prefix = parsed
    store = store_for(locator)
    store.ensure_initialized()
    return store.runs(prefix)


def open_version(uri: str) -> VersionView:
    """The version a ``modelkeep://`` URI names (snapshot verified and validated on first use)."""
    parsed = parse_uri(uri)
    store = store_for(parsed.locator)
    sid = store.resolve_snapshot_id(parsed.snapshot_id)  # a unique prefix names it too
    with _lock:
        snap = _snapshots.get(sid)
        if snap is not None:
            _snapshots.move_to_end(sid)
    if snap is None:
        snap = store.load_snapshot(sid)
        with _lock:
            _snapshots[sid] = snap
            while len(_snapshots) > _SNAPSHOTS_KEPT:
                _snapshots.popitem(last=False)
    return VersionView(store, snap, sid, (parsed.path or "").strip("/"))
