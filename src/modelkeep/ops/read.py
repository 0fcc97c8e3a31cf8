"""Reading versions: look-ups, listing, pull, one file, diff and verify.

Each function resolves the reference once through the registry, then reads the store the
version's URI names through the Keep's store and snapshot cache (:class:`~modelkeep.wiring.Stores`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from modelkeep.catalog.tags import TAG_PREFIX
from modelkeep.errors import NotFoundError
from modelkeep.ops._common import load, resolve, version_of
from modelkeep.ops.results import Diff, FileChange, Model, ModelVersion, TensorChanges
from modelkeep.refs import validate_name
from modelkeep.registry import RegistryVersion
from modelkeep.store import (
    FileEntry,
    Snapshot,
    SnapshotFile,
    Store,
    Tensor,
    VerifyReport,
    parse_uri,
)

if TYPE_CHECKING:
    from modelkeep.keep import Keep

Progress = Callable[[int], None]


def get(keep: Keep, ref: str) -> ModelVersion:
    """The version *ref* names (``NAME@3``, ``NAME@alias``, ``NAME@latest`` or ``NAME``)."""
    rv = resolve(keep, ref)
    _store, snap, sid = load(keep, rv)
    return version_of(rv, snap, sid)


def snapshot(keep: Keep, ref: str) -> Snapshot:
    return load(keep, resolve(keep, ref))[1]


def snapshot_at(keep: Keep, uri: str) -> tuple[Store, Snapshot]:
    """The store and snapshot a ``modelkeep://`` URI names, without asking the registry
    (pointer files carry URIs, and must resolve even where the registry was rebuilt)."""
    parsed = parse_uri(uri)
    store = keep.stores.store_for(parsed.locator)
    return store, keep.stores.snapshot(store, parsed.snapshot_id)


def versions(keep: Keep, name: str) -> list[ModelVersion]:
    """Every version of *name*, oldest first."""
    validate_name(name)

    def one(rv: RegistryVersion) -> ModelVersion | None:
        try:
            _s, snap, sid = load(keep, rv)
        except NotFoundError:
            return None  # a version some other tool registered under this name
        return version_of(rv, snap, sid)

    # Snapshots are small but each is a round trip on an object store: fetch them together.
    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-list") as pool:
        loaded = list(pool.map(one, keep.registry.versions(name)))
    return [v for v in loaded if v is not None]


def models(keep: Keep) -> list[str]:
    return keep.registry.models()


def model(keep: Keep, name: str) -> Model:
    """The registered model *name*: newest version, aliases, description and user tags."""
    validate_name(name)
    rm = keep.registry.get_model(name)
    latest = keep.registry.latest(name)
    return Model(name=rm.name, latest=latest.version if latest else None,
                 aliases=dict(rm.aliases), description=rm.description,
                 tags={k: v for k, v in rm.tags.items() if not k.startswith(TAG_PREFIX)})


def all_models(keep: Keep) -> list[Model]:
    """Every registered model, by name."""

    def one(name: str) -> Model | None:
        try:
            return model(keep, name)
        except NotFoundError:
            return None  # deleted meanwhile

    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-models") as pool:
        return [m for m in pool.map(one, keep.registry.models()) if m is not None]


def open_file(keep: Keep, ref: str, path: str) -> SnapshotFile:
    """A seekable, read-only binary stream of one file that fetches only the chunks read."""
    store, snap, _sid = load(keep, resolve(keep, ref))
    return store.open_file(snap, path)


def diff(keep: Keep, ref_a: str, ref_b: str) -> Diff:
    """Files added, removed and changed from *ref_a* to *ref_b*, and for safetensors files
    the tensors added, removed and changed (by content, dtype or shape)."""
    a, b = snapshot(keep, ref_a), snapshot(keep, ref_b)
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


def verify(keep: Keep, ref: str | None = None, progress: Progress | None = None) -> VerifyReport:
    """Fetch and check every chunk of one version, or of every snapshot in the store."""
    if ref is None:
        return keep.store.verify(progress=progress)
    rv = resolve(keep, ref)
    parsed = parse_uri(rv.source)
    return keep.stores.store_for(parsed.locator).verify([parsed.snapshot_id], progress=progress)


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
