"""Garbage collection of unreferenced chunks, safe while other processes write to the store.

This module owns the collection protocol of docs/format.md §13: the run markers under
``gc/runs/``, the *gc mark* a writer reads before it looks at any chunk, the commit check a writer
runs after writing a snapshot (or run manifest), and the two-phase sweep itself.

In one paragraph: a collection never deletes a chunk that is in ``chunks/``. Phase one *hides*
unreferenced chunks older than the grace period (moves them to ``fossils/``); a later run deletes
a fossil that is still unreferenced once it has been hidden for the grace period, and restores
one that a snapshot or run manifest now references. A writer that could have seen a chunk before
it was hidden notices, because the run markers changed between its start and its commit, and then
checks each chunk it uses, restoring fossils; if one is gone, its commit fails and nothing
partial is visible. Readers fall back to ``fossils/`` for a chunk they do not find. Every time
compared is the storage service's (object modification times), never a client clock.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from modelkeep.errors import Hint, IntegrityError, NotFoundError, Option, StoreError
from modelkeep.store.codec import Kind
from modelkeep.store.objects import FOSSILS, QUARANTINE

if TYPE_CHECKING:
    from modelkeep.store.objects import ObjectDB
    from modelkeep.store.store import Store

RUNS_DIR = "gc/runs"
# A run that started this long ago and never finished is taken to have crashed: it no longer
# blocks the next collection, and writers stop treating it as in progress.
STALE_RUN = timedelta(hours=12)
_WORKERS_LOCAL = 4
_WORKERS_REMOTE = 16


class ChunksCollectedError(StoreError):
    """Chunks a new version uses were removed by a garbage collection that ran meanwhile."""

    default_hint = "store the version again; its chunks are uploaded anew"


@dataclass(frozen=True)
class GcMark:
    """The collection state a writer saw: the newest run and whether it had finished.

    Read before a writer asks whether any chunk exists; compared again at commit time.
    """

    run: int  # 0: the store was never collected
    settled: bool  # no run was in progress

    def unchanged_at(self, now: GcMark) -> bool:
        """True if no chunk can have been hidden between this mark and *now*."""
        return self.settled and now.run == self.run


def _marker(run: int, suffix: str) -> str:
    return f"{run:010d}.{suffix}"


def _runs(db: ObjectDB) -> dict[int, dict[str, datetime]]:
    """{run number: {"start"|"done": time}} from the markers under ``gc/runs/``."""
    out: dict[int, dict[str, datetime]] = {}
    for path, _size, when in db.listing(f"{db.root}/{RUNS_DIR}"):
        name = path.rsplit("/", 1)[-1]
        number, _, suffix = name.partition(".")
        if number.isdigit() and suffix in ("start", "done"):
            out.setdefault(int(number), {})[suffix] = when
    return out


def read_mark(db: ObjectDB) -> GcMark:
    runs = _runs(db)
    if not runs:
        return GcMark(0, True)
    latest = max(runs)
    times = runs[latest]
    if "done" in times:
        return GcMark(latest, True)
    start = times.get("start")
    # Only a run in progress costs a clock read: one that crashed stops counting eventually.
    return GcMark(latest, start is not None and db.now() - start > STALE_RUN)


def settle(db: ObjectDB, chunk_ids: Iterable[str], since: GcMark | None) -> None:
    """The commit check: make sure every chunk in *chunk_ids* is in ``chunks/``, unless no
    collection can have hidden one since *since* (None: a writer that did not read a mark,
    which is checked whenever the store was ever collected).

    Restores hidden chunks from ``fossils/``; raises :class:`ChunksCollectedError` if one is
    gone. Called after the snapshot or manifest is written, so that a collection starting later
    sees it (a collection lists references only after writing its start marker).
    """
    now = read_mark(db)
    if since is None:
        if now.run == 0:
            return
    elif since.unchanged_at(now):
        return
    ids = sorted(with_bases(set(chunk_ids), _edges(db)))

    def check(cid: str) -> str | None:
        if db.exists(Kind.CHUNK, cid) or restore(db, cid):
            return None
        return cid

    workers = _WORKERS_LOCAL if db.location.is_local else _WORKERS_REMOTE
    with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-settle") as pool:
        missing = [cid for cid in pool.map(check, ids) if cid is not None]
    if missing:
        raise ChunksCollectedError(
            f"{len(missing)} chunk(s) of the new content (first {missing[0][:12]}) were removed "
            f"by a garbage collection of {db.location.url} that ran meanwhile; nothing was "
            "committed")


def _edges(db: ObjectDB) -> dict[str, str]:
    """{chunk id: base id} of every chunk stored as a parent delta."""
    return {cid: base for cid, base, _when in db.delta_edges()}


def with_bases(ids: set[str], edges: dict[str, str]) -> set[str]:
    """*ids* and the bases their deltas are read with, transitively (chains are short)."""
    out = set(ids)
    todo = [cid for cid in ids if cid in edges]
    while todo:
        base = edges[todo.pop()]
        if base not in out:
            out.add(base)
            if base in edges:
                todo.append(base)
    return out


def restore(db: ObjectDB, cid: str) -> bool:
    """Put a hidden chunk back in ``chunks/``; False if there is no fossil of it."""
    fossil = db.fossil_path(cid)
    try:
        db.copy_path(fossil, db.path(Kind.CHUNK, cid))
    except FileNotFoundError:
        return False
    db.delete_path(fossil)
    return True


# -- the collection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GcItem:
    """One chunk the collection acted on (or would act on, in a dry run), and why."""

    id: str
    size: int  # stored bytes, header included
    action: str  # "hide", "delete", "restore", or "purge" (a quarantined copy)
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "action": self.action, "reason": self.reason}


@dataclass
class GcReport:
    store: str
    dry_run: bool
    grace: timedelta
    run: int | None = None  # the run number written to gc/runs/ (None in a dry run)
    snapshots: int = 0
    manifests: int = 0
    referenced: int = 0  # distinct chunks that snapshots and manifests use
    chunks: int = 0  # chunk objects listed
    items: list[GcItem] = field(default_factory=list)
    young: int = 0  # unreferenced chunks kept because they are younger than the grace period
    young_bytes: int = 0
    waiting: int = 0  # fossils kept because they were hidden less than the grace period ago
    waiting_bytes: int = 0
    deleted_snapshots: list[str] = field(default_factory=list)
    # Versions deleted first, by whoever drives the collection (retention policies): as that
    # layer reports them, since the store knows nothing of registries.
    versions: list[dict[str, Any]] = field(default_factory=list)

    def _of(self, action: str) -> list[GcItem]:
        return [i for i in self.items if i.action == action]

    @property
    def hidden(self) -> list[GcItem]:
        return self._of("hide")

    @property
    def deleted(self) -> list[GcItem]:
        return self._of("delete")

    @property
    def restored(self) -> list[GcItem]:
        return self._of("restore")

    @property
    def purged(self) -> list[GcItem]:
        return self._of("purge")

    @property
    def bytes_reclaimed(self) -> int:
        return sum(i.size for i in self.deleted) + sum(i.size for i in self.purged)

    @property
    def bytes_hidden(self) -> int:
        return sum(i.size for i in self.hidden)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store, "dry_run": self.dry_run,
            "grace_seconds": self.grace.total_seconds(), "run": self.run,
            "snapshots": self.snapshots, "manifests": self.manifests,
            "referenced_chunks": self.referenced, "chunks": self.chunks,
            "hidden": len(self.hidden), "bytes_hidden": self.bytes_hidden,
            "deleted": len(self.deleted), "bytes_reclaimed": self.bytes_reclaimed,
            "restored": len(self.restored), "purged": len(self.purged),
            "young": self.young, "young_bytes": self.young_bytes,
            "waiting": self.waiting, "waiting_bytes": self.waiting_bytes,
            "deleted_snapshots": list(self.deleted_snapshots),
            "versions": list(self.versions),
            "items": [i.to_json() for i in self.items],
        }


def _who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return ""


def _age(delta: timedelta) -> str:
    secs = max(0, int(delta.total_seconds()))
    if secs < 120:
        return f"{secs} s"
    if secs < 7200:
        return f"{secs // 60} min"
    if secs < 172800:
        return f"{secs // 3600} h"
    return f"{secs // 86400} days"


def _start_run(db: ObjectDB, grace: timedelta) -> tuple[int, datetime]:
    """Write this run's start marker (a conditional create: two collections cannot both start
    run N) and return its number and the service's time of the write."""
    runs = _runs(db)
    if runs:
        latest = max(runs)
        times = runs[latest]
        if "done" not in times and "start" in times:
            now = db.now()
            if now - times["start"] < STALE_RUN:
                raise StoreError(
                    f"another garbage collection of {db.location.url} is running (run {latest}, "
                    f"started {times['start']:%Y-%m-%d %H:%M:%S} UTC)",
                    hint=f"wait for it to finish; a run that crashed stops counting "
                    f"{int(STALE_RUN.total_seconds() // 3600)} h after it started")
    number = max(runs, default=0) + 1
    blob = json.dumps({"run": number, "by": _who(), "grace_seconds": grace.total_seconds()},
                      sort_keys=True).encode()
    path = f"{db.root}/{RUNS_DIR}/{_marker(number, 'start')}"
    if not db.put_raw_once(path, blob):
        raise StoreError(f"another garbage collection of {db.location.url} started at the same "
                         "moment", hint="run it again once that one has finished")
    when = next((t for p, _s, t in db.listing(f"{db.root}/{RUNS_DIR}") if p.endswith(
        _marker(number, "start"))), None)
    return number, when or db.now()


def _references(store: Store, report: GcReport, ignore: Collection[str]) -> dict[str, str]:
    """{chunk id: who uses it} over every snapshot (but those in *ignore*) and run manifest."""
    refs: dict[str, str] = {}

    def load(sid: str) -> tuple[str, Any]:
        try:
            return sid, store.load_snapshot(sid)
        except NotFoundError:
            return sid, None  # deleted since it was listed: it references nothing now

    workers = _WORKERS_LOCAL if store.location.is_local else _WORKERS_REMOTE
    with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-gc") as pool:
        for sid, snap in pool.map(load, [s for s in store.snapshot_ids() if s not in ignore]):
            if snap is None:
                continue
            report.snapshots += 1
            for entry in snap.files:
                for cid, _n in entry.chunks:
                    refs.setdefault(cid, f"snapshot {sid[:12]} ({snap.name})")
    for where, entry in store.runs().all_entries():
        report.manifests += 1
        for cid, _n in entry.chunks:
            refs.setdefault(cid, f"run manifest {where}")
    return refs


def reclaimable(store: Store, chunk_ids: Collection[str]) -> tuple[int, int]:
    """``(chunks, bytes)`` of *chunk_ids* that a collection would reclaim now that nothing
    references them: held in ``chunks/`` and used by no snapshot, no run manifest and no kept
    delta (the chunks of deleted snapshots, counted right after their deletion). The bytes are
    the stored objects' sizes, headers included, as a collection reports them."""
    wanted = set(chunk_ids)
    if not wanted:
        return 0, 0
    refs = _references(store, GcReport(store.url, True, timedelta(0)), ())
    edges = {cid: base for cid, base, _when in store.db.delta_edges()}
    kept = with_bases(set(refs), edges)
    sizes = store.chunk_sizes()
    free = [sizes[cid] for cid in wanted - kept if cid in sizes]
    return len(free), sum(free)


def collect(
    store: Store,
    grace: timedelta,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    ignore_snapshots: Collection[str] = (),
) -> GcReport:
    """One collection run over *store* (docs/format.md §13). *progress* gets 1 per chunk or
    fossil examined. *ignore_snapshots* count as deleted: a dry run of deleting versions and
    then collecting passes the snapshots it would have deleted (a real run must delete them)."""
    if ignore_snapshots and not dry_run:
        raise StoreError("snapshots can only be ignored in a dry run",
                         hint="delete them with Store.delete_snapshot first")
    if grace < timedelta(0):
        raise StoreError("the grace period cannot be negative",
                         hint=Hint("e.g. {grace}", grace=Option(api="grace=timedelta(hours=1)",
                                                               cli="--grace 1h")))
    db = store.db
    report = GcReport(store.url, dry_run, grace)
    if store.descriptor() is None:
        return report  # no store here yet: nothing to collect, and nothing to create
    if dry_run:
        now = db.now()
    else:
        store.ensure_initialized()
        report.run, now = _start_run(db, grace)
    done: dict[str, Any] = {"run": report.run}
    try:
        # References are listed only after the start marker exists: a writer that commits
        # later sees this run in its commit check.
        try:
            refs = _references(store, report, set(ignore_snapshots))
        except IntegrityError as exc:
            raise IntegrityError(
                f"garbage collection stopped, nothing removed: {exc.message}",
                hint="a damaged snapshot or manifest hides what it references; run "
                "`modelkeep verify`, then delete or restore the damaged object") from None
        # A kept chunk stored as a delta keeps its base (docs/format.md §13.4).
        edges = {cid: (base, when) for cid, base, when in db.delta_edges()}
        for cid in with_bases(set(refs), {c: b for c, (b, _w) in edges.items()}) - set(refs):
            refs[cid] = "a kept chunk stored as a delta of it"
        report.referenced = len(refs)
        fossils = _phase_two(db, refs, now, grace, report, progress)
        chunks = _phase_one(db, refs, now, grace, report, progress)
        _drop_edges(db, edges, chunks | fossils, now, grace, report)
        _purge_quarantine(db, now, grace, report)
        done.update(hidden=len(report.hidden), deleted=len(report.deleted),
                    restored=len(report.restored), bytes_reclaimed=report.bytes_reclaimed)
    except BaseException as exc:
        done["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if not dry_run and report.run is not None:
            # Written even after a failure, so that writers stop treating the run as live.
            db.put_raw_once(f"{db.root}/{RUNS_DIR}/{_marker(report.run, 'done')}",
                            json.dumps(done, sort_keys=True).encode())
    if not dry_run:
        store.forget_known()
    return report


def _phase_two(
    db: ObjectDB, refs: dict[str, str], now: datetime, grace: timedelta, report: GcReport,
    progress: Callable[[int], None] | None,
) -> set[str]:
    """Fossils from earlier runs: restore the referenced, delete the rest once hidden for the
    grace period (every writer shorter than that which saw them has committed by now, and this
    run has seen its snapshot). Returns the fossils listed."""
    jobs: list[tuple[str, int, str, str]] = []
    listed = list(db.ids_with_times(f"{db.root}/{FOSSILS}"))
    for cid, size, hidden_at in listed:
        if progress is not None:
            progress(1)
        if cid in refs:
            jobs.append((cid, size, "restore", f"hidden earlier, but used by {refs[cid]}"))
        elif now - hidden_at >= grace:
            jobs.append((cid, size, "delete",
                         f"unreferenced, hidden {_age(now - hidden_at)} ago"))
        else:
            report.waiting += 1
            report.waiting_bytes += size
    _apply(db, jobs, report, dry_run=report.dry_run)
    return {cid for cid, _size, _when in listed}


def _phase_one(
    db: ObjectDB, refs: dict[str, str], now: datetime, grace: timedelta, report: GcReport,
    progress: Callable[[int], None] | None,
) -> set[str]:
    """Chunks nothing references and older than the grace period move to ``fossils/``.
    Returns the chunks listed."""
    jobs: list[tuple[str, int, str, str]] = []
    listed = list(db.ids_with_times(f"{db.root}/chunks"))
    for cid, size, written in listed:
        report.chunks += 1
        if progress is not None:
            progress(1)
        if cid in refs:
            continue
        if now - written >= grace:
            jobs.append((cid, size, "hide", "no snapshot or run manifest uses it; written "
                         f"{_age(now - written)} ago"))
        else:
            report.young += 1
            report.young_bytes += size
    _apply(db, jobs, report, dry_run=report.dry_run)
    return {cid for cid, _size, _when in listed}


def _drop_edges(db: ObjectDB, edges: dict[str, tuple[str, datetime]], listed: set[str],
                now: datetime, grace: timedelta, report: GcReport) -> None:
    """Delta records whose chunk is gone (deleted by this or an earlier run, or never written
    by a writer that crashed in between) and older than the grace period. *listed*: the
    chunks and fossils this run listed."""
    if report.dry_run:
        return
    deleted = {i.id for i in report.deleted}
    for cid, (base, when) in edges.items():
        if now - when >= grace and (cid in deleted or cid not in listed):
            db.delete_path(db.delta_edge_path(cid, base))


def _purge_quarantine(db: ObjectDB, now: datetime, grace: timedelta, report: GcReport) -> None:
    """Damaged copies a repair moved aside (``quarantine/``), once they have been kept for the
    grace period (for inspection); and the damaged-chunk records of chunks no longer stored."""
    for cid, size, when in list(db.ids_with_times(f"{db.root}/{QUARANTINE}")):
        if now - when >= grace:
            if not report.dry_run:
                db.delete_path(db.quarantine_path(cid))
            report.items.append(GcItem(cid, size, "purge", f"a damaged copy moved aside by a "
                                       f"repair {_age(now - when)} ago"))
    if not report.dry_run:
        for cid in db.damaged_ids():
            if not db.exists(Kind.CHUNK, cid):
                db.clear_damaged(cid)


def _apply(
    db: ObjectDB, jobs: list[tuple[str, int, str, str]], report: GcReport, *, dry_run: bool
) -> None:
    def act(job: tuple[str, int, str, str]) -> GcItem | None:
        cid, size, action, reason = job
        if not dry_run:
            if action == "hide":
                try:
                    db.copy_path(db.path(Kind.CHUNK, cid), db.fossil_path(cid))
                except FileNotFoundError:
                    return None  # gone meanwhile (another collection crashed mid-way)
                db.delete_path(db.path(Kind.CHUNK, cid))
            elif action == "delete":
                if not db.delete_path(db.fossil_path(cid)):
                    return None
            elif not restore(db, cid):
                return None
        return GcItem(cid, size, action, reason)

    workers = _WORKERS_LOCAL if db.location.is_local else _WORKERS_REMOTE
    with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-gc") as pool:
        for item in pool.map(act, jobs):
            if item is not None:
                report.items.append(item)

