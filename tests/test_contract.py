"""The store contract: the same tests on memory, local disk, S3 (moto) and Azure (Azurite)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modelkeep.errors import IntegrityError, NotFoundError
from modelkeep.store import Kind
from tests.backends import BACKENDS, Backend, make_backend, unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mlflow_sqlite_uri: str) -> Backend:
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


@pytest.fixture(params=["s3", "azure"])
def remote_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   mlflow_sqlite_uri: str) -> Backend:
    """Object stores only: the known-chunk cache serves them (locally a stat is as cheap)."""
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


def test_register_and_pull_byte_identical(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors())
    name = unique_name()
    v = keep.register(name, src, tags={"team": "nlp"}, aliases=["candidate"], message="first")
    assert v.version == 1 and v.ref == f"{name}@1"
    assert v.size == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert v.bytes_added == v.size  # a fresh store holds nothing yet
    assert v.uri.startswith("modelkeep://") and len(v.uri) < 500
    got = keep.get(f"{name}@candidate")
    assert got.snapshot_id == v.snapshot_id and got.user_tags == {"team": "nlp"}
    assert got.tags["modelkeep.snapshot"] == v.snapshot_id
    assert got.tags["modelkeep.bytes_added"] == str(v.size)
    out = keep.pull(f"{name}@1", tmp_path / "out")
    assert tree_digest(out) == tree_digest(src)
    assert keep.verify(f"{name}@1").ok


def test_open_file_reads_ranges_and_only_needed_chunks(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors(n=16))
    name = unique_name()
    keep.register(name, src)
    data = (src / "model.safetensors").read_bytes()
    with keep.open_file(name, "model.safetensors") as f:
        assert f.seekable()
        for start, length in [(0, 8), (1000, 5000), (len(data) - 10, 100), (300_000, 600_000)]:
            f.seek(start)
            assert f.read(length) == data[start:start + length]
        f.seek(-4, io.SEEK_END)
        assert f.read() == data[-4:]
    with keep.open_file(name, "model.safetensors") as f:
        f.seek(len(data) // 2)
        f.read(100)
        assert f.bytes_fetched < len(data) // 4
    with pytest.raises(NotFoundError):
        keep.open_file(name, "missing.bin")


def test_diff_reports_files_and_tensors(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    ts = tensors()
    src = write_model(tmp_path / "model", ts)
    name = unique_name()
    keep.register(name, src)
    changed = change_fraction(ts, 0.1)
    ts.pop("layers.05.norm")
    ts["extra.bias"] = ts["layers.00.norm"].copy()
    write_model(tmp_path / "model", ts)
    (src / "config.json").unlink()
    (src / "README.md").write_text("notes\n")
    keep.register(name, src)
    d = keep.diff(f"{name}@1", f"{name}@2")
    assert d.added == ["README.md"] and d.removed == ["config.json"]
    assert d.changed == ["model.safetensors", "tokenizer/vocab.txt"]
    st = next(f for f in d.files if f.path == "model.safetensors").tensors
    assert st is not None
    assert st.added == ("extra.bias",) and st.removed == ("layers.05.norm",)
    assert sorted(st.changed) == sorted(changed)
    assert st.unchanged == len(ts) - 1 - len(changed)


def test_dedup_across_versions(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    ts = tensors(n=40)
    src = write_model(tmp_path / "model", ts, extra=False)
    name = unique_name()
    v1 = keep.register(name, src)
    stored_v1 = keep.store.stored_bytes()
    changed = change_fraction(ts, 0.1)
    write_model(src, ts, extra=False)
    v2 = keep.register(name, src, parents=[v1.ref])
    changed_bytes = sum(ts[n].nbytes for n in changed)
    # Same names, dtypes and shapes: the header chunk is unchanged, only the tensors are new.
    assert v2.bytes_added == changed_bytes
    assert v2.bytes_added <= 0.11 * v1.size
    grown = keep.store.stored_bytes() - stored_v1
    assert grown <= v2.bytes_added + 64 * 16  # chunk headers are 16 bytes each
    assert v2.parents[0].version == 1 and v2.parents[0].snapshot_id == v1.snapshot_id
    assert float(v2.tags["modelkeep.dedup_ratio"]) > 0.89


def test_identical_register_returns_existing_version(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors(n=4))
    name = unique_name()
    v1 = keep.register(name, src)
    again = keep.register(name, src, aliases=["prod"])
    assert again.reused and again.version == 1 and "prod" in keep.get(f"{name}@1").aliases
    assert [v.version for v in keep.versions(name)] == [1]
    forced = keep.register(name, src, force=True)
    assert forced.version == 2 and forced.bytes_added == 0
    assert forced.snapshot_id != v1.snapshot_id  # new snapshot, same chunks


def _register_cli(env: dict[str, str], name: str, src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelkeep", "--json", "register", name, str(src)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=240,
    )


def test_concurrent_registers_get_distinct_versions(backend: Backend, tmp_path: Path) -> None:
    url = backend.new_store_url()
    name = unique_name()
    sources = [write_model(tmp_path / f"m{i}", tensors(seed=i, n=6)) for i in range(4)]
    if backend.multiprocess:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "modelkeep", "--json", "register", name, str(s)],
                env={**os.environ, **backend.env(url)}, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )
            for s in sources
        ]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
            results.append(json.loads(out)["version"])
    else:
        keep = backend.open(url)
        results = []
        lock = threading.Lock()

        def work(s: Path) -> None:
            v = keep.register(name, s)
            with lock:
                results.append(v.version)

        threads = [threading.Thread(target=work, args=(s,)) for s in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == [1, 2, 3, 4]
    keep = backend.open(url)
    assert len(keep.versions(name)) == 4
    for v in keep.versions(name):
        assert keep.verify(v.ref).ok
    assert keep.verify().snapshots == 4


def test_crash_before_snapshot_leaves_no_version(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors(n=10), extra=False)
    name = unique_name()
    real_put = type(keep.store.db).put
    calls = {"n": 0}

    def failing_put(self, kind, oid, raw, **kw):  # type: ignore[no-untyped-def]
        if kind is Kind.CHUNK:
            calls["n"] += 1
            if calls["n"] > 5:
                raise OSError("injected failure: disk full")
        return real_put(self, kind, oid, raw, **kw)

    monkeypatch.setattr(type(keep.store.db), "put", failing_put)
    with pytest.raises(OSError, match="injected"):
        keep.register(name, src)
    monkeypatch.setattr(type(keep.store.db), "put", real_put)
    assert name not in keep.models()
    assert list(keep.store.snapshot_ids()) == []
    partial = sum(1 for _ in keep.store.db.iter_ids(Kind.CHUNK))
    assert 0 < partial < 21
    v = backend.open(keep.store.url).register(name, src)
    assert v.version == 1 and v.bytes_added < v.size  # reused what the failed attempt wrote
    assert keep.verify(v.ref).ok


def test_crash_before_registry_entry_leaves_no_version(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors(n=4), extra=False)
    name = unique_name()

    def refuse(*_a: object, **_k: object) -> None:
        raise ConnectionError("injected: registry went away")

    monkeypatch.setattr(keep.registry, "create_version", refuse)
    with pytest.raises(ConnectionError):
        keep.register(name, src)
    monkeypatch.undo()
    assert name not in keep.models()
    assert len(list(keep.store.snapshot_ids())) == 1  # unreferenced; GC's to collect
    v = keep.register(name, src)
    assert v.version == 1 and v.bytes_added == 0


def _flip_byte(backend: Backend, keep, oid: str) -> None:  # type: ignore[no-untyped-def]
    db = keep.store.db
    path = db.path(Kind.CHUNK, oid)
    blob = bytearray(db.read_blob(path, "chunk"))
    blob[len(blob) // 2] ^= 0x01
    if backend.name == "local":
        os.chmod(path, 0o644)
        Path(path).write_bytes(bytes(blob))
    else:
        db.fs.pipe_file(path, bytes(blob))


def test_flipped_byte_is_found_by_verify_and_fails_pull(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors(n=6), extra=False)
    name = unique_name()
    v = keep.register(name, src)
    entry = next(f for f in v.files if f.path == "model.safetensors")
    victim_index = 3
    victim = entry.chunks[victim_index][0]
    _flip_byte(backend, keep, victim)
    report = keep.verify(v.ref)
    assert not report.ok
    [problem] = report.problems
    assert problem.path == "model.safetensors" and problem.chunk_index == victim_index
    assert problem.object_id == victim and "corrupt" in problem.reason
    assert keep.verify().problems == report.problems
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        keep.pull(v.ref, dest)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_truncated_chunk_fails_pull_and_leaves_nothing(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    src = write_model(tmp_path / "model", tensors(n=6), extra=False)
    v = keep.register(unique_name(), src)
    entry = next(f for f in v.files if f.path == "model.safetensors")
    db = keep.store.db
    path = db.path(Kind.CHUNK, entry.chunks[2][0])
    blob = bytes(db.read_blob(path, "chunk"))[:-7]  # the header still claims the full length
    if backend.name == "local":
        os.chmod(path, 0o644)
        Path(path).write_bytes(blob)
    else:
        db.fs.pipe_file(path, blob)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"chunk 2 .*model\.safetensors.*truncated"):
        keep.pull(v.ref, dest)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_known_chunk_cache_skips_existence_checks(
    remote_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = remote_backend
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    url = backend.new_store_url()
    src = write_model(tmp_path / "model", tensors(n=4), extra=False)
    name = unique_name()
    backend.open(url).register(name, src)
    keep = backend.open(url)  # a new process would start the same way: only the cache is warm
    calls = {"exists": 0}
    real_exists = type(keep.store.db).exists

    def counting_exists(self, kind, oid):  # type: ignore[no-untyped-def]
        calls["exists"] += 1
        return real_exists(self, kind, oid)

    monkeypatch.setattr(type(keep.store.db), "exists", counting_exists)
    v = keep.register(name, src, force=True)
    assert v.version == 2 and v.bytes_added == 0 and calls["exists"] == 0
    assert (tmp_path / "cache" / "known-chunks.sqlite").is_file()
