"""The ``modelkeep://`` fsspec filesystem: listing, reading, ranges, and lazy reads from S3."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import fsspec
import numpy as np
import pytest
from safetensors.numpy import save_file

import modelkeep
from modelkeep.store.objects import ObjectDB
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def version(tmp_path: Path, mlflow_sqlite_uri: str) -> tuple[modelkeep.ModelVersion, Path]:
    src = write_model(tmp_path / "m", tensors(n=4))
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    return keep.register(unique_name(), src), src


def test_entry_point_registers_the_scheme() -> None:
    fs = fsspec.filesystem("modelkeep")
    assert type(fs).__name__ == "ModelkeepFileSystem"


def test_open_reads_whole_files(version: tuple[modelkeep.ModelVersion, Path]) -> None:
    v, src = version
    for rel in ("model.safetensors", "tokenizer/vocab.txt", "tokenizer/empty.txt"):
        with fsspec.open(f"{v.uri}/{rel}", "rb") as f:
            assert f.read() == (src / rel).read_bytes()


def test_ls_and_info(version: tuple[modelkeep.ModelVersion, Path]) -> None:
    v, src = version
    fs = fsspec.filesystem("modelkeep")
    top = {Path(e["name"]).name: e for e in fs.ls(v.uri)}
    assert set(top) == {"config.json", "model.safetensors", "run.sh", "tokenizer"}
    assert top["tokenizer"]["type"] == "directory"
    assert top["model.safetensors"]["size"] == (src / "model.safetensors").stat().st_size
    assert sorted(Path(n).name for n in fs.ls(f"{v.uri}/tokenizer", detail=False)) == [
        "empty.txt", "vocab.txt"]
    assert fs.info(f"{v.uri}/run.sh")["type"] == "file"
    assert fs.isdir(f"{v.uri}/tokenizer") and not fs.exists(f"{v.uri}/nope.bin")
    with pytest.raises(FileNotFoundError):
        fs.open(f"{v.uri}/nope.bin")


def test_ranges_and_seeks(version: tuple[modelkeep.ModelVersion, Path]) -> None:
    v, src = version
    data = (src / "model.safetensors").read_bytes()
    fs = fsspec.filesystem("modelkeep")
    url = f"{v.uri}/model.safetensors"
    assert fs.cat_file(url, 100, 300_000) == data[100:300_000]
    assert fs.cat_file(url, -10) == data[-10:]
    with fs.open(url) as f:
        f.seek(len(data) - 5)
        assert f.read() == data[-5:]
        f.seek(7)
        assert f.read(3) == data[7:10]


def test_versions_are_read_only(version: tuple[modelkeep.ModelVersion, Path]) -> None:
    v, _src = version
    fs = fsspec.filesystem("modelkeep")
    with pytest.raises(PermissionError, match="immutable"):
        fs.open(f"{v.uri}/config.json", "wb")
    with pytest.raises(PermissionError, match="immutable"):
        fs.rm(f"{v.uri}/config.json")


def test_one_tensor_from_s3_fetches_a_small_fraction(
    tmp_path: Path, mlflow_sqlite_uri: str, moto_s3, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    # About 200 MB: 50 tensors of 4 MiB (float16, 1024 x 2048).
    rng = np.random.default_rng(3)
    ts = {f"layer.{i:02d}": rng.integers(0, 1 << 14, (1024, 2048), dtype=np.uint16).view(
        np.float16) for i in range(50)}
    src = tmp_path / "big"
    src.mkdir()
    save_file(ts, str(src / "model.safetensors"))
    size = (src / "model.safetensors").stat().st_size
    assert size > 200_000_000
    store_url = f"s3://{moto_s3.make_bucket()}/models"
    # The filesystem is opened by fsspec from the URI alone: it takes options from the config.
    monkeypatch.setenv("MODELKEEP_STORE", store_url)
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", json.dumps(moto_s3.storage_options))
    keep = modelkeep.open(registry=mlflow_sqlite_uri)
    v = keep.register(unique_name(), src)

    fetched: list[int] = []
    real_read = ObjectDB.read_blob

    def counting(self: ObjectDB, path: str, what: str, limit: int | None = None):  # type: ignore[no-untyped-def]
        blob = real_read(self, path, what, limit)
        fetched.append(len(blob))
        return blob

    monkeypatch.setattr(ObjectDB, "read_blob", counting)
    with fsspec.open(f"{v.uri}/model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        start, end = header["layer.37"]["data_offsets"]
        f.seek(8 + n + start)
        raw = f.read(end - start)
    assert np.array_equal(np.frombuffer(raw, np.float16).reshape(1024, 2048).view(np.uint16),
                          ts["layer.37"].view(np.uint16))
    assert sum(fetched) < 0.10 * size, f"fetched {sum(fetched)} of {size} bytes"
