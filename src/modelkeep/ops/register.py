"""Making versions: :func:`register` (files into a new version) and :func:`promote` (a version
of one model as a new version of another, no bytes copied), over one commit protocol,
:func:`_commit`, whose registry entry (:func:`enter_version`) a registry rebuild makes too.

The commit protocol is the write order that makes registering crash-safe: chunks, then the
snapshot object (and its signature), then the registry entry, then the commit record in the
store's journal (docs/format.md §10.4), then the aliases and the version's generated summary
(:mod:`modelkeep.ops.summary`; sent with the registry entry when the number the registry will
give is known from the reuse check, written again if it gave another). A version is visible only
once its registry entry exists, and by then everything it points at is stored. Every veto (a
validator, an alias pre-check, ``modelkeep_before_register``) is asked before the snapshot is
written, so a refusal leaves only unreferenced chunks behind, as a crash would. The commit
record names the version number the registry gave the snapshot: a rebuild numbers versions by
it, so a snapshot whose register never reached the registry is not rebuilt as a version, and
numbers freed by deleted versions stay free.

Both operations share the same steps: the reuse check (identical content to the newest version
returns that version), the collect hooks (``modelkeep_collect_lineage``,
``modelkeep_collect_metadata``), the scan and validators, the alias pre-checks, and the retry
when a garbage collection removed chunks the new snapshot relies on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.catalog.tags import TREE, check_lineage, check_tags, plugin_tags, version_tags
from modelkeep.errors import IntegrityError, NotFoundError, SourceError, VetoError
from modelkeep.ops._common import (
    author,
    latest_without_aliases,
    load,
    resolve,
    snapshot_of,
    version_of,
)
from modelkeep.ops.aliases import check_alias, describe, move_alias, set_tags
from modelkeep.ops.journal import record_commit
from modelkeep.ops.read import get
from modelkeep.ops.scan import scan_sources, scan_stored
from modelkeep.ops.summary import refresh_version, user_description, version_description
from modelkeep.refs import validate_alias, validate_name
from modelkeep.store.snapshot import Parent, Snapshot
from modelkeep.store.uri import utc_now

if TYPE_CHECKING:
    from modelkeep.hooks import Finding
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.registry import RegistryVersion
    from modelkeep.signing import Signer
    from modelkeep.store import GcMark, SourceFile, Store

Progress = Callable[[int], None]
GC_RETRIES = 3  # a register overlapping two collections that removed its chunks stores again


def register(
    keep: Keep,
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
    """Store the folder or file at *path* as a new version of *name*
    (:meth:`modelkeep.keep.Keep.register`)."""
    from modelkeep.sources import is_url, scan_url

    validate_name(name)
    alias_list = [validate_alias(a) for a in aliases]
    user_tags = check_tags(tags or {})
    signer = keep.signer()  # a bad key fails here, before anything is stored
    source: Path | str
    if isinstance(path, str) and is_url(path):
        source, repo_dir = path, Path.cwd()
    else:
        source = Path(path)
        repo_dir = source if source.is_dir() else source.parent
    if sources is None:
        sources = (scan_url(source, storage_options) if isinstance(source, str)
                   else _scan_local(source))
    source_files = list(sources)
    # A registry that will refuse the version refuses it before any byte is uploaded: when the
    # ingest is about to write its first chunk, or, if every chunk is stored already, before a
    # new version is committed. A folder registered unchanged is never asked (two requests of
    # an MLflow server), and any change the reuse applies is a write the registry refuses.
    check_writable = getattr(keep.registry, "check_writable", None)
    before_upload = (lambda: check_writable(name)) if check_writable is not None else None
    findings = scan_sources(keep, name, source_files)
    parent_refs = []
    for p in parents:
        pv = get(keep, p)
        parent_refs.append(Parent(pv.snapshot_id, pv.name, pv.version))

    files, stats = keep.store.ingest(source_files, progress,
                                     parent=_delta_parent(keep, name, parent_refs),
                                     before_upload=before_upload)
    snapshot = Snapshot(
        name=name,
        files=files,
        created=utc_now(),
        author=author(),
        message=message or "",
        parents=tuple(parent_refs),
        tags=user_tags,
    )
    newest: RegistryVersion | None = None
    if not force:
        # Read after the ingest: another writer may have registered this content meanwhile.
        newest = latest_without_aliases(keep, name)
        reused = _reuse(keep, name, newest, snapshot.tree, alias_list, message=message,
                        tags=user_tags)
        if reused is not None:
            return reused
    if before_upload is not None and not stats.checked:
        before_upload()  # before the snapshot object is written

    def store_again() -> GcMark | None:
        """Store the sources again (a collection removed chunks the ingest found present)."""
        again, again_stats = keep.store.ingest(source_files)
        if again != snapshot.files:
            raise SourceError("the files changed while being registered",
                              hint="register them again once nothing writes them") from None
        return again_stats.gc_mark

    return _commit(
        keep, keep.store, _Candidate(
            snapshot=snapshot, source=source, repo_dir=repo_dir, lineage=lineage or {},
            findings=findings, aliases=alias_list, bytes_added=stats.bytes_added,
            bytes_stored=stats.bytes_stored,
            run_id=run_id, description=message or None, mark=stats.gc_mark,
            store_again=store_again, number=_next_number(newest, force)),
        signer)


def _scan_local(source: Path) -> list[SourceFile]:
    # The ingest (reading, cutting, the object layer) is imported by the commands that store.
    from modelkeep.store.ingest import scan_local

    return scan_local(source)


def _delta_parent(keep: Keep, name: str, parents: Sequence[Parent]) -> Snapshot | None:
    """The snapshot whose chunks a new version's changed tensors are coded against: the first
    parent given, else the model's newest version (a checkpoint after the one before)."""
    if parents:
        sid: str | None = parents[0].snapshot_id
    else:
        latest = latest_without_aliases(keep, name)  # its source is all this needs
        sid = snapshot_of(latest) if latest is not None else None
    if not sid:
        return None
    try:
        return keep.stores.snapshot(keep.store, sid)
    except (NotFoundError, IntegrityError):
        return None  # in another store, or damaged: the version is stored without deltas


def promote(
    keep: Keep,
    ref: str,
    to_name: str,
    *,
    aliases: Iterable[str] = (),
    message: str | None = None,
    force: bool = False,
) -> ModelVersion:
    """Register the version *ref* names as a new version of model *to_name*, copying no file
    bytes (:meth:`modelkeep.keep.Keep.promote`)."""
    validate_name(to_name)
    alias_list = [validate_alias(a) for a in aliases]
    signer = keep.signer()
    src_rv = resolve(keep, ref)
    store, src, src_sid = load(keep, src_rv)
    # Before the chunks are relied on: the commit check compares it (docs/format.md §13).
    mark = store.gc_mark()
    newest: RegistryVersion | None = None
    if not force:
        newest = latest_without_aliases(keep, to_name)
        reused = _reuse(keep, to_name, newest, src.tree, alias_list, message=message)
        if reused is not None:
            return reused
    snapshot = replace(
        src, name=to_name, created=utc_now(), author=author(),
        message=src.message if message is None else message,
        parents=(Parent(src_sid, src_rv.name, src_rv.version),),
    )

    def store_again() -> GcMark:
        """The promoted chunks are the source snapshot's: while it is stored, no collection
        takes them, so a fresh mark is all a retry needs. If it was deleted meanwhile and its
        chunks collected, the bytes are nowhere to store again from."""
        fresh = store.gc_mark()
        if not store.has_snapshot(src_sid):
            raise NotFoundError(
                f"{src_rv.name}@{src_rv.version} was deleted while being promoted, and its "
                "chunks collected", hint="nothing was registered; promote another version")
        return fresh

    # Scanners see the promoted files, read from the store, as they would at register: the
    # target model's policies may be stricter than the source's. The promoted version keeps
    # the source's lineage (its code and data are the source's); plugins may add sections.
    return _commit(
        keep, store, _Candidate(
            snapshot=snapshot, source=src_rv.source, repo_dir=Path.cwd(),
            lineage=src.lineage, findings=scan_stored(keep, to_name, store, snapshot),
            aliases=alias_list, bytes_added=0, bytes_stored=0, run_id=None,
            description=snapshot.message or None, mark=mark, store_again=store_again,
            base_tags=dict(src_rv.tags), number=_next_number(newest, force)),
        signer)


@dataclass(frozen=True)
class _Candidate:
    """A version about to be committed: its snapshot (files, name, parents, user tags), where
    it came from, and what the commit needs to finish or retry it."""

    snapshot: Snapshot
    source: Path | str  # what modelkeep_after_register and the collect hooks are told
    repo_dir: Path
    lineage: Mapping[str, Any]  # wins over what the lineage plugins collect
    findings: Sequence[Finding]
    aliases: Sequence[str]
    bytes_added: int
    bytes_stored: int
    run_id: str | None
    description: str | None
    mark: GcMark | None  # the collection state read before the chunks were looked at
    store_again: Callable[[], GcMark | None]  # after ChunksCollectedError: re-store, a fresh mark
    base_tags: Mapping[str, str] | None = None  # promote: the promoted version's tags
    number: int | None = None  # the number the registry is expected to give (None: unknown)


def _next_number(newest: RegistryVersion | None, force: bool) -> int | None:
    """The number a new version is expected to get, from the newest version the reuse check
    read (None when it was not asked): the one after it. A registry that never reuses a
    number (MLflow) gives a higher one after the newest was deleted, or when another writer
    registered meanwhile; the summary is then written again."""
    if force:
        return None
    return newest.version + 1 if newest is not None else 1


def _commit(keep: Keep, store: Store, c: _Candidate, signer: Signer | None) -> ModelVersion:
    """The commit protocol shared by register and promote: collect, validate, pre-check the
    aliases, then snapshot → signature → registry entry → commit record → aliases, then tell
    the plugins. Nothing is written to the store before every veto was asked."""
    name = c.snapshot.name
    snapshot = replace(c.snapshot, lineage=collect_lineage(
        keep, name, c.source, c.repo_dir, c.lineage))
    snapshot = replace(snapshot, tags=collect_tags(keep, name, c.source, snapshot, c.findings))
    validate(keep, name, snapshot, c.findings)
    for alias in c.aliases:
        check_alias(keep, name, alias, None, snapshot.tags, registering=True,
                    findings=c.findings)
    base = None if c.base_tags is None else {**c.base_tags, **snapshot.tags}
    registry_tags = version_tags(snapshot, store.snapshot_id(snapshot),
                                 bytes_added=c.bytes_added, bytes_stored=c.bytes_stored,
                                 run_id=c.run_id, base=base)
    keep.hook.modelkeep_before_register(
        name=name, snapshot=snapshot, tags=registry_tags, keep=keep)

    sid = save_snapshot(store, snapshot, c.mark, c.store_again)
    # Write order: the signature after the snapshot it signs, before the registry entry.
    if signer is not None:
        signer.sign(store, sid)
    keep.stores.remember(sid, snapshot)
    signers = [signer.key_id] if signer is not None else []
    description = c.description
    if c.number is not None:
        # The summary goes in with the entry when the number it shows is known beforehand,
        # which spares the registry a write; refresh_version below writes it again when the
        # registry gave another number, or aliases were set.
        description = version_description(name, c.number, snapshot, sid, registry_tags,
                                          user=c.description or "", signers=signers)
    rv = enter_version(keep, name, store.uri(sid), registry_tags, description=description,
                       run_id=c.run_id or None, author=snapshot.author)
    record_commit(store, name, rv.version, sid)
    model = None
    for alias in c.aliases:
        model = move_alias(keep, name, alias, rv.version, snapshot_id=sid,
                           skip_summary=rv.version) or model
    if c.aliases:
        rv = replace(rv, aliases=tuple(sorted(set(rv.aliases) | set(c.aliases))))
    if keep.hook.modelkeep_after_alias_change.get_hookimpls():
        model = None  # plugins told of the moves may have changed the model since it was read
    # The summary needs the version's number, so it is written once the number is known
    # (again, if it went in with the entry and an alias or another number changed it).
    refresh_version(keep, name, rv.version, rv=rv, loaded=(store, snapshot, sid),
                    signers=signers, model=model)
    version = replace(version_of(rv, snapshot, sid), bytes_added=c.bytes_added,
                      bytes_stored=c.bytes_stored)
    keep.hook.modelkeep_after_register(version=version, keep=keep, source=c.source)
    return version


def enter_version(keep: Keep, name: str, uri: str, tags: Mapping[str, str], *,
                  description: str | None = None, run_id: str | None = None,
                  author: str | None = None) -> RegistryVersion:
    """The registry entry of a stored snapshot: the one call that gives a version its number,
    made by register and promote (in :func:`_commit`) and by a registry rebuild alike.
    *run_id* ``""`` asks for no run link at all (a rebuild); run and author are passed only when
    set, so a Registry without run links or authors still works."""
    link: dict[str, Any] = {}
    if run_id is not None:
        link["run_id"] = run_id
    if author:
        link["user_id"] = author
    return keep.registry.create_version(name, uri, tags=tags, description=description, **link)


def _reuse(
    keep: Keep, name: str, newest: RegistryVersion | None, tree: str, aliases: Sequence[str], *,
    message: str | None = None, tags: Mapping[str, str] | None = None,
) -> ModelVersion | None:
    """The newest version of *name* (*newest*, as read, perhaps without its aliases) when its
    content is *tree*, with what the caller gave applied to it: *message* as its description,
    *tags* as tags, *aliases* moved onto it (each move accepted by every plugin, asked with the
    tags it will have, before anything changes); None otherwise. The result's ``applied`` says
    what changed."""
    if newest is None or newest.tags.get(TREE) != tree:
        return None
    latest = keep.registry.get_version(name, newest.version)  # with its aliases
    ref = f"{name}@{latest.version}"
    for alias in aliases:
        check_alias(keep, name, alias, latest.version, {**latest.tags, **(tags or {})},
                    registering=False)
    applied: dict[str, Any] = {}
    if tags:
        changed = set_tags(keep, name, latest.version, tags)
        if changed:
            applied["tags"] = changed
    if message is not None and message != user_description(latest.description):
        describe(keep, ref, message)
        applied["message"] = message
    moved = [a for a in dict.fromkeys(aliases) if a not in latest.aliases]
    for alias in aliases:
        move_alias(keep, name, alias, latest.version, snapshot_id=snapshot_of(latest))
    if moved:
        applied["aliases"] = moved
    if applied:
        return replace(get(keep, ref), reused=True, applied=applied)
    _store, snap, sid = load(keep, latest)  # nothing changed: the version as just read
    return replace(version_of(latest, snap, sid), reused=True, applied=applied)


def save_snapshot(
    store: Store, snapshot: Snapshot, mark: GcMark | None,
    store_again: Callable[[], GcMark | None],
) -> str:
    """Write the snapshot; if a garbage collection removed chunks it relies on (docs/format.md
    §13), store them again (*store_again*) and retry, a few times."""
    from modelkeep.store.gc import ChunksCollectedError

    for attempt in range(GC_RETRIES):
        try:
            return store.save_snapshot(snapshot, since=mark)
        except ChunksCollectedError:
            if attempt == GC_RETRIES - 1:
                raise
            mark = store_again()
    raise AssertionError("unreachable")


# -- hooks around the commit --------------------------------------------------------------


def collect_lineage(
    keep: Keep, name: str, source: Path | str, repo_dir: Path, given: Mapping[str, Any]
) -> dict[str, Any]:
    collected: dict[str, Any] = {}
    for answer in reversed(keep.hook.modelkeep_collect_lineage(
            name=name, source=source, repo_dir=repo_dir, keep=keep)):
        collected.update(answer or {})
    collected.update(given)
    return check_lineage(collected)


def collect_tags(keep: Keep, name: str, source: Path | str, snapshot: Snapshot,
                 findings: Sequence[Finding] = ()) -> dict[str, str]:
    collected: dict[str, str] = {}
    for answer in reversed(keep.hook.modelkeep_collect_metadata(
            name=name, source=source, snapshot=snapshot, keep=keep,
            findings=tuple(findings))):
        collected.update(answer or {})
    return plugin_tags(collected, snapshot.tags)


def validate(keep: Keep, name: str, snapshot: Snapshot, findings: Sequence[Finding]) -> None:
    reasons = [str(r) for r in keep.hook.modelkeep_validate_version(
        name=name, snapshot=snapshot, findings=tuple(findings), keep=keep) if r]
    if reasons:
        raise VetoError(f"{name}: new version refused: {'; '.join(reasons)}",
                        reasons=reasons, hint="nothing was registered")
