"""Replication: copying snapshots from one store to another, sending only missing chunks.

The copy follows the write order of docs/format.md §7.1 on the destination: every chunk of a
snapshot, then the snapshot object, so an interrupted copy never leaves a snapshot whose chunks
are missing, and running it again copies only what is still missing (chunks are write-once
conditional creates; snapshots already present are skipped). Every chunk is read through the
source's checks (header, length, id) before it is written, so damage is never replicated. The
destination is a writer like any other: it reads the destination's garbage-collection mark first
and runs the commit check after each snapshot (docs/format.md §13).

Run manifests (``runs/``) are not copied: they belong to MLflow runs whose artifact locations name
the source store, so nothing would read a copy; a replica holds versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelkeep.errors import TO_STORE, Hint, IntegrityError, NotFoundError, StoreError
from modelkeep.store.codec import Kind
from modelkeep.store.ingest import chunk_dtypes

if TYPE_CHECKING:
    from modelkeep.store.gc import GcMark
    from modelkeep.store.snapshot import Snapshot
    from modelkeep.store.store import Store

# Descriptor members whose meaning this version knows; any other (encryption settings, keyed
# ids) may change what a chunk id means, so stores that have one are not mixed.
_KNOWN_DESCRIPTOR = {"format", "type", "hash", "created"}
# Up to this many chunks are asked about one HEAD each; more, and one listing of the
# destination (a request per 1,000 objects) is cheaper.
LIST_ABOVE = 512


@dataclass
class SyncReport:
    source: str
    dest: str
    dry_run: bool
    snapshots: int = 0  # selected
    snapshots_copied: int = 0
    snapshots_present: int = 0
    chunks_copied: int = 0
    chunks_present: int = 0
    bytes_copied: int = 0  # raw chunk bytes sent
    bytes_present: int = 0
    copied: list[str] = field(default_factory=list)  # snapshot ids written (or to write)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "dest": self.dest, "dry_run": self.dry_run,
                "snapshots": self.snapshots, "snapshots_copied": self.snapshots_copied,
                "snapshots_present": self.snapshots_present,
                "chunks_copied": self.chunks_copied, "chunks_present": self.chunks_present,
                "bytes_copied": self.bytes_copied, "bytes_present": self.bytes_present,
                "copied": list(self.copied)}


def check_compatible(src: Store, dst: Store) -> None:
    """Refuse to mix stores whose chunk ids mean different things."""
    if src.location.locator == dst.location.locator and dict(src.location.options) == dict(
            dst.location.options):
        raise StoreError(f"source and destination are the same store ({src.url})",
                         hint=Hint("name another store with {to}", to=TO_STORE))
    a = src.descriptor()
    if a is None:
        raise NotFoundError(f"there is no store at {src.url}", hint="check the store URL")
    b = dst.descriptor()
    for where, desc in ((src.url, a), (dst.url, b)):
        if desc is None:
            continue
        extra = sorted(set(desc) - _KNOWN_DESCRIPTOR)
        if extra:
            raise StoreError(
                f"store {where} has settings this copy cannot carry over ({', '.join(extra)}): "
                "its chunk ids are specific to it",
                hint="replicate between stores with the same settings, e.g. both unencrypted")
    if b is not None and (a.get("format"), a.get("hash")) != (b.get("format"), b.get("hash")):
        raise StoreError(
            f"stores {src.url} (format {a.get('format')}, {a.get('hash')}) and {dst.url} "
            f"(format {b.get('format')}, {b.get('hash')}) are not compatible",
            hint="replicate into a new store or one with the same format")


def sync(
    src: Store,
    dst: Store,
    snapshot_ids: Iterable[str],
    *,
    dry_run: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SyncReport:
    """Copy the snapshots *snapshot_ids* of *src*, and their missing chunks, to *dst*.

    *progress* receives raw byte counts as chunks are copied (or found present).
    """
    check_compatible(src, dst)
    ids = list(dict.fromkeys(snapshot_ids))
    report = SyncReport(src.url, dst.url, dry_run, snapshots=len(ids))
    if not dry_run:
        dst.ensure_initialized()
    mark = dst.gc_mark()  # before any question about the destination's chunks
    remote = not (src.location.is_local and dst.location.is_local)
    workers = workers or (16 if remote else 4)

    todo: list[tuple[str, Snapshot, bytes]] = []
    for sid in ids:
        if dst.db.exists(Kind.SNAPSHOT, sid):
            report.snapshots_present += 1
            continue
        payload = bytes(src.db.get(Kind.SNAPSHOT, sid, f"snapshot {sid[:12]}"))
        todo.append((sid, src.load_snapshot(sid), payload))

    sizes: dict[str, int] = {}
    dtypes: dict[str, str] = {}  # what tensor chunks hold: the destination codes them by it
    for _sid, snap, _p in todo:
        for entry in snap.files:
            for cid, n in entry.chunks:
                sizes[cid] = n
            dtypes.update(chunk_dtypes(entry, src.db))
    present = _present(dst, sorted(sizes), mark, workers)
    for cid in present:
        report.chunks_present += 1
        report.bytes_present += sizes[cid]
        if progress is not None:
            progress(sizes[cid])

    known = dst.known_for(mark)

    def copy(cid: str) -> None:
        data = src.db.get(Kind.CHUNK, cid)
        if len(data) != sizes[cid]:
            raise IntegrityError(f"chunk {cid[:12]} in {src.url} has {len(data)} bytes, its "
                                 f"snapshot says {sizes[cid]}")
        # Stored whole (coded by the destination's policy): a delta's base may not be there.
        dst.db.put(Kind.CHUNK, cid, data, dtype=dtypes.get(cid))
        if known is not None:
            known.add(cid)
        if progress is not None:
            progress(len(data))

    done: set[str] = set(present)
    with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-sync") as pool:
        for sid, snap, payload in todo:
            need = [cid for f in snap.files for cid, _n in f.chunks]
            missing = sorted({cid for cid in need if cid not in done})
            report.chunks_copied += len(missing)
            report.bytes_copied += sum(sizes[c] for c in missing)
            report.snapshots_copied += 1
            report.copied.append(sid)
            if dry_run:
                done.update(missing)
                continue
            # The snapshot is written only after all of its chunks are; on the first failed
            # transfer the queued ones are dropped and what was copied stays for the next run.
            try:
                list(pool.map(copy, missing))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            done.update(missing)
            created = dst.db.put(Kind.SNAPSHOT, sid, payload)
            try:
                dst.settle(need, mark)
            except Exception:
                if created:
                    dst.delete_snapshot(sid)
                raise
    if known is not None:
        known.flush()
    return report


def _present(dst: Store, ids: list[str], mark: GcMark, workers: int) -> set[str]:
    """The chunks among *ids* that *dst* holds (in ``chunks/``; a hidden chunk counts as
    missing and is copied again)."""
    if not ids or dst.descriptor() is None:
        return set()
    known = dst.known_for(mark)
    ask = [cid for cid in ids if known is None or not known.contains(cid)]
    have = set(ids) - set(ask)
    if len(ask) > LIST_ABOVE:
        listed = set(dst.db.iter_ids(Kind.CHUNK))
        found = [cid for cid in ask if cid in listed]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-sync") as pool:
            found = [cid for cid, ok in zip(ask, pool.map(
                lambda c: dst.db.exists(Kind.CHUNK, c), ask), strict=True) if ok]
    if known is not None:
        for cid in found:
            known.add(cid)
    return have | set(found)
