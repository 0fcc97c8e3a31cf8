"""A safetensors file of very many tiny tensors: few objects, no more bytes than the file, and a
snapshot that leaves the tensor map in the stored header (docs/format.md §5.4), which reading,
re-registering, diffing and syncing all still find."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelkeep
from modelkeep.errors import IntegrityError
from modelkeep.hooks import make_plugin_manager
from modelkeep.store import Kind, Snapshot, Store, scan_local, utc_now
from modelkeep.store.ingest import chunk_dtypes
from modelkeep.store.safetensors import read_layout
from modelkeep.store.snapshot import INLINE_TENSORS, parse
from modelkeep.store.sync import sync
from tests.backends import unique_name

COUNT = 100_000


def _tiny(folder: Path, count: int, *, changed: int | None = None) -> Path:
    """*count* tensors of shape (1,), float32, named like a model's layers; tensor *changed*
    holds another value."""
    values = np.arange(count, dtype=np.float32)
    if changed is not None:
        values[changed] = -1.0
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"layers.{i}.w": values[i : i + 1] for i in range(count)},
              str(folder / "model.safetensors"))
    return folder


def _disk(root: Path) -> tuple[int, int]:
    """(files, bytes) under *root*: what the store takes on disk, descriptor included."""
    sizes = [p.stat().st_size for p in root.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


def test_100000_four_byte_tensors_store_in_few_objects_and_under_the_file_size(
        tmp_path: Path) -> None:
    src = _tiny(tmp_path / "m", COUNT)
    size = (src / "model.safetensors").stat().st_size
    store = Store.open(str(tmp_path / "store"))
    files, _stats = store.ingest(scan_local(src))
    sid = store.save_snapshot(Snapshot(name="tiny", files=files, created=utc_now()))

    objects = sum(1 for _ in store.db.iter_ids(Kind.CHUNK)) + 1
    on_disk, stored = _disk(tmp_path / "store")
    assert objects < 1000 and on_disk < 1000
    assert stored <= size
    # The snapshot names the header instead of copying it: a few hundred bytes, not megabytes.
    assert store.db.size(Kind.SNAPSHOT, sid) < 4096
    [entry] = store.load_snapshot(sid).files
    assert entry.tensors is None and entry.header_end is not None and entry.is_safetensors

    # The map comes back from the stored header exactly as the file's own header gives it, and
    # every packed tensor gets the id of its own bytes.
    with open(src / "model.safetensors", "rb") as f:
        layout = read_layout(f, size)
    assert layout is not None
    assert store.tensor_map(entry) == layout.tensors
    with_ids = store.tensor_map(entry, digests=True)
    assert with_ids is not None and len(with_ids) == COUNT
    data = (src / "model.safetensors").read_bytes()
    t = with_ids[777]
    assert t.digest == store.db.object_id(memoryview(data)[t.start : t.end])

    # The same file again adds nothing; it pulls back byte for byte.
    _files, again = store.ingest(scan_local(src))
    assert again.chunks_added == 0
    out = store.materialize(store.load_snapshot(sid), tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == data


def test_a_file_at_the_limit_keeps_its_map_in_the_snapshot(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    at = store.ingest(scan_local(_tiny(tmp_path / "at", INLINE_TENSORS)))[0][0]
    over = store.ingest(scan_local(_tiny(tmp_path / "over", INLINE_TENSORS + 1)))[0][0]
    assert at.tensors is not None and len(at.tensors) == INLINE_TENSORS
    assert all(t.digest is not None for t in at.tensors)
    assert over.tensors is None and "tensors" not in over.to_json()["safetensors"]


def test_diff_finds_the_one_changed_tensor_among_many(tmp_path: Path,
                                                      mlflow_sqlite_uri: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    count = INLINE_TENSORS + 904
    keep.register(name, _tiny(tmp_path / "v1", count))
    keep.register(name, _tiny(tmp_path / "v2", count, changed=1234), parents=[f"{name}@1"])
    [f] = keep.diff(f"{name}@1", f"{name}@2").files
    assert f.tensors is not None
    assert f.tensors.changed == ("layers.1234.w",)
    assert f.tensors.unchanged == count - 1
    [detail] = f.tensors.details
    assert detail.max_abs_diff == 1235.0  # 1234.0 -> -1.0
    stat = keep.diff(f"{name}@1", f"{name}@2", content=False)
    assert stat.files[0].tensors is not None
    assert stat.files[0].tensors.changed == ("layers.1234.w",)


def test_show_counts_the_tensors_of_a_map_left_in_the_header(
        tmp_path: Path, mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from modelkeep.cli.main import main

    store = str(tmp_path / "store")
    name = unique_name()
    count = INLINE_TENSORS + 10
    modelkeep.open(store=store, registry=mlflow_sqlite_uri).register(
        name, _tiny(tmp_path / "v1", count))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["--store", store, "--registry", mlflow_sqlite_uri, "--json", "show",
                 f"{name}@1"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["files"]
    assert entry["tensors"] == count
    assert main(["--store", store, "--registry", mlflow_sqlite_uri, "show", f"{name}@1"]) == 0
    assert str(count) in capsys.readouterr().out


def test_sync_codes_the_packed_chunk_by_its_dtype(tmp_path: Path) -> None:
    src = Store.open(str(tmp_path / "a"))
    files, _ = src.ingest(scan_local(_tiny(tmp_path / "m", INLINE_TENSORS + 1)))
    sid = src.save_snapshot(Snapshot(name="tiny", files=files, created=utc_now()))
    [entry] = files
    header_id = entry.chunks[0][0]
    dtypes = chunk_dtypes(entry, src.db)
    assert header_id not in dtypes and set(dtypes.values()) == {"F32"}
    dst = Store.open(str(tmp_path / "b"))
    sync(src, dst, [sid])
    out = dst.materialize(dst.load_snapshot(sid), tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == \
        (tmp_path / "m" / "model.safetensors").read_bytes()


def test_an_entry_whose_header_is_out_of_range_is_refused(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    files, _ = store.ingest(scan_local(_tiny(tmp_path / "m", INLINE_TENSORS + 1)))
    snap = Snapshot(name="tiny", files=files, created=utc_now())
    for bad in (4, files[0].size + 1):
        doc = snap.to_json()
        doc["files"][0]["safetensors"]["header_end"] = bad
        with pytest.raises(IntegrityError, match=r"header of 'model\.safetensors' is out of range"):
            parse(json.dumps(doc).encode())


def test_a_stored_header_that_does_not_parse_is_reported(tmp_path: Path) -> None:
    # A file cut by FastCDC whose entry claims a safetensors header: a hostile or damaged
    # snapshot. Reading its map fails with the file named, never with a wrong map.
    src = tmp_path / "m"
    src.mkdir()
    (src / "model.bin").write_bytes(struct.pack("<Q", 2) + b"[]" + os.urandom(100))
    store = Store.open(str(tmp_path / "store"))
    files, _ = store.ingest(scan_local(src))
    doc = Snapshot(name="x", files=files, created=utc_now()).to_json()
    doc["files"][0]["safetensors"] = {"header_end": 10}
    [entry] = parse(json.dumps(doc).encode()).files
    with pytest.raises(IntegrityError, match=r"stored header of 'model\.bin' does not parse"):
        store.tensor_map(entry)
