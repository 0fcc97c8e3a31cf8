"""The ingest pipeline on local disk: digests, object files, and sources that change under it."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from blake3 import blake3

from modelkeep.errors import IntegrityError, SourceError
from modelkeep.store import Kind, Snapshot, Store, scan_local, utc_now
from modelkeep.store import objects as objects_module
from modelkeep.store.snapshot import parse
from tests.helpers import tensors, write_model


def _store(tmp_path: Path, name: str = "store") -> Store:
    store = Store.open(str(tmp_path / name))
    store.ensure_initialized()
    return store


def _object_files(store: Store) -> list[Path]:
    return sorted(p for p in Path(store.url).rglob("*") if p.is_file())


def test_entries_list_chunks_in_order_and_digest_them(tmp_path: Path) -> None:
    # Many small tensors, so the workers finish out of order; the entry must not.
    src = write_model(tmp_path / "m", tensors(n=40, rows=64, cols=96))
    store = _store(tmp_path)
    entries, stats = store.ingest(scan_local(src))
    assert stats.files == 5
    for entry in entries:
        data = (src / entry.path).read_bytes()
        joined = b"".join(bytes(store.db.get(Kind.CHUNK, cid)) for cid, _n in entry.chunks)
        assert joined == data, entry.path
        # The digest as a second reader would recompute it from the file's bytes (format §5.3).
        listed, pos = bytearray(), 0
        for _cid, n in entry.chunks:
            listed += blake3(data[pos : pos + n]).digest() + n.to_bytes(8, "little")
            pos += n
        assert entry.digest == blake3(bytes(listed)).hexdigest(), entry.path


def test_snapshot_whose_digest_does_not_match_its_chunks_is_refused(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    store = _store(tmp_path)
    entries, _ = store.ingest(scan_local(src))
    forged = replace(entries[0], digest=blake3(b"other content").hexdigest())
    snap = Snapshot(name="x", files=(forged,), created=utc_now())
    with pytest.raises(IntegrityError, match="does not match its chunk list"):
        parse(snap.encode())


def test_objects_are_read_only_and_leave_no_temporary_files(tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", tensors(n=4))
    store = _store(tmp_path)
    store.ingest(scan_local(src))
    chunk_files = [p for p in _object_files(store) if "chunks" in p.parts]
    assert chunk_files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in chunk_files)
    assert not [p for p in Path(store.url).rglob(".tmp-*")]


def test_fallback_without_anonymous_temp_files_writes_the_same_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_model(tmp_path / "m", tensors(n=4))
    first = _store(tmp_path, "a")
    entries_a, _ = first.ingest(scan_local(src))
    monkeypatch.setattr(objects_module, "_TMPFILE_OK", False)
    second = _store(tmp_path, "b")
    entries_b, stats = second.ingest(scan_local(src))
    assert entries_a == entries_b
    assert stats.chunks_added == stats.chunks_total
    rel = [p.relative_to(second.url) for p in _object_files(second)]
    assert rel == [p.relative_to(first.url) for p in _object_files(first)]
    assert not [p for p in Path(second.url).rglob(".tmp-*")]


@pytest.mark.parametrize("filename", ["model.safetensors", "weights.bin"])
@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_after_scan_is_refused(tmp_path: Path, filename: str, change: str) -> None:
    src = write_model(tmp_path / "m", tensors(n=6), extra=False)
    if filename != "model.safetensors":
        (src / "model.safetensors").rename(src / filename)
    sources = scan_local(src)
    path = src / filename
    if change == "grow":
        with open(path, "ab") as f:
            f.write(os.urandom(5000))
    else:
        os.truncate(path, path.stat().st_size - 70_000)
    store = _store(tmp_path)
    with pytest.raises(SourceError, match=f"{filename}.*changed while being read"):
        store.ingest(sources)
    assert list(store.snapshot_ids()) == []
