"""The Python API: :func:`open` and :class:`Keep`, the one orchestrator.

``Keep`` combines a :class:`~modelkeep.store.Store` (content) and a
:class:`~modelkeep.registry.Registry` (catalogue), and calls the plugin hooks
(:mod:`modelkeep.hooks.specs`) around what it does. Registering follows the write order that makes
it crash-safe: chunks, then the snapshot object, then the registry entry; a version is visible only
once its registry entry exists, and by then everything it points at is stored. Every veto (a
validator, an alias pre-check) is asked before the snapshot is written, so a refusal leaves only
unreferenced chunks behind, as a crash would.
"""

from __future__ import annotations

import bisect
import getpass
import io
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep import aliases as aliases_mod
from modelkeep import rebuild as rebuild_mod
from modelkeep.config import Config, StoreConfig, load_config
from modelkeep.errors import (
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PluginError,
    RegistryError,
    RegistryPermissionError,
    SourceError,
    StoreError,
    VetoError,
)
from modelkeep.hooks import Finding
from modelkeep.policy.rules import Policies
from modelkeep.rebuild import RebuildReport
from modelkeep.refs import Ref, parse_ref, validate_alias, validate_name
from modelkeep.registry import Registry, RegistryModel, RegistryVersion
from modelkeep.signing import SIGNING_KEY_ENV, SIGNING_KEY_OPTION
from modelkeep.store import (
    FileEntry,
    GcReport,
    IngestStats,
    JournalEntry,
    Parent,
    Snapshot,
    SnapshotFile,
    SourceFile,
    Store,
    SyncReport,
    Tensor,
    VerifyReport,
    parse_uri,
    scan_local,
    utc_now,
)
from modelkeep.store.codec import Kind
from modelkeep.store.gc import ChunksCollectedError
from modelkeep.store.location import location_from_locator, parse_location
from modelkeep.store.snapshot import CREATED_FORMAT

if TYPE_CHECKING:
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.signing import SignatureStatus, Signer
    from modelkeep.training import PendingCheckpoint, Tracker

Progress = Callable[[int], None]
TAG_PREFIX = "modelkeep."
MAX_TAG_VALUE = 100_000  # MLflow's limit for model-version tag values
MAX_DESCRIPTION = 5000  # MLflow's description columns are VARCHAR(5000) on PostgreSQL and MySQL
_GC_RETRIES = 3  # a register overlapping two collections that removed its chunks stores again
# Reserved tags a plugin may set from modelkeep_collect_metadata (the key and its dotted
# children): the scan summary (modelkeep.plugins.scanner). Every other ``modelkeep.`` key is
# modelkeep's own.
PLUGIN_TAG_PREFIXES = ("modelkeep.scan",)


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
    lineage: Mapping[str, Any] = field(default_factory=dict)  # the snapshot's, see docs/format.md

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
            "lineage": dict(self.lineage),
            "files": [{"path": f.path, "size": f.size, "digest": f.digest,
                       "chunks": len(f.chunks), "tensors": len(f.tensors)
                       if f.tensors is not None else None} for f in self.files],
        }


@dataclass(frozen=True)
class DeletedVersion:
    """What :meth:`Keep.delete_version` removed."""

    name: str
    version: int
    snapshot_id: str
    snapshot_deleted: bool  # False when other versions still use the snapshot
    shared_with: tuple[str, ...] = ()  # those versions (``NAME@N``)
    aliases_deleted: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "version": self.version,
                "snapshot": self.snapshot_id, "snapshot_deleted": self.snapshot_deleted,
                "shared_with": list(self.shared_with),
                "aliases_deleted": list(self.aliases_deleted)}


@dataclass(frozen=True)
class _StoredSource:
    """A stored file presented to scanners like a file being registered."""

    relpath: str
    size: int
    open: Callable[[], Any]


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
    plugins: PluginManager | None = None,
    signing_key: str | os.PathLike[str] | None = None,
) -> Keep:
    """Open the store and registry named by the arguments, the environment or modelkeep.toml.

    *store* is a store name from ``[stores.NAME]`` or a URL; *plugins* a plugin manager
    (default: the process-wide one, with the plugins ``MODELKEEP_PLUGINS`` selects);
    *signing_key* the Ed25519 private key file that signs every snapshot written (default:
    ``MODELKEEP_SIGNING_KEY``, else the store option ``signing_key``; see
    :mod:`modelkeep.signing`).
    """
    from modelkeep.hooks.manager import get_plugin_manager

    config = config or load_config()
    pm = plugins if plugins is not None else get_plugin_manager()
    the_store, options, option_key = _open_store(config, pm, store, store_options)
    signing_key = signing_key or os.environ.get(SIGNING_KEY_ENV) or option_key
    if isinstance(registry, str) or registry is None:
        uri = registry or config.registry
        the_registry: Registry | None = pm.hook.modelkeep_registry(uri=uri)
        if the_registry is None:
            raise PluginError(f"no plugin provides a registry for {uri or 'the default URI'!r}",
                              hint="unblock modelkeep.mlflow in MODELKEEP_PLUGINS, or install "
                              "the plugin for this registry")
    else:
        the_registry = registry
    return Keep(the_store, the_registry, store_options=options, plugins=pm,
                named_stores=config.stores.values(), config=config,
                signing_key=signing_key, policies=config.policy_set)


def open_store(
    store: str | None = None,
    *,
    store_options: Mapping[str, Any] | None = None,
    config: Config | None = None,
    plugins: PluginManager | None = None,
) -> Store:
    """The store :func:`open` would use, without a registry (for store maintenance such as key
    rotation): the same settings, plugin storage options and key sources."""
    from modelkeep.hooks.manager import get_plugin_manager

    pm = plugins if plugins is not None else get_plugin_manager()
    return _open_store(config or load_config(), pm, store, store_options)[0]


def _open_store(
    config: Config, pm: PluginManager, store: str | None, store_options: Mapping[str, Any] | None
) -> tuple[Store, dict[str, Any], str | None]:
    """The store, its filesystem options, and the signing key named in them (modelkeep's
    option, never passed to the filesystem)."""
    choice = config.resolve_store(store)
    options = _merge_options(choice.options, store_options or {})
    location = parse_location(choice.url)
    options = _plugin_options(pm, location.protocol, choice.url, choice.name, options)
    option_key = options.pop(SIGNING_KEY_OPTION, None)
    the_store = Store.open(choice.url, options, keys=hook_keys(pm, choice.url, choice.name))
    return the_store, options, option_key


def _merge_options(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """*over* wins; nested tables (``client_kwargs``) are merged one level deep."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _plugin_options(
    pm: PluginManager, protocol: str, url: str, name: str | None, explicit: Mapping[str, Any]
) -> dict[str, Any]:
    """Storage options from plugins under the explicit ones; the first plugin answering wins."""
    merged: dict[str, Any] = {}
    for answer in reversed(pm.hook.modelkeep_storage_options(
            protocol=protocol, url=url, store_name=name)):
        merged = _merge_options(merged, answer)
    return _merge_options(merged, explicit)


def open_locator(
    locator: str,
    plugins: PluginManager,
    named_stores: Iterable[StoreConfig],
    default_protocol: str,
    default_options: Mapping[str, Any],
) -> Store:
    """The store at *locator* (from a version's URI), opened with the options of the configured
    store it is, else the default store's options when on the same backend, under the options
    plugins provide."""
    protocol = locator.split("/", 1)[0]
    named = _named_store(named_stores, locator)
    if named is not None:
        url, name, explicit = named.url, named.name, named.options
    else:
        url, name = location_from_locator(locator).url, None
        explicit = default_options if protocol == default_protocol else {}
    options = _plugin_options(plugins, protocol, url, name, explicit)
    options.pop(SIGNING_KEY_OPTION, None)  # modelkeep's, not the filesystem's
    return Store.from_locator(locator, options, keys=hook_keys(plugins, url, name))


def hook_keys(
    pm: PluginManager, url: str, name: str | None
) -> Callable[[], list[tuple[bytes, str]]]:
    """The keys ``modelkeep_provide_keys`` offers for a store, asked only when the store turns
    out to be encrypted (a KMS call costs time, and plain stores never need it)."""

    def ask() -> list[tuple[bytes, str]]:
        answer = pm.hook.modelkeep_provide_keys(url=url, store_name=name)
        if not answer:
            return []
        if not isinstance(answer, Mapping):
            raise PluginError("a modelkeep_provide_keys plugin returned something other than "
                              "a mapping of key id to key", hint="return {key_id: key_bytes}")
        return [(key, f"key provider key {str(kid)[:64]!r}") for kid, key in answer.items()]

    return ask


def _named_store(named_stores: Iterable[StoreConfig], locator: str) -> StoreConfig | None:
    for named in named_stores:
        try:
            if parse_location(named.url).locator == locator:
                return named
        except StoreError:
            continue  # a bad URL in a store not in use; it reports itself when used
    return None


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
        self,
        store: Store,
        registry: Registry,
        *,
        store_options: Mapping[str, Any] | None = None,
        plugins: PluginManager | None = None,
        named_stores: Iterable[StoreConfig] = (),
        config: Config | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        policies: Policies | None = None,
    ) -> None:
        """*named_stores* are the configured stores, whose options are used to read a version
        that lives in one of them (a copy, or a version registered through another store), and
        to open the destination of :meth:`sync`. *config* is the configuration plugins read
        (default: none). *signing_key* is a private key file: every snapshot this Keep writes
        is signed. *policies* are the ``[policies]`` rules (default: none)."""
        if plugins is None:
            from modelkeep.hooks.manager import get_plugin_manager

            plugins = get_plugin_manager()
        self.store = store
        self.registry = registry
        self.plugins = plugins
        self.hook = plugins.hook
        self._options = dict(store_options or {})
        self._named = tuple(named_stores)
        if config is None:
            config = Config(root=Path.cwd(), store=store.url, registry=registry.uri,
                            stores={n.name: n for n in self._named})
        self.config = config
        self.policies = policies if policies is not None else Policies()
        self._snapshots: dict[str, Snapshot] = {}
        self._stores: dict[str, Store] = {store.location.locator: store}
        self._lock = threading.Lock()
        self._trackers: dict[str, Tracker] = {}  # the ones checkpoint() made, by model name
        self.signing_key = signing_key
        self._signer: Signer | None = None

    def __repr__(self) -> str:
        from modelkeep.config import redact_url

        return redact_url(f"Keep(store={self.store.url!r}, registry={self.registry.uri!r})")

    # -- resolution ------------------------------------------------------------------------

    def _store_for(self, locator: str) -> Store:
        """The store a version's URI names: ours, or another one reachable with our options."""
        with self._lock:
            store = self._stores.get(locator)
            if store is None:
                store = open_locator(
                    locator, self.plugins, self._named, self.store.location.protocol, self._options
                )
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
            lineage=snap.lineage,
        )

    # -- queries ---------------------------------------------------------------------------

    def get(self, ref: str) -> ModelVersion:
        """The version *ref* names (``NAME@3``, ``NAME@alias``, ``NAME@latest`` or ``NAME``)."""
        rv = self._resolve(ref)
        _store, snap, sid = self._load(rv)
        return self._version(rv, snap, sid)

    def snapshot(self, ref: str) -> Snapshot:
        return self._load(self._resolve(ref))[1]

    def snapshot_at(self, uri: str) -> tuple[Store, Snapshot]:
        """The store and snapshot a ``modelkeep://`` URI names, without asking the registry
        (pointer files carry URIs, and must resolve even where the registry was rebuilt)."""
        parsed = parse_uri(uri)
        store = self._store_for(parsed.locator)
        snap = self._snapshots.get(parsed.snapshot_id)
        if snap is None:
            snap = store.load_snapshot(parsed.snapshot_id)
            self._snapshots[parsed.snapshot_id] = snap
        return store, snap

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
        sources: Sequence[SourceFile] | None = None,
        lineage: Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Store the folder or file at *path* as a new version of *name*.

        *path* is a local path or any fsspec URL (``s3://…``, ``az://…``, ``memory://…``, read
        with *storage_options*), streamed into the store without a local copy. *sources*, when
        given, are the files to store instead (e.g. from :mod:`modelkeep.sources`), *path* then
        only naming where they came from. *lineage* sections win over what the
        ``modelkeep_collect_lineage`` plugins record.

        Content identical to the newest version returns that version (``reused=True``) unless
        *force*. Nothing becomes visible until every byte is stored and every plugin accepted
        the version and its *aliases* (else :class:`~modelkeep.errors.VetoError`). *run_id*
        links the version to the MLflow run that produced it.
        """
        from modelkeep.sources import is_url, scan_url

        validate_name(name)
        aliases = [validate_alias(a) for a in aliases]
        user_tags = _check_tags(tags or {})
        signer = self.signer()  # a bad key fails here, before anything is stored
        source: Path | str
        if isinstance(path, str) and is_url(path):
            source, repo_dir = path, Path.cwd()
        else:
            source = Path(path)
            repo_dir = source if source.is_dir() else source.parent
        if sources is None:
            sources = (scan_url(path, storage_options) if isinstance(source, str)
                       else scan_local(source))
        sources = list(sources)
        findings = self._scan(name, sources)
        parent_refs = []
        for p in parents:
            pv = self.get(p)
            parent_refs.append(Parent(pv.snapshot_id, pv.name, pv.version))

        files, stats = self.store.ingest(sources, progress,
                                         parent=self._delta_parent(name, parent_refs))
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
                    self._check_alias(name, alias, latest.version, latest.tags, registering=False)
                for alias in aliases:
                    self._move_alias(name, alias, latest.version,
                                     snapshot_id=_snapshot_of(latest))
                existing = self.get(f"{name}@{latest.version}")
                return replace(existing, reused=True)

        snapshot = replace(snapshot, lineage=self._collect_lineage(
            name, source, repo_dir, lineage or {}))
        snapshot = replace(snapshot, tags=self._collect_tags(name, source, snapshot, findings))
        self._validate(name, snapshot, findings)
        for alias in aliases:
            self._check_alias(name, alias, None, snapshot.tags, registering=True)

        sid = self.store.snapshot_id(snapshot)
        registry_tags = {
            **snapshot.tags,
            TAG_PREFIX + "snapshot": sid,
            TAG_PREFIX + "tree": snapshot.tree,
            TAG_PREFIX + "size": str(stats.bytes_total),
            TAG_PREFIX + "bytes_added": str(stats.bytes_added),
            TAG_PREFIX + "dedup_ratio": f"{stats.dedup_ratio:.4f}",
            TAG_PREFIX + "files": str(stats.files),
            **lineage_tags(snapshot.lineage),
        }
        if parent_refs:
            registry_tags[TAG_PREFIX + "parents"] = ",".join(str(p) for p in parent_refs)
        # Only passed when set, so a Registry without run links still works.
        link: dict[str, Any] = {}
        if run_id:
            registry_tags[TAG_PREFIX + "run_id"] = run_id
            link["run_id"] = run_id
        self.hook.modelkeep_before_register(
            name=name, snapshot=snapshot, tags=registry_tags, keep=self)

        sid = self._save_snapshot(snapshot, stats, sources)
        # Write order: the signature after the snapshot it signs, before the registry entry.
        if signer is not None:
            signer.sign(self.store, sid)
        self._snapshots[sid] = snapshot
        rv = self.registry.create_version(
            name, self.store.uri(sid), tags=registry_tags, description=message or None, **link
        )
        for alias in aliases:
            self._move_alias(name, alias, rv.version, snapshot_id=sid)
        if aliases:
            rv = replace(rv, aliases=tuple(sorted(set(rv.aliases) | set(aliases))))
        version = self._version(rv, snapshot, sid)
        self.hook.modelkeep_after_register(version=version, keep=self, source=source)
        return version

    def _delta_parent(self, name: str, parents: Sequence[Parent]) -> Snapshot | None:
        """The snapshot whose chunks a new version's changed tensors are coded against: the
        first parent given, else the model's newest version (a checkpoint after the last)."""
        if parents:
            sid = parents[0].snapshot
        else:
            latest = self.registry.latest(name)
            sid = _snapshot_of(latest) if latest is not None else None
        if not sid:
            return None
        try:
            return self._snapshots.get(sid) or self.store.load_snapshot(sid)
        except (NotFoundError, IntegrityError):
            return None  # in another store, or damaged: the version is stored without deltas

    def _save_snapshot(
        self, snapshot: Snapshot, stats: IngestStats, sources: Sequence[SourceFile]
    ) -> str:
        """Write the snapshot; if a garbage collection removed chunks the ingest had found
        present (docs/format.md §13), store the sources again and retry, a few times."""
        for attempt in range(_GC_RETRIES):
            try:
                return self.store.save_snapshot(snapshot, since=stats.gc_mark)
            except ChunksCollectedError:
                if attempt == _GC_RETRIES - 1:
                    raise
                files, stats = self.store.ingest(list(sources))
                if files != snapshot.files:
                    raise SourceError("the files changed while being registered",
                                      hint="register them again once nothing writes them"
                                      ) from None
        raise AssertionError("unreachable")

    # -- hooks around register -------------------------------------------------------------

    def _scan(self, name: str, sources: Sequence[Any]) -> list[Finding]:
        caller = self.hook.modelkeep_scan_file
        if not caller.get_hookimpls():  # spare a call per file when no scanner is installed
            return []
        findings: list[Finding] = []
        for src in sources:
            for answer in caller(name=name, path=src.relpath, size=src.size, opener=src.open):
                findings.extend(answer or ())
        for f in findings:
            if not isinstance(f, Finding):
                raise InvalidInputError(f"a scanner returned {f!r}, not a Finding",
                                        hint="return modelkeep.hooks.Finding objects")
        return findings

    def scan(self, ref: str) -> list[Finding]:
        """The findings of every ``modelkeep_scan_file`` plugin over a registered version's
        files, read through the store (only the chunks a scanner reads are fetched): what a
        register of the same files would get, without trusting the version's tags."""
        rv = self._resolve(ref)
        store, snap, _sid = self._load(rv)
        return self._scan_stored(rv.name, store, snap)

    def _scan_stored(self, name: str, store: Store, snap: Snapshot) -> list[Finding]:
        # Buffered: scanners read small pieces (pickle opcodes), each a call into the store.
        sources = [_StoredSource(f.path, f.size,
                                 lambda f=f: io.BufferedReader(  # type: ignore[misc]
                                     store.open_file(snap, f.path), 1 << 20))
                   for f in snap.files]
        return self._scan(name, sources)

    def _collect_lineage(
        self, name: str, source: Path | str, repo_dir: Path, given: Mapping[str, Any]
    ) -> dict[str, Any]:
        collected: dict[str, Any] = {}
        for answer in reversed(self.hook.modelkeep_collect_lineage(
                name=name, source=source, repo_dir=repo_dir, keep=self)):
            collected.update(answer or {})
        collected.update(given)
        return _check_lineage(collected)

    def _collect_tags(self, name: str, source: Path | str, snapshot: Snapshot,
                      findings: Sequence[Finding] = ()) -> dict[str, str]:
        collected: dict[str, str] = {}
        for answer in reversed(self.hook.modelkeep_collect_metadata(
                name=name, source=source, snapshot=snapshot, keep=self,
                findings=tuple(findings))):
            collected.update(answer or {})
        reserved = {k: v for k, v in collected.items() if isinstance(k, str) and any(
            k == p or k.startswith(p + ".") for p in PLUGIN_TAG_PREFIXES)}
        plain = {k: v for k, v in collected.items() if k not in reserved}
        # The caller's own tags win over what plugins suggest.
        return {**_check_tags({**plain, **snapshot.tags}), **_check_tags(reserved, reserved=True)}

    def _validate(self, name: str, snapshot: Snapshot, findings: Sequence[Finding]) -> None:
        reasons = [str(r) for r in self.hook.modelkeep_validate_version(
            name=name, snapshot=snapshot, findings=tuple(findings), keep=self) if r]
        if reasons:
            raise VetoError(f"{name}: new version refused: {'; '.join(reasons)}",
                            reasons=reasons, hint="nothing was registered")

    def _alias_target(self, name: str, alias: str) -> int | None:
        try:
            return self.registry.get_by_alias(name, alias).version
        except NotFoundError:
            return None
        except RegistryPermissionError:
            # MLflow's basic auth refuses reads of a model that does not exist yet (no
            # permission row): the first register with an alias. A user who really may not read
            # the model may not move its aliases either, and the move itself reports that.
            return None

    def _check_alias(
        self, name: str, alias: str, version: int | None, tags: Mapping[str, str], *,
        registering: bool, action: str = "set", model: RegistryModel | None = None,
    ) -> None:
        """Ask every plugin whether *alias* may point at *version* (None: the new version, or
        no version when *action* is ``delete``); *model*, when given, says where it points now."""
        caller = self.hook.modelkeep_before_alias_change
        if not caller.get_hookimpls():
            return
        previous = model.aliases.get(alias) if model else self._alias_target(name, alias)
        answers = caller(name=name, alias=alias, version=version, tags=dict(tags),
                         previous=previous, action=action, keep=self)
        reasons = [str(r) for r in answers if r]
        if reasons:
            if action == "delete":
                what = f"deleting alias {alias!r} of {name}"
            else:
                target = (f"{name}@{version}" if version is not None
                          else f"the new version of {name}")
                what = f"alias {alias!r} on {target}"
            raise VetoError(
                f"{what} refused: {'; '.join(reasons)}", reasons=reasons,
                hint="nothing was registered" if registering else "the alias was not moved",
            )

    def _journal(self, name: str, op: str, data: Mapping[str, Any], author: str) -> JournalEntry:
        """Record a catalogue change in the store before the registry makes it, so a rebuild
        can replay it (docs/format.md §10.4)."""
        return self.store.journal_append(name, op, data, author=author)

    @contextmanager
    def _journaled(self, entry: JournalEntry) -> Iterator[None]:
        """Make the registry change *entry* records; if the registry refuses it, record that
        the change did not happen. A crash in between leaves the entry standing: a rebuild then
        makes the change, as a redo log would (docs/format.md §10.4)."""
        try:
            yield
        except Exception:
            # If the cancel cannot be written either, the registry's error is the one to report.
            with suppress(Exception):
                self.store.journal_append(entry.name, rebuild_mod.OP_CANCEL,
                                          {"cancels": entry.id}, author=entry.author)
            raise

    def _move_alias(
        self, name: str, alias: str, version: int | None, action: str = "set", *,
        snapshot_id: str | None = None, model: RegistryModel | None = None,
    ) -> None:
        """Point *alias* at *version* (already checked; its snapshot is *snapshot_id*), or delete
        it when *version* is None; journal the change, record it in the alias history and tell
        the plugins. *model* is the model as read for the check, if it was."""
        model = model or self.registry.get_model(name)
        previous = model.aliases.get(alias)

        def change() -> None:
            if version is None:
                self.registry.delete_alias(name, alias)
            else:
                self.registry.set_alias(name, alias, version)

        self._record_alias(name, alias, version, previous, action, model.tags,
                           snapshot_id=snapshot_id, change=change)

    def _record_alias(
        self, name: str, alias: str, version: int | None, previous: int | None, action: str,
        model_tags: Mapping[str, str] | None = None, *, snapshot_id: str | None = None,
        change: Callable[[], None] | None = None,
    ) -> None:
        """Journal an alias change, make it in the registry (*change*; None when the registry
        has made it already, as deleting a version does), record it in the alias history and
        tell the plugins. *model_tags* are the model's tags from before the change (read again
        when None)."""
        # Setting an alias where it already points changes nothing, and records nothing.
        if previous != version or action != "set":
            author = _author()
            entry = self._journal(name, rebuild_mod.OP_ALIAS, {
                "alias": alias, "action": action, "version": version,
                "snapshot": snapshot_id if version is not None else None}, author)
            # One time for the journal and the history, so a rebuild reproduces the history.
            event = aliases_mod.AliasEvent(alias, version, entry.time[:19] + "Z", author, action)
            if change is not None:
                with self._journaled(entry):
                    change()
            key = aliases_mod.HISTORY_TAG + alias
            if model_tags is None:
                model_tags = self.registry.get_model(name).tags
            events = aliases_mod.decode(alias, model_tags.get(key))
            events.append(event)
            self.registry.set_model_tag(name, key, aliases_mod.encode(events))
        caller = self.hook.modelkeep_after_alias_change
        if caller.get_hookimpls():
            caller(name=name, alias=alias, version=version, previous=previous, action=action,
                   keep=self)

    # -- aliases, descriptions, promotion ----------------------------------------------------

    def set_alias(self, ref: str | ModelVersion, alias: str) -> ModelVersion:
        """Point *alias* at the version *ref* names, once every plugin accepts it.

        *ref* may also be a :class:`ModelVersion` this Keep returned (training retention does
        that): the same checks, journal entry and history, without resolving it again.
        """
        alias = validate_alias(alias)
        if isinstance(ref, ModelVersion):
            name, number, tags, sid = ref.name, ref.version, ref.tags, ref.snapshot_id
        else:
            rv = self._resolve(ref)
            name, number, tags, sid = rv.name, rv.version, rv.tags, _snapshot_of(rv)
        model = self.registry.get_model(name)
        self._check_alias(name, alias, number, tags, registering=False, model=model)
        self._move_alias(name, alias, number, snapshot_id=sid, model=model)
        if isinstance(ref, ModelVersion):
            return replace(ref, aliases=tuple(sorted({*ref.aliases, alias})))
        return self.get(f"{name}@{number}")

    def delete_alias(self, name: str, alias: str) -> int:
        """Remove *alias* from model *name*; returns the version it pointed at."""
        validate_name(name)
        alias = validate_alias(alias)
        rv = self.registry.get_by_alias(name, alias)
        self._check_alias(name, alias, None, rv.tags, registering=False, action="delete")
        self._move_alias(name, alias, None, action="delete")
        return rv.version

    def rollback(self, name: str, alias: str, to: int | None = None) -> ModelVersion:
        """Move *alias* back to the version it pointed at before (or to version *to*).

        Repeated rollbacks walk further back through the alias history
        (:mod:`modelkeep.aliases`); the plugins are asked as for any alias change.
        """
        validate_name(name)
        alias = validate_alias(alias)
        model = self.registry.get_model(name)
        current = model.aliases.get(alias)
        if to is None:
            events = aliases_mod.decode(alias, model.tags.get(aliases_mod.HISTORY_TAG + alias))
            to = aliases_mod.rollback_target(events, current)
            if to is None:
                raise NotFoundError(
                    f"alias {alias!r} of {name} has no earlier version to go back to",
                    hint=f"see its history with `modelkeep log {name}`, or pass --to VERSION")
        rv = self.registry.get_version(name, to)
        self._check_alias(name, alias, rv.version, rv.tags, registering=False, action="rollback",
                          model=model)
        self._move_alias(name, alias, rv.version, action="rollback",
                         snapshot_id=_snapshot_of(rv), model=model)
        return self.get(f"{name}@{rv.version}")

    def alias_history(self, name: str) -> list[aliases_mod.AliasEvent]:
        """Every recorded change of every alias of *name*, oldest first."""
        validate_name(name)
        return aliases_mod.history(self.registry.get_model(name).tags)

    def describe(self, target: str, text: str) -> None:
        """Set the description of a version (``NAME@REF``) or of a model (``NAME``); journaled
        first, so a registry rebuild restores it."""
        if len(text) > MAX_DESCRIPTION:
            raise InvalidInputError(f"description is longer than {MAX_DESCRIPTION} characters")
        if "@" in target:
            rv = self._resolve(target)
            name, version, sid = rv.name, rv.version, _snapshot_of(rv)
        else:
            name, version, sid = validate_name(target), None, None
            self.registry.get_model(name)
        entry = self._journal(name, rebuild_mod.OP_DESCRIPTION,
                              {"version": version, "snapshot": sid, "text": text}, _author())
        with self._journaled(entry):
            self.registry.set_description(name, version, text)

    def description(self, target: str) -> str:
        """The description of a version (``NAME@REF``) or of a model (``NAME``)."""
        if "@" in target:
            return self._resolve(target).description
        return self.registry.get_model(validate_name(target)).description

    def promote(
        self,
        ref: str,
        to_name: str,
        *,
        aliases: Iterable[str] = (),
        message: str | None = None,
        force: bool = False,
    ) -> ModelVersion:
        """Register the version *ref* names as a new version of model *to_name*, copying no
        file bytes.

        The new version gets a snapshot of its own, with the same files (the same chunks) and
        user tags, *to_name* as its name and the promoted version as its parent: one small
        object in the store the source lives in, so that the store alone still says which
        models hold which versions (``registry rebuild``). Validators and alias pre-checks are
        asked as for ``register``; when the newest version of *to_name* already has identical
        content, that version is returned (``reused=True``) unless *force*.
        """
        validate_name(to_name)
        aliases = [validate_alias(a) for a in aliases]
        signer = self.signer()
        src_rv = self._resolve(ref)
        store, src, src_sid = self._load(src_rv)
        # Before the chunks are relied on: the commit check compares it (docs/format.md §13).
        mark = store.gc_mark()
        if not force:
            latest = self.registry.latest(to_name)
            if latest is not None and latest.tags.get(TAG_PREFIX + "tree") == src.tree:
                for alias in aliases:
                    self._check_alias(to_name, alias, latest.version, latest.tags,
                                      registering=False)
                for alias in aliases:
                    self._move_alias(to_name, alias, latest.version,
                                     snapshot_id=_snapshot_of(latest))
                return replace(self.get(f"{to_name}@{latest.version}"), reused=True)
        snapshot = replace(
            src, name=to_name, created=utc_now(), author=_author(),
            message=src.message if message is None else message,
            parents=(Parent(src_sid, src_rv.name, src_rv.version),),
        )
        # Scanners see the promoted files, read from the store, as they would at register: the
        # target model's policies may be stricter than the source's.
        self._validate(to_name, snapshot, self._scan_stored(to_name, store, snapshot))
        for alias in aliases:
            self._check_alias(to_name, alias, None, snapshot.tags, registering=True)
        registry_tags = {
            **src_rv.tags,
            TAG_PREFIX + "tree": snapshot.tree,
            TAG_PREFIX + "size": str(snapshot.size),
            TAG_PREFIX + "bytes_added": "0",
            TAG_PREFIX + "dedup_ratio": "1.0000",
            TAG_PREFIX + "files": str(len(snapshot.files)),
            TAG_PREFIX + "parents": f"{src_rv.name}@{src_rv.version}",
        }
        registry_tags[TAG_PREFIX + "snapshot"] = store.snapshot_id(snapshot)
        self.hook.modelkeep_before_register(
            name=to_name, snapshot=snapshot, tags=registry_tags, keep=self)
        sid = store.save_snapshot(snapshot, since=mark)
        if signer is not None:
            signer.sign(store, sid)
        self._snapshots[sid] = snapshot
        rv = self.registry.create_version(
            to_name, store.uri(sid), tags=registry_tags, description=snapshot.message or None)
        for alias in aliases:
            self._move_alias(to_name, alias, rv.version, snapshot_id=sid)
        if aliases:
            rv = replace(rv, aliases=tuple(sorted(set(rv.aliases) | set(aliases))))
        version = replace(self._version(rv, snapshot, sid), bytes_added=0)
        # The source of a promotion is the promoted version, read through its URI.
        self.hook.modelkeep_after_register(version=version, keep=self, source=src_rv.source)
        return version

    # -- replication and garbage collection ------------------------------------------------

    def open_store(self, store: str) -> Store:
        """A store by its name in ``[stores.NAME]``, or by URL; a URL on the default store's
        backend gets the default store's options. Plugins' storage options apply as usual."""
        named = next((n for n in self._named if n.name == store), None)
        if named is None and "://" not in store and "/" not in store and not store.startswith("."):
            # A bare word is a store name; taking a typo for a new folder would copy there.
            known = ", ".join(sorted(n.name for n in self._named)) or "none"
            raise InvalidInputError(f"no store named {store!r}",
                                    hint=f"configured stores: {known}; or pass a URL or path")
        # Opened like any store a version names: its configured options, plugin options, keys.
        return self._store_for(parse_location(named.url if named else store).locator)

    def _sync_plan(self, refs: Sequence[str] | None) -> dict[str, list[str]]:
        """{source store locator: snapshot ids} of the versions *refs* name (default: every
        version of every model stored in this Keep's store), oldest first."""
        rvs: list[RegistryVersion] = []
        if refs is None:
            for model in self.registry.models():
                rvs.extend(self.registry.versions(model))
        else:
            for ref in refs:
                parsed = parse_ref(ref)
                if parsed.version is None and parsed.alias is None and "@" not in ref:
                    rvs.extend(self.registry.versions(validate_name(parsed.name)))
                else:
                    rvs.append(self._resolve(parsed))
        plan: dict[str, list[str]] = {}
        for rv in rvs:
            try:
                parsed_uri = parse_uri(rv.source)
            except InvalidInputError:
                continue  # a version another tool registered: no snapshot to copy
            if refs is None and parsed_uri.locator != self.store.location.locator:
                continue  # the registry may list versions of other stores too
            ids = plan.setdefault(parsed_uri.locator, [])
            if parsed_uri.snapshot_id not in ids:
                ids.append(parsed_uri.snapshot_id)
        return plan

    def sync(
        self,
        to: str | Store,
        refs: Sequence[str] | None = None,
        *,
        dry_run: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Copy versions to the store *to* (a ``[stores.NAME]`` name, a URL, or a
        :class:`~modelkeep.store.Store`), sending only the chunks it lacks; resumable, and never
        leaving a copied snapshot without its chunks (:mod:`modelkeep.store.sync`).

        *refs* are ``NAME@REF`` (one version) or ``NAME`` (every version of it), copied from
        whichever store each lives in; default: every version of every model that lives in this
        Keep's store. Versions already in *to* are counted as present.
        """
        dest = to if isinstance(to, Store) else self.open_store(to)
        if dest.location.locator == self.store.location.locator:
            raise StoreError(f"the destination is this store ({dest.url})",
                             hint="name another store with --to")
        plan = self._sync_plan(refs)
        total = SyncReport(self.store.url, dest.url, dry_run)
        for locator, ids in plan.items():
            if locator == dest.location.locator:
                total.snapshots += len(ids)
                total.snapshots_present += len(ids)
                continue
            report = self._store_for(locator).sync_to(
                dest, ids, dry_run=dry_run, workers=workers, progress=progress)
            for key in ("snapshots", "snapshots_copied", "snapshots_present", "chunks_copied",
                        "chunks_present", "bytes_copied", "bytes_present"):
                setattr(total, key, getattr(total, key) + getattr(report, key))
            total.copied.extend(report.copied)
        return total

    def sync_size(self, to: str | Store, refs: Sequence[str] | None = None) -> int:
        """Bytes :meth:`sync` will report progress for: the distinct chunks of the versions
        that *to* does not hold yet (for a progress bar)."""
        dest = to if isinstance(to, Store) else self.open_store(to)
        sizes: dict[str, int] = {}
        for locator, ids in self._sync_plan(refs).items():
            if locator == dest.location.locator:
                continue
            store = self._store_for(locator)
            for sid in ids:
                if dest.db.exists(Kind.SNAPSHOT, sid):
                    continue
                for entry in store.load_snapshot(sid).files:
                    sizes.update(entry.chunks)
        return sum(sizes.values())

    def gc(
        self,
        *,
        grace: timedelta = timedelta(hours=1),
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> GcReport:
        """Collect garbage in this Keep's store: chunks no snapshot and no run manifest uses,
        older than *grace*, in two phases (:mod:`modelkeep.store.gc`), safe while other
        processes register. Versions that retention allows to go are deleted first (registry
        entry, then snapshot), so that their chunks become unreferenced; in a dry run their
        snapshots are passed as ``ignore_snapshots`` instead, so the report shows what they
        would free. The report's ``deleted_snapshots`` lists them."""
        from modelkeep.policy import apply_retention

        retention = apply_retention(self, dry_run=dry_run)
        if dry_run:
            deleted = [item.snapshot_id for item in retention.to_delete]
        else:
            deleted = [d.snapshot_id for d in retention.deleted if d.snapshot_deleted]
        report = self.store.gc(grace=grace, dry_run=dry_run, progress=progress,
                               ignore_snapshots=deleted if dry_run else ())
        report.deleted_snapshots = deleted
        gone = {(d.name, d.version) for d in retention.deleted}
        failed = dict(retention.failed)
        report.versions = [
            {**item.to_json(), "deleted": (item.name, item.version) in gone}
            for item in retention.to_delete if item.ref not in failed
        ] + [{"ref": ref, "error": error} for ref, error in failed.items()]
        return report

    # -- deleting --------------------------------------------------------------------------

    def delete_version(self, ref: str) -> DeletedVersion:
        """Delete the registry version *ref* names, and its snapshot object from the store when
        no other registered version (of any model) points at the same snapshot.

        An aliased version is refused (:class:`~modelkeep.errors.VetoError`) while its model's
        policy is ``immutable`` (the default); otherwise its aliases go with it, asked of the
        alias hooks and recorded in the alias history like ``modelkeep alias --delete``. The
        chunks only this version used stay until the store's garbage collection sweeps them.
        """
        rv = self._resolve(ref)
        name, number = rv.name, rv.version
        try:
            parsed = parse_uri(rv.source)
        except InvalidInputError:
            raise NotFoundError(
                f"{name}@{number} was not registered by modelkeep (source {rv.source!r})",
                hint="delete it with the registry's own tools") from None
        aliases = tuple(sorted(rv.aliases))
        if aliases:
            immutable = self.policies.for_name(name).setting("immutable")
            if immutable.value:
                reason = (f"{name}@{number} has alias(es) {', '.join(aliases)} and versions of "
                          f"{name} are immutable ({immutable.origin})")
                raise VetoError(
                    f"deleting {name}@{number} refused: {reason}", reasons=[reason],
                    hint=f"point the alias elsewhere or remove it first (modelkeep alias "
                         f"--delete {name} {aliases[0]}); nothing was deleted")
            for alias in aliases:
                self._check_alias(name, alias, None, rv.tags, registering=False, action="delete")
        shared = self._snapshot_users(parsed.locator, parsed.snapshot_id, exclude=(name, number))
        # Registry entry first, then the snapshot. The version and its aliases disappear for
        # every reader in one step, and a crash between the two leaves an unreferenced snapshot,
        # the same debris a crash during register leaves and garbage collection sweeps. The
        # other order would leave a visible version whose snapshot is gone: one nobody can pull.
        self.registry.delete_version(name, number)
        for alias in aliases:
            self._record_alias(name, alias, None, number, "delete")
        if not shared:
            self._store_for(parsed.locator).delete_snapshot(parsed.snapshot_id)
            self._snapshots.pop(parsed.snapshot_id, None)
        return DeletedVersion(name, number, parsed.snapshot_id, not shared, shared, aliases)

    def _snapshot_users(
        self, locator: str, snapshot_id: str, exclude: tuple[str, int]
    ) -> tuple[str, ...]:
        """Every registered version, of any model, whose URI names this snapshot in this store
        (but *exclude*)."""

        def users(model: str) -> list[str]:
            try:
                found = self.registry.versions(model)
            except NotFoundError:
                return []  # deleted meanwhile
            out = []
            for rv in found:
                if (rv.name, rv.version) == exclude:
                    continue
                try:
                    parsed = parse_uri(rv.source)
                except InvalidInputError:
                    continue
                if parsed.snapshot_id == snapshot_id and parsed.locator == locator:
                    out.append(f"{rv.name}@{rv.version}")
            return out

        with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-refs") as pool:
            return tuple(ref for refs in pool.map(users, self.registry.models()) for ref in refs)

    # -- disaster recovery -----------------------------------------------------------------

    def rebuild_registry(self, *, dry_run: bool = False) -> RebuildReport:
        """Recreate in this Keep's registry the models and versions of every snapshot in its
        store, then the aliases, alias histories and descriptions its journal records (rules in
        :mod:`modelkeep.rebuild`). Conflicts are found before anything is written; *dry_run*
        writes nothing at all; journal entries that cannot be replayed are reported in
        ``report.journal.problems``."""
        from modelkeep.config import redact_url

        report = RebuildReport(redact_url(self.registry.uri), self.store.url, dry_run)

        def load(sid: str) -> tuple[str, Snapshot | None, str]:
            try:
                return sid, self.store.load_snapshot(sid), ""
            except (IntegrityError, NotFoundError) as exc:
                return sid, None, exc.message

        with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-rebuild") as pool:
            loaded = list(pool.map(load, list(self.store.snapshot_ids())))
        good: list[tuple[str, Snapshot]] = []
        for sid, snap, problem in loaded:
            if snap is None:
                report.skipped.append((sid, problem or "unreadable"))
                continue
            try:
                validate_name(snap.name)
            except InvalidInputError:
                report.skipped.append((sid, f"invalid model name {snap.name!r}"))
                continue
            good.append((sid, snap))
        ordered = rebuild_mod.order(good)
        added = rebuild_mod.bytes_added(ordered)
        by_name: dict[str, list[tuple[str, Snapshot]]] = {}
        for sid, snap in ordered:
            by_name.setdefault(snap.name, []).append((sid, snap))

        conflicts = []
        held: dict[tuple[str, int], str] = {}  # descriptions of the versions already there
        for name, items in sorted(by_name.items()):
            uris = [self.store.uri(sid) for sid, _snap in items]
            try:
                there = self.registry.versions(name)
            except NotFoundError:
                there = []
            existing = [rv.source for rv in there]
            held.update({(name, rv.version): rv.description for rv in there})
            if existing != uris[:len(existing)]:
                conflicts.append(name)
                continue
            for number, (sid, snap) in enumerate(items, start=1):
                report.versions.append(rebuild_mod.PlannedVersion(
                    name=name, version=number, snapshot_id=sid, uri=uris[number - 1],
                    created=snap.created,
                    tags={**rebuild_mod.registry_tags(snap, sid, added[sid]),
                          **lineage_tags(snap.lineage)},
                    description=snap.message, exists=number <= len(existing)))
        if conflicts:
            raise RegistryError(
                f"registry {self.registry.uri} already holds other versions of "
                f"{', '.join(repr(n) for n in conflicts)}",
                hint="rebuild into an empty registry (--registry URI); nothing was written")
        entries, unreadable = self.store.journal()
        replay = rebuild_mod.replay(
            entries, {v.snapshot_id: (v.name, v.version) for v in report.versions})
        replay.problems[:0] = [(eid, f"unreadable journal entry: {why}")
                               for eid, why in unreadable]
        for planned in report.versions:
            held.setdefault((planned.name, planned.version), planned.description)
        report.journal = self._journal_changes(replay, held)
        if dry_run:
            return report
        for planned in report.versions:
            if planned.exists:
                continue
            rv = self.registry.create_version(planned.name, planned.uri, tags=planned.tags,
                                              description=planned.description or None, run_id="")
            if rv.version != planned.version:
                raise RegistryError(
                    f"registry numbered {planned.name}@{planned.version} as {rv.version}",
                    hint="another client registered versions of it meanwhile; rebuild into a "
                    "registry nobody else uses")
        self._apply_journal(report.journal)
        return report

    def _journal_changes(self, replay: rebuild_mod.JournalReplay,
                         descriptions: Mapping[tuple[str, int], str]) -> rebuild_mod.JournalReplay:
        """Mark what the replayed journal changes in the target registry, whose versions have
        *descriptions* (once the planned ones exist): only those changes are written, so a
        second rebuild writes nothing."""
        models: dict[str, RegistryModel | None] = {}

        def model(name: str) -> RegistryModel | None:
            if name not in models:
                try:
                    models[name] = self.registry.get_model(name)
                except NotFoundError:
                    models[name] = None
            return models[name]

        aliases = []
        for pa in replay.aliases:
            m = model(pa.name)
            now = m.aliases.get(pa.alias) if m else None
            tag = m.tags.get(aliases_mod.HISTORY_TAG + pa.alias) if m else None
            aliases.append(replace(pa, set_alias=now != pa.version,
                                   set_history=bool(pa.history) and tag != pa.history))
        texts = []
        for pd in replay.descriptions:
            if pd.version is None:
                m = model(pd.name)
                now = m.description if m else ""
            else:
                now = descriptions.get((pd.name, pd.version), "")
            texts.append(replace(pd, changed=now != pd.text))
        return replace(replay, aliases=aliases, descriptions=texts)

    def _apply_journal(self, replay: rebuild_mod.JournalReplay) -> None:
        """Write the changes :meth:`_journal_changes` marked, without hooks or new journal
        entries: they restore changes the plugins already accepted and the journal holds."""
        for name in sorted({a.name for a in replay.aliases if a.changed}
                           | {d.name for d in replay.descriptions if d.changed}):
            self.registry.create_model(name)  # a model whose versions are all gone
        for pa in replay.aliases:
            if pa.set_history:
                self.registry.set_model_tag(pa.name, aliases_mod.HISTORY_TAG + pa.alias,
                                            pa.history)
            if pa.set_alias:
                if pa.version is None:
                    self.registry.delete_alias(pa.name, pa.alias)
                else:
                    self.registry.set_alias(pa.name, pa.alias, pa.version)
        for pd in replay.descriptions:
            if pd.changed:
                self.registry.set_description(pd.name, pd.version, pd.text)

    # -- training --------------------------------------------------------------------------

    def checkpoint(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> PendingCheckpoint:
        """Register the checkpoint at *path* as the next version of *name*, in the background.

        Returns once a private copy of *path* is taken (the training loop may overwrite it), or,
        when two checkpoints are already waiting, once one of them is stored: every checkpoint
        given here is registered. Each one's parent is the previous one of *name*; *metrics*
        become ``metric.<key>`` tags. Errors surface at :meth:`flush` (also run at process exit).
        For every-N / best-metric policies, skipping under load, and retention use
        :func:`modelkeep.track`.
        """
        from modelkeep.training import Tracker

        with self._lock:
            tracker = self._trackers.get(name)
            if tracker is None or tracker.closed:
                tracker = self._trackers[name] = Tracker(self, name, on_full="block",
                                                         cpu_budget=None)
        return tracker.checkpoint(path, step=step, metrics=metrics, tags=tags, force=True)

    def flush(self, timeout: float | None = None) -> list[ModelVersion]:
        """Wait for every checkpoint :meth:`checkpoint` queued; raise
        :class:`~modelkeep.errors.CheckpointError` if any was not registered."""
        with self._lock:
            trackers = list(self._trackers.values())
        out: list[ModelVersion] = []
        first: BaseException | None = None
        for tracker in trackers:
            try:
                out.extend(tracker.flush(timeout))
            except BaseException as exc:  # flush the others before raising the first error
                first = first or exc
        if first is not None:
            raise first
        return out

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
        rv = self._resolve(ref)
        store, snap, sid = self._load(rv)
        out = store.materialize(snap, dest, overwrite=overwrite, progress=progress)
        if self.hook.modelkeep_after_pull.get_hookimpls():
            self.hook.modelkeep_after_pull(version=self._version(rv, snap, sid), dest=out,
                                           keep=self)
        return out

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

    # -- signatures ------------------------------------------------------------------------

    def signer(self) -> Signer | None:
        """The loaded signing key, or None when this Keep does not sign."""
        if self.signing_key is None or self.signing_key == "":
            return None
        if self._signer is None:
            from modelkeep.signing import Signer

            self._signer = Signer.from_file(self.signing_key)
        return self._signer

    def trusted_keys(self, extra: Iterable[str | os.PathLike[str]] = ()) -> set[str]:
        """Ids of the trusted public keys: *extra* (files or key ids), ``MODELKEEP_TRUSTED_KEYS``
        and the signing key's own public key."""
        from modelkeep.signing import env_trusted_keys, trusted_key_ids

        ids = trusted_key_ids([*extra, *env_trusted_keys()])
        signer = self.signer()
        if signer is not None:
            ids.add(signer.key_id)
        return ids

    def signature_status(
        self, ref: str, trusted_keys: Iterable[str | os.PathLike[str]] | None = None
    ) -> SignatureStatus:
        """Whether version *ref* carries a good signature by a trusted key: ``valid``,
        ``untrusted``, ``invalid`` or ``missing`` with the key id (:mod:`modelkeep.signing`).
        *trusted_keys* are public key files or key ids, added to :meth:`trusted_keys`."""
        from modelkeep.signing import judge

        rv = self._resolve(ref)
        store, snap, sid = self._load(rv)
        return judge(store, sid, rv.name, snap.name, self.trusted_keys(trusted_keys or ()))


def _snapshot_of(rv: RegistryVersion) -> str | None:
    """The snapshot id of a registry version; None for a version another tool registered."""
    try:
        return parse_uri(rv.source).snapshot_id
    except InvalidInputError:
        return None


def _check_tags(tags: Mapping[str, str], *, reserved: bool = False) -> dict[str, str]:
    out = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > 250:
            raise InvalidInputError(f"invalid tag key {key!r}", hint="use 1-250 characters")
        if key.startswith(TAG_PREFIX) and not reserved:
            raise InvalidInputError(
                f"tag key {key!r} is reserved", hint=f"keys starting {TAG_PREFIX!r} are modelkeep's"
            )
        value = str(value)
        if len(value) > MAX_TAG_VALUE:
            raise InvalidInputError(f"tag {key!r} is longer than {MAX_TAG_VALUE} characters")
        out[key] = value
    return out


LINEAGE_TAG_MAX = 5000  # the smallest tag-value limit among MLflow's database schemas


def _check_lineage(lineage: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse lineage a snapshot cannot hold: non-string keys, floats, non-JSON values."""

    def check(value: Any, where: str) -> None:
        if value is None or isinstance(value, str | bool | int):
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise InvalidInputError(f"lineage key {k!r} at {where} is not a string")
                check(v, f"{where}.{k}")
            return
        if isinstance(value, list | tuple):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
            return
        raise InvalidInputError(
            f"lineage value at {where} is a {type(value).__name__}",
            hint="lineage holds JSON strings, integers, booleans, lists and objects; "
                 "write other numbers as strings",
        )

    out = {}
    for section, value in lineage.items():
        check(value, str(section))
        out[str(section)] = value
    return out


def lineage_tags(lineage: Mapping[str, Any]) -> dict[str, str]:
    """Registry tags mirroring the lineage: ``modelkeep.<section>.<key>`` for each member of
    each section, scalars as text and the rest as compact JSON, left out when longer than
    :data:`LINEAGE_TAG_MAX` (the snapshot holds everything)."""
    import json

    tags = {}
    for section, value in lineage.items():
        if not isinstance(value, Mapping):
            continue
        for key, item in value.items():
            if item is None:
                continue
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, str | int):
                text = str(item)
            else:
                text = json.dumps(item, sort_keys=True, separators=(",", ":"))
            if len(text) <= LINEAGE_TAG_MAX:
                tags[f"{TAG_PREFIX}{section}.{key}"] = text
    return tags


def _chunk_ids_in(entry: FileEntry, start: int, end: int) -> tuple[str, ...]:
    offsets = entry.chunk_offsets()
    first = bisect.bisect_right(offsets, start) - 1
    last = bisect.bisect_left(offsets, end)
    return tuple(cid for cid, _n in entry.chunks[max(first, 0):last])


def _tensor_key(entry: FileEntry, t: Tensor) -> str | tuple[str, ...]:
    """What identifies a tensor's bytes: the id of its own bytes, recorded for a tensor that
    shares its chunk with others (small tensors travel together); else the chunks that hold it,
    of which a tensor that is exactly one chunk has that chunk's id, its own bytes' id too."""
    if t.digest is not None:
        return t.digest
    ids = _chunk_ids_in(entry, t.start, t.end)
    if len(ids) == 1:
        offsets = entry.chunk_offsets()
        i = bisect.bisect_left(offsets, t.start)
        if i < len(offsets) and offsets[i] == t.start and offsets[i] + entry.chunks[i][1] == t.end:
            return ids[0]
    return ids


def _tensor_changes(a: FileEntry, b: FileEntry) -> TensorChanges:
    ta = {t.name: t for t in a.tensors or ()}
    tb = {t.name: t for t in b.tensors or ()}
    changed, unchanged = [], 0
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        same = x.dtype == y.dtype and x.shape == y.shape and (
            x.start == x.end or _tensor_key(a, x) == _tensor_key(b, y)
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


__all__ = ["DeletedVersion", "Diff", "FileChange", "Keep", "ModelVersion", "TensorChanges",
           "open"]
