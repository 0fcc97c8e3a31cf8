"""The public door: :class:`Keep`, a store and a registry used together.

Each public method forwards to one function of the operations layer (:mod:`modelkeep.ops`),
where the algorithms live; :mod:`modelkeep.wiring` opens a Keep (:func:`modelkeep.open`) and
holds its store and snapshot caches.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.config import Config
from modelkeep.policy.rules import Policies
from modelkeep.stores import Stores

# The operations most commands never run (pull and fetch, rebuild, repair, search, du) are
# imported by the methods that run them: a command's start-up does not load them all.
if TYPE_CHECKING:
    from modelkeep import aliases as aliases_mod
    from modelkeep.catalog.deletions import DeletionEvent
    from modelkeep.config import StoreConfig
    from modelkeep.hooks import Finding
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.ops.fetch import FetchResult
    from modelkeep.ops.rebuild import RebuildReport
    from modelkeep.ops.repair import RepairResult
    from modelkeep.ops.results import (
        DeletedVersion,
        DeleteReport,
        Diff,
        Model,
        ModelLog,
        ModelVersion,
        VersionList,
    )
    from modelkeep.ops.usage import StoreUsage
    from modelkeep.registry import Registry
    from modelkeep.signing import SignatureStatus, Signer
    from modelkeep.store import (
        GcReport,
        Snapshot,
        SnapshotFile,
        SourceFile,
        Store,
        SyncReport,
        VerifyReport,
    )
    from modelkeep.training import PendingCheckpoint, Tracker

Progress = Callable[[int], None]


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
        self.stores = Stores(store, plugins, named_stores, store_options or {})
        if config is None:
            config = Config(root=Path.cwd(), store=store.url, registry=registry.uri,
                            stores={n.name: n for n in self.stores.named})
        self.config = config
        self.policies = policies if policies is not None else Policies()
        self._lock = threading.Lock()
        self._trackers: dict[str, Tracker] = {}  # the ones checkpoint() made, by model name
        self.signing_key = signing_key
        self._signer: Signer | None = None

    def __repr__(self) -> str:
        from modelkeep.redaction import redact_url

        return redact_url(f"Keep(store={self.store.url!r}, registry={self.registry.uri!r})")

    def get(self, ref: str) -> ModelVersion:
        """The version *ref* names (``NAME@3``, ``NAME@alias``, ``NAME@latest`` or ``NAME``)."""
        from modelkeep.ops import read as _read

        return _read.get(self, ref)

    def snapshot(self, ref: str) -> Snapshot:
        from modelkeep.ops import read as _read

        return _read.snapshot(self, ref)

    def snapshot_at(self, uri: str) -> tuple[Store, Snapshot]:
        """The store and snapshot a ``modelkeep://`` URI names, without asking the registry
        (pointer files carry URIs, and must resolve even where the registry was rebuilt)."""
        from modelkeep.ops import read as _read

        return _read.snapshot_at(self, uri)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of *name*, oldest first."""
        from modelkeep.ops import read as _read

        return _read.versions(self, name)

    def version_list(self, name: str, *, limit: int | None = None) -> VersionList:
        """The *limit* newest versions of *name* (every one when None), oldest first, and
        whether older ones were left out; what ``modelkeep list NAME`` and ``log`` show."""
        from modelkeep.ops import read as _read

        return _read.version_list(self, name, limit)

    def log(self, name: str, *, limit: int | None = None) -> ModelLog:
        """The model *name*, its *limit* newest versions (every one when None), and every
        alias change and deleted version; what ``modelkeep log`` shows."""
        from modelkeep.ops import read as _read

        return _read.history(self, name, limit)

    def models(self) -> list[str]:
        from modelkeep.ops import read as _read

        return _read.models(self)

    def model(self, name: str) -> Model:
        """The registered model *name*: its newest version, where each alias points, its
        description and user tags."""
        from modelkeep.ops import read as _read

        return _read.model(self, name)

    def model_list(self) -> list[Model]:
        """Every registered model (as :meth:`model`), by name."""
        from modelkeep.ops import read as _read

        return _read.all_models(self)

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
        *force*, with *message* applied as its description, *tags* as its tags and *aliases*
        moved onto it (``applied`` on the result says what changed). Nothing becomes visible
        until every byte is stored and every plugin accepted the version and its *aliases*
        (else :class:`~modelkeep.errors.VetoError`). *run_id* links the version to the MLflow
        run that produced it.
        """
        from modelkeep.ops import register as _register

        return _register.register(
            self, name, path, parents=parents, tags=tags, aliases=aliases, message=message,
            force=force, progress=progress, sources=sources, lineage=lineage,
            storage_options=storage_options, run_id=run_id)

    def scan(self, ref: str) -> list[Finding]:
        """The findings of every ``modelkeep_scan_file`` plugin over a registered version's
        files, read through the store (only the chunks a scanner reads are fetched): what a
        register of the same files would get, without trusting the version's tags."""
        from modelkeep.ops import scan as _scan

        return _scan.scan(self, ref)

    def set_alias(self, ref: str | ModelVersion, alias: str) -> ModelVersion:
        """Point *alias* at the version *ref* names, once every plugin accepts it.

        *ref* may also be a :class:`ModelVersion` this Keep returned (training retention does
        that): the same checks, journal entry and history, without resolving it again.
        """
        from modelkeep.ops import aliases as _aliases

        return _aliases.set_alias(self, ref, alias)

    def alias_refusals(self, ref: str, alias: str) -> list[str]:
        """Every plugin's reason to refuse pointing *alias* at the version *ref* names: exactly
        what :meth:`set_alias` asks, without moving anything (``modelkeep policy check
        --alias``)."""
        from modelkeep.ops import aliases as _aliases

        return _aliases.refusals_of(self, ref, alias)

    def delete_alias(self, name: str, alias: str) -> int:
        """Remove *alias* from model *name*; returns the version it pointed at."""
        from modelkeep.ops import aliases as _aliases

        return _aliases.delete_alias(self, name, alias)

    def rollback(self, name: str, alias: str, to: int | None = None) -> ModelVersion:
        """Move *alias* back to the version it pointed at before (or to version *to*).

        Repeated rollbacks walk further back through the alias history
        (:mod:`modelkeep.aliases`); the plugins are asked as for any alias change.
        """
        from modelkeep.ops import aliases as _aliases

        return _aliases.rollback(self, name, alias, to)

    def alias_history(self, name: str) -> list[aliases_mod.AliasEvent]:
        """Every recorded change of every alias of *name*, oldest first."""
        from modelkeep.ops import aliases as _aliases

        return _aliases.alias_history(self, name)

    def describe(self, target: str, text: str) -> None:
        """Set the description of a version (``NAME@REF``) or of a model (``NAME``); journaled
        first, so a registry rebuild restores it."""
        from modelkeep.ops import aliases as _aliases

        return _aliases.describe(self, target, text)

    def description(self, target: str) -> str:
        """The description of a version (``NAME@REF``) or of a model (``NAME``)."""
        from modelkeep.ops import aliases as _aliases

        return _aliases.description(self, target)

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
        from modelkeep.ops import register as _register

        return _register.promote(self, ref, to_name, aliases=aliases, message=message, force=force)

    def open_store(self, store: str) -> Store:
        """A store by its name in ``[stores.NAME]``, or by URL; a URL on the default store's
        backend gets the default store's options. Plugins' storage options apply as usual."""
        from modelkeep.ops import sync as _sync

        return _sync.open_store(self, store)

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
        from modelkeep.ops import sync as _sync

        return _sync.sync(self, to, refs, dry_run=dry_run, workers=workers, progress=progress)

    def sync_size(self, to: str | Store, refs: Sequence[str] | None = None) -> int:
        """Bytes :meth:`sync` will report progress for: the distinct chunks of the versions
        that *to* does not hold yet (for a progress bar)."""
        from modelkeep.ops import sync as _sync

        return _sync.sync_size(self, to, refs)

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
        from modelkeep.ops import gc as _gc

        return _gc.gc(self, grace=grace, dry_run=dry_run, progress=progress)

    def delete_version(self, ref: str) -> DeletedVersion:
        """Delete the registry version *ref* names, and its snapshot object from the store when
        no other registered version (of any model) points at the same snapshot.

        An aliased version is refused (:class:`~modelkeep.errors.VetoError`) while its model's
        policy is ``immutable`` (the default); otherwise its aliases go with it, asked of the
        alias hooks and recorded in the alias history like ``modelkeep alias --delete``. The
        chunks only this version used stay until the store's garbage collection sweeps them.
        """
        from modelkeep.ops import delete as _delete

        return _delete.delete_version(self, ref)

    def delete(
        self,
        target: str,
        *,
        all_versions: bool = False,
        confirm: Callable[[Sequence[str]], bool] | None = None,
    ) -> DeleteReport:
        """Delete the version *target* names (``NAME@REF``), or with *all_versions* every
        version of model *target*, by the rules of :meth:`delete_version`; every version is
        checked before any is deleted. *confirm* is asked with the refs once the checks
        passed (a false answer deletes nothing). The report says what a garbage collection
        will reclaim; each deletion is recorded in the model's history (:meth:`deletions`).
        The registered model stays, with its alias and deletion histories."""
        from modelkeep.ops import delete as _delete

        return _delete.delete(self, target, all_versions=all_versions, confirm=confirm)

    def deletions(self, name: str) -> list[DeletionEvent]:
        """The deleted versions of model *name* (version, time, user, snapshot), oldest
        first."""
        from modelkeep.ops import delete as _delete

        return _delete.history(self, name)

    def rebuild_registry(self, *, dry_run: bool = False) -> RebuildReport:
        """Recreate in this Keep's registry the models and versions of every snapshot in its
        store, then the aliases, alias histories and descriptions its journal records (rules in
        :mod:`modelkeep.rebuild`). Conflicts are found before anything is written; *dry_run*
        writes nothing at all; journal entries that cannot be replayed are reported in
        ``report.journal.problems``."""
        from modelkeep.ops import rebuild as _rebuild

        return _rebuild.rebuild_registry(self, dry_run=dry_run)

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
        from modelkeep.ops import checkpoints as _checkpoints

        return _checkpoints.checkpoint(self, name, path, step=step, metrics=metrics, tags=tags)

    def flush(self, timeout: float | None = None) -> list[ModelVersion]:
        """Wait for every checkpoint :meth:`checkpoint` queued; raise
        :class:`~modelkeep.errors.CheckpointError` if any was not registered."""
        from modelkeep.ops import checkpoints as _checkpoints

        return _checkpoints.flush(self, timeout)

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        link: bool = False,
        cache: bool = True,
    ) -> Path:
        """Materialise the version's files in folder *dest* (created; must be new or empty unless
        *overwrite*). Every chunk is verified; on any failure *dest* is left untouched. With
        *link*, read-only links into the shared read cache; else private, writable copies (taken
        from the cache where it holds the bytes, unless *cache* is false)."""
        from modelkeep.ops import fetch as _fetch

        return _fetch.pull(self, ref, dest, overwrite=overwrite, progress=progress, link=link,
                           cache=cache)

    def fetch(self, ref: str, *, cache: bool = True, progress: Progress | None = None) -> Path:
        """The version's local, read-only folder in the shared read cache (built once, the same
        folder on every call). With *cache* false (or the store option ``read_cache = false``),
        a new private temporary folder that the caller removes."""
        from modelkeep.ops import fetch as _fetch

        return _fetch.fetch(self, ref, cache=cache, progress=progress).path

    def fetch_report(
        self, ref: str, *, cache: bool = True, progress: Progress | None = None
    ) -> FetchResult:
        """:meth:`fetch`, with what it cost: bytes downloaded and bytes already cached."""
        from modelkeep.ops import fetch as _fetch

        return _fetch.fetch(self, ref, cache=cache, progress=progress)

    def search(
        self,
        name: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        metrics: Sequence[str] = (),
        order_by: str | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[ModelVersion]:
        """Versions of model *name* (of every model when None) whose tags include *tags* and
        whose ``metric.*`` tags meet every condition in *metrics* (``"loss<0.5"``,
        ``"acc>=0.9"``), ordered by *order_by* (``"tag.KEY"`` or ``"metric.NAME"``, *desc* for
        descending; default: model name, then version), at most *limit*."""
        from modelkeep.ops import search as _search

        return _search.search(self, name, tags=tags, metrics=metrics, order_by=order_by,
                              desc=desc, limit=limit)

    def open_file(self, ref: str, path: str) -> SnapshotFile:
        """A seekable, read-only binary stream of one file that fetches only the chunks read."""
        from modelkeep.ops import read as _read

        return _read.open_file(self, ref, path)

    def diff(self, ref_a: str, ref_b: str, *, content: bool = True) -> Diff:
        """Files added, removed and changed from *ref_a* to *ref_b*, and for safetensors files
        the tensors added, removed and changed (by content, dtype or shape). With *content*
        (the default), also a unified diff of each changed text file up to 1 MiB and the
        largest absolute difference of each changed tensor of unchanged dtype and shape, read
        in bounded blocks; without it only the two snapshots are read."""
        from modelkeep.ops import diff as _diff

        return _diff.diff(self, ref_a, ref_b, content=content)

    def du(self, name: str | None = None) -> StoreUsage:
        """Where the bytes go: for model *name* (every model when None), per version and per
        model, the logical bytes, the stored bytes of the distinct chunks they need (delta bases
        included) and the bytes only they need (what deleting them would give back after a
        garbage collection), and the same for the whole store; from snapshots and one listing
        of the chunk objects, never reading a chunk (:mod:`modelkeep.ops.usage`)."""
        from modelkeep.ops import usage as _usage

        return _usage.usage(self, name)

    def verify(self, ref: str | None = None, progress: Progress | None = None) -> VerifyReport:
        """Fetch and check every chunk of one version, or of every snapshot in the store."""
        from modelkeep.ops import read as _read

        return _read.verify(self, ref, progress)

    def repair(self, source: str | None = None) -> RepairResult:
        """Verify the store, name each damaged chunk once with the versions that use it, move
        the damaged objects aside and write verified copies from *source*: a folder (or file)
        holding the original files, or a store name or URL holding the same chunks. Without a
        source the damaged names are only freed, so registering the original files again
        writes them anew."""
        from modelkeep.ops import repair as _repair

        return _repair.repair(self, source)

    def signer(self) -> Signer | None:
        """The loaded signing key, or None when this Keep does not sign."""
        from modelkeep.ops import signatures as _signatures

        return _signatures.signer(self)

    def trusted_keys(self, extra: Iterable[str | os.PathLike[str]] = ()) -> set[str]:
        """Ids of the trusted public keys: *extra* (files or key ids), ``MODELKEEP_TRUSTED_KEYS``
        and the signing key's own public key."""
        from modelkeep.ops import signatures as _signatures

        return _signatures.trusted_keys(self, extra)

    def signature_status(
        self, ref: str, trusted_keys: Iterable[str | os.PathLike[str]] | None = None
    ) -> SignatureStatus:
        """Whether version *ref* carries a good signature by a trusted key: ``valid``,
        ``untrusted``, ``invalid`` or ``missing`` with the key id (:mod:`modelkeep.signing`).
        *trusted_keys* are public key files or key ids, added to :meth:`trusted_keys`."""
        from modelkeep.ops import signatures as _signatures

        return _signatures.signature_status(self, ref, trusted_keys)
