"""Where the bytes go (``modelkeep du``): per version, per model and for the whole store, what the
versions hold and what the store spends on them, computed from snapshots and one listing of the
store's chunk objects, never from chunk bodies.

The figures, for a set of versions:

* ``size``: the logical bytes, the sum of the versions' file sizes (what they would take without
  modelkeep, a copy each).
* ``bytes_held``: the stored bytes of the distinct chunk objects the versions need, headers
  included, each chunk counted once however many files, versions or models share it. A chunk
  stored as a parent delta needs its base (and the base's base) to be read, so the bases count
  too, as garbage collection keeps them (docs/format.md §13.4).
* ``bytes_unique``: of those, the bytes no other holder needs: what deleting these versions would
  give back once a garbage collection has run. The other holders are every other registered
  version, the snapshots in the store that no registered version names, and the MLflow run
  artifacts stored there: all of them keep chunks from a collection.

The store total adds what the chunk listing holds beyond the versions: chunks only run artifacts
or unregistered snapshots need, and chunks nothing needs (a collection removes them once they are
older than its grace period). A chunk a snapshot lists but the listing lacks (damaged, or hidden
by a running collection) counts 0 bytes and is reported as missing.

Only versions stored in this Keep's store count; the registry's versions of other stores (copies
made by ``sync``, versions registered through another store) are counted in ``elsewhere``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelkeep.errors import IntegrityError, InvalidInputError, NotFoundError
from modelkeep.ops._common import snapshot_of
from modelkeep.refs import validate_name
from modelkeep.store import parse_uri
from modelkeep.store.gc import with_bases

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.registry import RegistryVersion
    from modelkeep.store import Snapshot

_RUNS = "runs"  # the holder of the chunks MLflow run artifacts use
_UNREGISTERED = "unregistered"  # the holder of the chunks of snapshots no version names


def _ratio(stored: int, size: int) -> float | None:
    return stored / size if size else None


@dataclass(frozen=True)
class VersionUsage:
    """One version's figures (see the module docstring)."""

    name: str
    version: int
    snapshot_id: str
    size: int
    bytes_held: int
    bytes_unique: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "ref": self.ref,
                "snapshot_id": self.snapshot_id, "size": self.size, "bytes_held": self.bytes_held,
                "bytes_unique": self.bytes_unique,
                "stored_ratio": _ratio(self.bytes_held, self.size)}


@dataclass(frozen=True)
class ModelUsage:
    """One model's figures: its versions together (shared chunks counted once)."""

    name: str
    versions: tuple[VersionUsage, ...]
    size: int
    bytes_held: int
    bytes_unique: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version_count": len(self.versions), "size": self.size,
                "bytes_held": self.bytes_held, "bytes_unique": self.bytes_unique,
                "stored_ratio": _ratio(self.bytes_held, self.size),
                "versions": [v.to_json() for v in self.versions]}


@dataclass(frozen=True)
class StoreUsage:
    """The answer of :func:`usage`: the models asked about, and the store as a whole."""

    store: str
    models: tuple[ModelUsage, ...]
    versions: int  # every registered version stored here (all models, even with one asked)
    size: int  # their logical bytes
    bytes_held: int  # distinct chunks they need
    bytes_runs: int  # chunks only run artifacts need
    bytes_unregistered: int  # chunks only snapshots no registered version names need
    bytes_unreferenced: int  # chunks nothing needs: the next collections' to remove
    bytes_chunks: int  # every chunk object listed
    chunks: int
    missing_chunks: int  # listed by a snapshot, absent from chunks/
    unregistered_snapshots: int
    elsewhere: int  # registered versions that live in another store
    skipped: tuple[str, ...] = field(default_factory=tuple)  # versions whose snapshot is unreadable

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "models": [m.to_json() for m in self.models],
                "total": {"versions": self.versions, "size": self.size,
                          "bytes_held": self.bytes_held,
                          "stored_ratio": _ratio(self.bytes_held, self.size),
                          "bytes_runs": self.bytes_runs,
                          "bytes_unregistered": self.bytes_unregistered,
                          "bytes_unreferenced": self.bytes_unreferenced,
                          "bytes_chunks": self.bytes_chunks, "chunks": self.chunks,
                          "missing_chunks": self.missing_chunks,
                          "unregistered_snapshots": self.unregistered_snapshots,
                          "elsewhere": self.elsewhere, "skipped": list(self.skipped)}}


def usage(keep: Keep, name: str | None = None) -> StoreUsage:
    """The figures of model *name* (every model when None) and of the whole store."""
    store = keep.store
    if name is not None:
        validate_name(name)
        keep.registry.versions(name)  # an unknown model is an error, not an empty answer
    models = keep.registry.models()
    here: list[RegistryVersion] = []
    elsewhere = 0
    for model in models:
        for rv in keep.registry.versions(model):
            try:
                parsed = parse_uri(rv.source)
            except InvalidInputError:
                continue  # registered by another tool: nothing of it is in a modelkeep store
            if parsed.locator == store.location.locator:
                here.append(rv)
            else:
                elsewhere += 1

    listed = set(store.snapshot_ids())

    def load(sid: str) -> tuple[str, Snapshot | None]:
        try:
            return sid, keep.stores.snapshot(store, sid)
        except (IntegrityError, NotFoundError, InvalidInputError):
            return sid, None

    registered = {snapshot_of(rv) or "" for rv in here}
    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-du") as pool:
        snaps = dict(pool.map(load, sorted(registered | listed)))
    sizes = store.chunk_sizes()
    bases = store.delta_bases()

    def needs(ids: Iterable[str]) -> set[str]:
        return with_bases(set(ids), bases)

    # What each holder needs: each version, the run artifacts, the unregistered snapshots.
    per_version: dict[tuple[str, int], set[str]] = {}
    skipped = []
    for rv in here:
        snap = snaps.get(snapshot_of(rv) or "")
        if snap is None:
            skipped.append(f"{rv.name}@{rv.version}")
            continue
        per_version[(rv.name, rv.version)] = needs(c for f in snap.files for c, _n in f.chunks)
    runs = needs(c for _where, entry in store.runs().all_entries() for c, _n in entry.chunks)
    unregistered_ids = sorted(listed - registered)
    unregistered = needs(c for sid in unregistered_ids if (s := snaps.get(sid)) is not None
                         for f in s.files for c, _n in f.chunks)

    def cost(ids: Iterable[str]) -> int:
        return sum(sizes.get(c, 0) for c in ids)

    by_version = Counter(c for ids in per_version.values() for c in ids)
    for c in runs | unregistered:
        by_version[c] += 1  # another holder: never unique to a version
    per_model: dict[str, set[str]] = {}
    for (model, _number), ids in per_version.items():
        per_model.setdefault(model, set()).update(ids)
    by_model = Counter(c for ids in per_model.values() for c in ids)
    for c in runs | unregistered:
        by_model[c] += 1

    out = []
    for model in ([name] if name is not None else models):
        versions = []
        for rv in (v for v in here if v.name == model and (v.name, v.version) in per_version):
            ids = per_version[(rv.name, rv.version)]
            snap = snaps[snapshot_of(rv) or ""]
            assert snap is not None
            versions.append(VersionUsage(
                rv.name, rv.version, snapshot_of(rv) or "", snap.size, cost(ids),
                cost(c for c in ids if by_version[c] == 1)))
        ids = per_model.get(model, set())
        out.append(ModelUsage(model, tuple(versions), sum(v.size for v in versions), cost(ids),
                              cost(c for c in ids if by_model[c] == 1)))

    held_all: set[str] = set().union(*per_version.values())
    return StoreUsage(
        store=store.url, models=tuple(out), versions=len(per_version),
        size=sum(s.size for rv in here if (s := snaps.get(snapshot_of(rv) or "")) is not None),
        bytes_held=cost(held_all),
        bytes_runs=cost(runs - held_all),
        bytes_unregistered=cost(unregistered - held_all - runs),
        bytes_unreferenced=cost(set(sizes) - held_all - runs - unregistered),
        bytes_chunks=sum(sizes.values()), chunks=len(sizes),
        missing_chunks=len((held_all | runs | unregistered) - set(sizes)),
        unregistered_snapshots=len(unregistered_ids), elsewhere=elsewhere,
        skipped=tuple(skipped))
