"""The store-level contract: put, get, exists, conditional create, delete, list and the garbage
collection mark, the same tests on memory, local disk, S3 (moto) and Azure (Azurite), with no
registry and no MLflow involved (the store stands alone, docs/format.md)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from modelkeep.errors import IntegrityError, NotFoundError
from modelkeep.store import Kind, Snapshot, Store, scan_local, utc_now
from modelkeep.store.gc import GcMark
from tests.backends import BACKENDS, make_backend

NOW = timedelta(0)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Store:
    backend = make_backend(request.param, request, tmp_path_factory)
    opened = Store.open(backend.new_store_url(), backend.options)
    opened.ensure_initialized()
    return opened


def _version(store: Store, tmp_path: Path, content: bytes, name: str = "m") -> Snapshot:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "weights.bin").write_bytes(content)
    files, _stats = store.ingest(scan_local(tmp_path / "weights.bin"))
    return Snapshot(name=name, files=files, created=utc_now())


def test_put_get_exists_and_create_only_once(store: Store) -> None:
    raw = b"contract chunk " * 1000
    oid = store.object_id(raw)
    assert not store.has_chunk(oid)
    assert store.db.put(Kind.CHUNK, oid, raw) > 0  # the stored size of what it created
    assert store.has_chunk(oid)
    assert bytes(store.db.get(Kind.CHUNK, oid)) == raw
    # A second create of the same object is refused by the backend, and changes nothing.
    assert store.db.put(Kind.CHUNK, oid, raw) == 0
    assert bytes(store.db.get(Kind.CHUNK, oid)) == raw
    assert oid in set(store.db.iter_ids(Kind.CHUNK))


def test_a_missing_or_mislabelled_object_is_refused(store: Store) -> None:
    raw = b"right bytes"
    with pytest.raises(NotFoundError):
        store.db.get(Kind.CHUNK, store.object_id(raw))
    wrong = store.object_id(b"other bytes")
    store.db.put(Kind.CHUNK, wrong, raw)  # stored under an id that is not its hash
    with pytest.raises(IntegrityError, match="does not match its id"):
        store.db.get(Kind.CHUNK, wrong)


def test_snapshots_save_load_list_and_delete(store: Store, tmp_path: Path) -> None:
    snap = _version(store, tmp_path, b"w" * 300_000)
    sid = store.save_snapshot(snap)
    assert store.has_snapshot(sid) and sid == store.snapshot_id(snap)
    assert store.save_snapshot(snap) == sid  # the same content is the same object
    assert store.load_snapshot(sid) == snap
    assert list(store.snapshot_ids()) == [sid]
    store.delete_snapshot(sid)
    assert not store.has_snapshot(sid) and list(store.snapshot_ids()) == []
    with pytest.raises(NotFoundError):
        store.load_snapshot(sid)
    # Its chunks stay until a collection: deleting a snapshot never deletes chunks.
    assert all(store.has_chunk(cid) for f in snap.files for cid, _n in f.chunks)


def test_gc_mark_and_two_phase_collection(store: Store, tmp_path: Path) -> None:
    kept = _version(store, tmp_path / "a", b"k" * 200_000, "kept")
    store.save_snapshot(kept)
    loose = store.object_id(b"nobody uses this")
    store.db.put(Kind.CHUNK, loose, b"nobody uses this")
    assert store.gc_mark() == GcMark(0, True)  # never collected

    first = store.gc(grace=NOW)
    assert [i.id for i in first.hidden] == [loose]  # hidden, not yet deleted
    assert store.gc_mark() == GcMark(first.run or 0, True) and (first.run or 0) >= 1
    second = store.gc(grace=NOW)
    assert [i.id for i in second.deleted] == [loose]
    assert not store.has_chunk(loose)
    assert store.gc_mark().run > (first.run or 0)
    # What a snapshot references is never touched.
    assert all(store.has_chunk(cid) for f in kept.files for cid, _n in f.chunks)


def test_a_writer_that_overlapped_a_collection_is_told(store: Store, tmp_path: Path) -> None:
    mark = store.gc_mark()  # read before the writer looks at chunks, as ingest does
    snap = _version(store, tmp_path, b"x" * 200_000)
    store.gc(grace=NOW)  # hides them: no snapshot references them yet
    sid = store.save_snapshot(snap, since=mark)  # the commit check brings them back
    assert store.has_snapshot(sid)
    assert all(store.has_chunk(cid) for f in snap.files for cid, _n in f.chunks)
