"""The Python API: :func:`open` and :class:`Keep`, the one orchestrator.

``Keep`` combines a :class:`~modelkeep.store.Store` (content) and a
:class:`~modelkeep.registry.Registry` (catalogue). Registering follows the write order that makes
it crash-safe: chunks, then the snapshot object, then the registry entry; a version is visible only
once its registry entry exists, and by then everything it points at is stored.
"""

from __future__ import annotations

import bisect
import getpass
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelkeep.config import Config, load_config
from modelkeep.errors import InvalidInputError, NotFoundError
from modelkeep.refs import Ref, parse_ref, validate_alias, validate_name
from modelkeep.registry import Registry, RegistryVersion
from modelkeep.store import (
    FileEntry,
    Parent,
    Snapshot,
    SnapshotFile,
    Store,
    VerifyReport,
    parse_uri,
    scan_local,
    utc_now,
)
from modelkeep.store.snapshot import CREATED_FORMAT

Progress = Callable[[int], None]
TAG_PREFIX = "modelkeep."
MAX_TAG_VALUE = 100_000  # MLflow's limit for model-version tag values


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    snapshot_id: str
    uri: str
    created: datetime
    size: int
    files: tuple[FileEntry, ...]
    tags: Mapping[str, str]
    aliases: tuple[str, ...]
    parents: tuple[Parent, ...]
    message: str = ""
    author: str = ""
    bytes_added: int | None = None
    reused: bool = False  # register() returned an existing, identical version

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def user_tags(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if not k.startswith(TAG_PREFIX)}

    @property
    def dedup_ratio(self) -> float | None:
        if self.bytes_added is None or not self.size:
            return None
        return 1.0 - self.bytes_added / self.size

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "snapshot": self.snapshot_id,
            "uri": self.uri,
            "created": self.created.isoformat(),
            "size": self.size,
            "bytes_added": self.bytes_added,
            "dedup_ratio": self.dedup_ratio,
            "reused": self.reused,
            "author": self.author,
            "message": self.message,
            "aliases": list(self.aliases),
            "tags": dict(self.tags),
            "parents": [p.to_json() for p in self.parents],
            "files": [{"path": f.path, "size": f.size, "digest": f.digest,
                       "chunks": len(f.chunks), "tensors": len(f.tensors)
                       if f.tensors is not None else None} for f in self.files],
        }


@dataclass(frozen=True)
class TensorChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: int = 0


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # "added", "removed", "changed"
    size_a: int | None
    size_b: int | None
    tensors: TensorChanges | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "status": self.status,
                                "size_a": self.size_a, "size_b": self.size_b}
        if self.tensors is not None:
            data["tensors"] = {"added": list(self.tensors.added),
                               "removed": list(self.tensors.removed),
                               "changed": list(self.tensors.changed),
                               "unchanged": self.tensors.unchanged}
        return data


@dataclass(frozen=True)
class Diff:
    a: str
    b: str
    files: tuple[FileChange, ...] = field(default_factory=tuple)
    unchanged_files: int = 0

    @property
    def added(self) -> list[str]:
        return [f.path for f in self.files if f.status == "added"]

    @property
    def removed(self) -> list[str]:
        return [f.path for f in self.files if f.status == "removed"]

    @property
    def changed(self) -> list[str]:
        return [f.path for f in self.files if f.status == "changed"]

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "unchanged_files": self.unchanged_files,
                "files": [f.to_json() for f in self.files]}


def open(
    store: str | None = None,
    registry: str | Registry | None = None,
    *,
    store_options: Mapping[str, Any] | None = None,
    config: Config | None = None,
) -> Keep:
    """Open the store and registry named by the arguments, the environment or modelkeep.toml."""
    config = config or load_config()
    options = dict(config.store_options)
    options.update(store_options or {})
    the_store = Store.open(store or config.store, options)
    if isinstance(registry, str) or registry is None:
        from modelkeep.plugins.mlflow import MlflowRegistry

        the_registry: Registry = MlflowRegistry(registry or config.registry)
    else:
        the_registry = registry
    return Keep(the_store, the_registry, store_options=options)


def _author() -> str:
    env = os.environ.get("MODELKEEP_AUTHOR")
    if env:
        return env
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return ""


class Keep:
    """A store and a registry used together."""

    def __init__(
        self, store: Store, registry: Registry, *, store_options: Mapping[str, Any] | None = None
    ) -> None:
        self.store = store
        self.registry = registry
        self._options = dict(store_options or {})
        self._snapshots: dict[str, Snapshot] = {}
        self._stores: dict[str, Store] = {store.location.locator: store}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Keep(store={self.store.url!r}, registry={self.registry.uri!r})"

    # -- resolution ------------------------------------------------------------------------

    def _store_for(self, locator: str) -> Store:
        """The store a version's URI names: ours, or another one reachable with our options."""
        with self._lock:
            store = self._stores.get(locator)
            if store is None:
                same_backend = locator.split("/", 1)[0] == self.store.location.protocol
                store = Store.from_locator(locator, self._options if same_backend else None)
                self._stores[locator] = store
            return store

    def _resolve(self, ref: str | Ref) -> RegistryVersion:
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        if parsed.version is not None:
            return self.registry.get_version(parsed.name, parsed.version)
        if parsed.alias is not None:
            return self.registry.get_by_alias(parsed.name, parsed.alias)
        latest = self.registry.latest(parsed.name)
        if latest is None:
            raise NotFoundError(f"model {parsed.name!r} has no versions",
                                hint="register one with `modelkeep register`")
        return latest

    def _load(self, rv: RegistryVersion) -> tuple[Store, Snapshot, str]:
        try:
            parsed = parse_uri(rv.source)
        except InvalidInputError:
            raise NotFoundError(
                f"{rv.name}@{rv.version} was not registered by modelkeep (source {rv.source!r})"
            ) from None
        store = self._store_for(parsed.locator)
        sid = parsed.snapshot_id
        snap = self._snapshots.get(sid)
        if snap is None:
            snap = store.load_snapshot(sid)
            self._snapshots[sid] = snap
        return store, snap, sid

    def _version(self, rv: RegistryVersion, snap: Snapshot, sid: str) -> ModelVersion:
        added = rv.tags.get(TAG_PREFIX + "bytes_added")
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
        )

    # -- queries ---------------------------------------------------------------------------

    def get(self, ref: str) -> ModelVersion:
        """The version *ref* names (``NAME@3``, ``NAME@alias``, ``NAME@latest`` or ``NAME``)."""
        rv = self._resolve(ref)
        _store, snap, sid = self._load(rv)
        return self._version(rv, snap, sid)

    def snapshot(self, ref: str) -> Snapshot:
        return self._load(self._resolve(ref))[1]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of *name*, oldest first."""
        validate_name(name)

        def load(rv: RegistryVersion) -> ModelVersion | None:
            try:
                _s, snap, sid = self._load(rv)
            except NotFoundError:
                return None  # a version some other tool registered under this name
            return self._version(rv, snap, sid)

        # Snapshots are small but each is a round trip on an object store: fetch them together.
        with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-list") as pool:
            loaded = list(pool.map(load, self.registry.versions(name)))
        return [v for v in loaded if v is not None]

    def models(self) -> list[str]:
        return self.registry.models()

    # -- register --------------------------------------------------------------------------

    def register(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        parents: Sequence[str] = (),
        tags: Mapping[str, str] | None = None,
        aliases: Iterable[str] = (),
        message: str | None = None,
        force: bool = False,
        progress: Progress | None = None,
    ) -> ModelVersion:
        """Store the folder or file at *path* as a new version of *name*.

        Content identical to the newest version returns that version (``reused=True``) unless
        *force*. Nothing becomes visible until every byte is stored.
        """
        validate_name(name)
        aliases = [validate_alias(a) for a in aliases]
        user_tags = _check_tags(tags or {})
        sources = scan_local(path)
        parent_refs = []
        for p in parents:
            pv = self.get(p)
            parent_refs.append(Parent(pv.snapshot_id, pv.name, pv.version))

        files, stats = self.store.ingest(sources, progress)
        snapshot = Snapshot(
            name=name,
            files=files,
            created=utc_now(),
            author=_author(),
            message=message or "",
            parents=tuple(parent_refs),
            tags=user_tags,
        )
        if not force:
            latest = self.registry.latest(name)
            if latest is not None and latest.tags.get(TAG_PREFIX + "tree") == snapshot.tree:
                for alias in aliases:
                    self.registry.set_alias(name, alias, latest.version)
                existing = self.get(f"{name}@{latest.version}")
                return replace(existing, reused=True)

        sid = self.store.save_snapshot(snapshot)
        self._snapshots[sid] = snapshot
        registry_tags = {
            **user_tags,
            TAG_PREFIX + "snapshot": sid,
            TAG_PREFIX + "tree": snapshot.tree,
            TAG_PREFIX + "size": str(stats.bytes_total),
            TAG_PREFIX + "bytes_added": str(stats.bytes_added),
            TAG_PREFIX + "dedup_ratio": f"{stats.dedup_ratio:.4f}",
            TAG_PREFIX + "files": str(stats.files),
        }
        if parent_refs:
            registry_tags[TAG_PREFIX + "parents"] = ",".join(str(p) for p in parent_refs)
        rv = self.registry.create_version(
            name, self.store.uri(sid), tags=registry_tags, description=message or None
        )
        for alias in aliases:
            self.registry.set_alias(name, alias, rv.version)
        if aliases:
            rv = replace(rv, aliases=tuple(sorted(set(rv.aliases) | set(aliases))))
        return self._version(rv, snapshot, sid)

    # -- reading ---------------------------------------------------------------------------

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> Path:
        """Materialise the version's files in folder *dest* (created; must be new or empty unless
        *overwrite*). Every chunk is verified; on any failure *dest* is left untouched."""
        store, snap, _sid = self._load(self._resolve(ref))
        return store.materialize(snap, dest, overwrite=overwrite, progress=progress)

    def open_file(self, ref: str, path: str) -> SnapshotFile:
        """A seekable, read-only binary stream of one file that fetches only the chunks read."""
        store, snap, _sid = self._load(self._resolve(ref))
        return store.open_file(snap, path)

    def diff(self, ref_a: str, ref_b: str) -> Diff:
        """Files added, removed and changed from *ref_a* to *ref_b*, and for safetensors files
        the tensors added, removed and changed (by content, dtype or shape)."""
        a, b = self.snapshot(ref_a), self.snapshot(ref_b)
        fa = {f.path: f for f in a.files}
        fb = {f.path: f for f in b.files}
        changes = []
        unchanged = 0
        for path in sorted(fa.keys() | fb.keys()):
            ea, eb = fa.get(path), fb.get(path)
            if ea is None:
                changes.append(FileChange(path, "added", None, eb.size if eb else None))
            elif eb is None:
                changes.append(FileChange(path, "removed", ea.size, None))
            elif ea.digest != eb.digest or ea.mode != eb.mode:
                tensors = None
                if ea.tensors is not None and eb.tensors is not None:
                    tensors = _tensor_changes(ea, eb)
                changes.append(FileChange(path, "changed", ea.size, eb.size, tensors))
            else:
                unchanged += 1
        return Diff(str(ref_a), str(ref_b), tuple(changes), unchanged)

    def verify(self, ref: str | None = None, progress: Progress | None = None) -> VerifyReport:
        """Fetch and check every chunk of one version, or of every snapshot in the store."""
        if ref is None:
            return self.store.verify(progress=progress)
        rv = self._resolve(ref)
        parsed = parse_uri(rv.source)
        return self._store_for(parsed.locator).verify([parsed.snapshot_id], progress=progress)


def _check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > 250:
            raise InvalidInputError(f"invalid tag key {key!r}", hint="use 1-250 characters")
        if key.startswith(TAG_PREFIX):
            raise InvalidInputError(
                f"tag key {key!r} is reserved", hint=f"keys starting {TAG_PREFIX!r} are modelkeep's"
            )
        value = str(value)
        if len(value) > MAX_TAG_VALUE:
            raise InvalidInputError(f"tag {key!r} is longer than {MAX_TAG_VALUE} characters")
        out[key] = value
    return out


def _chunk_ids_in(entry: FileEntry, start: int, end: int) -> tuple[str, ...]:
    offsets = entry.chunk_offsets()
    first = bisect.bisect_right(offsets, start) - 1
    last = bisect.bisect_left(offsets, end)
    return tuple(cid for cid, _n in entry.chunks[max(first, 0):last])


def _tensor_changes(a: FileEntry, b: FileEntry) -> TensorChanges:
    ta = {t.name: t for t in a.tensors or ()}
    tb = {t.name: t for t in b.tensors or ()}
    changed, unchanged = [], 0
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        same = x.dtype == y.dtype and x.shape == y.shape and (
            x.start == x.end
            or _chunk_ids_in(a, x.start, x.end) == _chunk_ids_in(b, y.start, y.end)
        )
        if same:
            unchanged += 1
        else:
            changed.append(name)
    return TensorChanges(
        added=tuple(sorted(tb.keys() - ta.keys())),
        removed=tuple(sorted(ta.keys() - tb.keys())),
        changed=tuple(changed),
        unchanged=unchanged,
    )


__all__ = ["Diff", "FileChange", "Keep", "ModelVersion", "TensorChanges", "open"]
