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
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
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
    StoreError,
    VetoError,
)
from modelkeep.hooks import Finding
from modelkeep.rebuild import RebuildReport
from modelkeep.refs import Ref, parse_ref, validate_alias, validate_name
from modelkeep.registry import Registry, RegistryModel, RegistryVersion
from modelkeep.store import (
    FileEntry,
    JournalEntry,
    Parent,
    Snapshot,
    SnapshotFile,
    SourceFile,
    Store,
    VerifyReport,
    parse_uri,
    scan_local,
    utc_now,
)
from modelkeep.store.location import location_from_locator, parse_location
from modelkeep.store.snapshot import CREATED_FORMAT

if TYPE_CHECKING:
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.training import PendingCheckpoint, Tracker

Progress = Callable[[int], None]
TAG_PREFIX = "modelkeep."
MAX_TAG_VALUE = 100_000  # MLflow's limit for model-version tag values
MAX_DESCRIPTION = 5000  # MLflow's description columns are VARCHAR(5000) on PostgreSQL and MySQL


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
) -> Keep:
    """Open the store and registry named by the arguments, the environment or modelkeep.toml.

    *store* is a store name from ``[stores.NAME]`` or a URL; *plugins* a plugin manager
    (default: the process-wide one, with the plugins ``MODELKEEP_PLUGINS`` selects).
    """
    from modelkeep.hooks.manager import get_plugin_manager

    config = config or load_config()
    pm = plugins if plugins is not None else get_plugin_manager()
    choice = config.resolve_store(store)
    options = _merge_options(choice.options, store_options or {})
    location = parse_location(choice.url)
    options = _plugin_options(pm, location.protocol, choice.url, choice.name, options)
    the_store = Store.open(choice.url, options)
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
                named_stores=config.stores.values())


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
    return Store.from_locator(locator, _plugin_options(plugins, protocol, url, name, explicit))


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
    ) -> None:
        """*named_stores* are the configured stores, whose options are used to read a version
        that lives in one of them (a copy, or a version registered through another store)."""
        if plugins is None:
            from modelkeep.hooks.manager import get_plugin_manager

            plugins = get_plugin_manager()
        self.store = store
        self.registry = registry
        self.plugins = plugins
        self.hook = plugins.hook
        self._options = dict(store_options or {})
        self._named = tuple(named_stores)
        self._snapshots: dict[str, Snapshot] = {}
        self._stores: dict[str, Store] = {store.location.locator: store}
        self._lock = threading.Lock()
        self._trackers: dict[str, Tracker] = {}  # the ones checkpoint() made, by model name

    def __repr__(self) -> str:
        return f"Keep(store={self.store.url!r}, registry={self.registry.uri!r})"

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
                    self._check_alias(name, alias, latest.version, latest.tags, registering=False)
                for alias in aliases:
                    self._move_alias(name, alias, latest.version,
                                     snapshot_id=_snapshot_of(latest))
                existing = self.get(f"{name}@{latest.version}")
                return replace(existing, reused=True)

        snapshot = replace(snapshot, lineage=self._collect_lineage(
            name, source, repo_dir, lineage or {}))
        snapshot = replace(snapshot, tags=self._collect_tags(name, source, snapshot))
        self._validate(name, snapshot, findings)
        for alias in aliases:
            self._check_alias(name, alias, None, snapshot.tags, registering=True)

        sid = snapshot.id
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

        sid = self.store.save_snapshot(snapshot)
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

    def _collect_lineage(
        self, name: str, source: Path | str, repo_dir: Path, given: Mapping[str, Any]
    ) -> dict[str, Any]:
        collected: dict[str, Any] = {}
        for answer in reversed(self.hook.modelkeep_collect_lineage(
                name=name, source=source, repo_dir=repo_dir, keep=self)):
            collected.update(answer or {})
        collected.update(given)
        return _check_lineage(collected)

    def _collect_tags(self, name: str, source: Path | str, snapshot: Snapshot) -> dict[str, str]:
        collected: dict[str, str] = {}
        for answer in reversed(self.hook.modelkeep_collect_metadata(
                name=name, source=source, snapshot=snapshot, keep=self)):
            collected.update(answer or {})
        # The caller's own tags win over what plugins suggest.
        return _check_tags({**collected, **snapshot.tags})

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
        event = None
        # Setting an alias where it already points changes nothing, and records nothing.
        if previous != version or action != "set":
            author = _author()
            entry = self._journal(name, rebuild_mod.OP_ALIAS, {
                "alias": alias, "action": action, "version": version,
                "snapshot": snapshot_id if version is not None else None}, author)
            # One time for the journal and the history, so a rebuild reproduces the history.
            event = aliases_mod.AliasEvent(alias, version, entry.time[:19] + "Z", author, action)
            with self._journaled(entry):
                if version is None:
                    self.registry.delete_alias(name, alias)
                else:
                    self.registry.set_alias(name, alias, version)
        if event is not None:
            key = aliases_mod.HISTORY_TAG + alias
            events = aliases_mod.decode(alias, model.tags.get(key))
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
        src_rv = self._resolve(ref)
        store, src, src_sid = self._load(src_rv)
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
        self._validate(to_name, snapshot, ())
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
        registry_tags[TAG_PREFIX + "snapshot"] = snapshot.id
        self.hook.modelkeep_before_register(
            name=to_name, snapshot=snapshot, tags=registry_tags, keep=self)
        sid = store.save_snapshot(snapshot)
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

    # -- disaster recovery -----------------------------------------------------------------

    def rebuild_registry(self, *, dry_run: bool = False) -> RebuildReport:
        """Recreate in this Keep's registry the models and versions of every snapshot in its
        store, then the aliases, alias histories and descriptions its journal records (rules in
        :mod:`modelkeep.rebuild`). Conflicts are found before anything is written; *dry_run*
        writes nothing at all; journal entries that cannot be replayed are reported in
        ``report.journal.problems``."""
        report = RebuildReport(self.registry.uri, self.store.url, dry_run)

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


def _snapshot_of(rv: RegistryVersion) -> str | None:
    """The snapshot id of a registry version; None for a version another tool registered."""
    try:
        return parse_uri(rv.source).snapshot_id
    except InvalidInputError:
        return None


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
