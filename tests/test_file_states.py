"""Registering an unchanged folder again reads none of its files (store/filestate.py): what is
recorded, when it is trusted, and every way a changed or unusable file is read again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from modelkeep.store import FileEntry, IngestStats, Kind, Snapshot, Store, scan_local, utc_now
from modelkeep.store.filestate import RACY_SECONDS
from tests.helpers import tensors, tree_digest, write_model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELKEEP_FILE_STATES", raising=False)


def _settled_model(tmp_path: Path) -> Path:
    """A model folder whose files were written long enough ago to be remembered."""
    src = write_model(tmp_path / "m", tensors(seed=3, n=4))
    time.sleep(RACY_SECONDS + 0.2)
    return src


def _ingest(store: Store, src: Path) -> tuple[tuple[FileEntry, ...], IngestStats]:
    return store.ingest(scan_local(src))


def test_an_unchanged_folder_is_not_read_again(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    src = _settled_model(tmp_path)
    first, stats1 = _ingest(store, src)
    assert stats1.files_unread == 0 and stats1.chunks_added > 0
    again, stats2 = _ingest(store, src)
    assert again == first
    assert stats2.files_unread == len(first) and stats2.chunks_added == 0
    assert stats2.bytes_total == stats1.bytes_total


def test_a_file_rewritten_with_its_old_times_is_read_again(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    src = _settled_model(tmp_path)
    first, _ = _ingest(store, src)
    target = next(p for p in src.iterdir() if p.suffix == ".safetensors")
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # the change time moves anyway
    again, stats = _ingest(store, src)
    assert stats.files_unread == len(first) - 1
    changed = {e.path: e.digest for e in again}
    assert changed[target.name] != {e.path: e.digest for e in first}[target.name]
    sid = store.save_snapshot(_snapshot(again))
    store.materialize(store.load_snapshot(sid), tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(src)


def test_a_collected_chunk_makes_the_file_read_again(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    src = _settled_model(tmp_path)
    first, _ = _ingest(store, src)
    cid = first[0].chunks[0][0]
    Path(store.db.path(Kind.CHUNK, cid)).unlink()
    _again, stats = _ingest(store, src)
    assert stats.files_unread == len(first) - 1 and stats.chunks_added == 1
    assert store.db.exists(Kind.CHUNK, cid)


def test_a_file_written_just_before_is_not_remembered(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    src = write_model(tmp_path / "fresh", tensors(seed=4, n=2))
    _ingest(store, src)  # within the timestamps' granularity of its writing: racy
    _again, stats = _ingest(store, src)
    assert stats.files_unread == 0


def test_the_cache_can_be_turned_off_and_is_per_store(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = _settled_model(tmp_path)
    store = Store.open(str(tmp_path / "store"))
    _ingest(store, src)
    other = Store.open(str(tmp_path / "other"))
    _entries, stats = _ingest(other, src)
    assert stats.files_unread == 0 and stats.chunks_added > 0  # its own chunks, read
    monkeypatch.setenv("MODELKEEP_FILE_STATES", "off")
    _again, stats = _ingest(store, src)
    assert stats.files_unread == 0


def _snapshot(files: tuple[FileEntry, ...]) -> Snapshot:
    return Snapshot(name="m", files=files, created=utc_now())
