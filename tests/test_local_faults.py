"""Local faults and odd input, on real files: a full disk and a read-only store (a small tmpfs,
mounted by the test: the suite runs as root), a safetensors header nested 1,000 deep, `verify` and
`init` on something that is not a store, Ctrl-C. Each ends in one line naming the problem and what
to do, with nothing left behind that the docs do not mention."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelkeep
from modelkeep.cli.main import main
from tests.backends import unique_name
from tests.helpers import tensors, tree_digest, write_model


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _cli(tmp_path: Path, *args: str, registry: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELKEEP_REGISTRY": registry}
    env.pop("MODELKEEP_STORE", None)
    return subprocess.run([sys.executable, "-m", "modelkeep", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_disk_full_is_one_line_and_a_rerun_after_freeing_space_reuses_what_landed(
    small_disk: Path, tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    model = write_model(tmp_path / "model", tensors(n=16, rows=512, cols=512))  # ~8.5 MB
    store = small_disk / "store"
    name = unique_name()
    out = _cli(tmp_path, "--store", str(store), "register", name, str(model),
               registry=mlflow_sqlite_uri)
    assert out.returncode == 5, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: store {store}: no space left on the device"), lines
    assert "re-run" in lines[0] and "modelkeep gc" in lines[0]
    assert "unexpected" not in out.stderr
    keep = modelkeep.open(store=str(store), registry=mlflow_sqlite_uri)
    assert name not in keep.models()  # nothing registered


def test_read_only_store_is_one_line(small_disk: Path, tmp_path: Path,
                                     mlflow_sqlite_uri: str) -> None:
    store = small_disk / "store"
    keep = modelkeep.open(store=str(store), registry=mlflow_sqlite_uri)
    keep.register(unique_name(), write_model(tmp_path / "m0", tensors(n=2), extra=False))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = _cli(tmp_path, "--store", str(store), "register", unique_name(),
               str(write_model(tmp_path / "m1", tensors(seed=1, n=2), extra=False)),
               registry=mlflow_sqlite_uri)
    assert out.returncode == 5, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: store {store}: the file system is read-only"), lines


def test_safetensors_header_nested_1000_deep_is_stored_as_opaque_bytes(
    tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    header = b'{"a": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    (folder / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + os.urandom(200_000))
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    version = keep.register(unique_name(), folder)
    assert tree_digest(keep.pull(version.ref, tmp_path / "out")) == tree_digest(folder)
    assert keep.verify(version.ref).ok


@pytest.mark.parametrize("kind", ["file", "missing", "empty folder"])
def test_verify_on_something_that_is_not_a_store_is_an_error(
    kind: str, tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    target = tmp_path / "not-a-store"
    if kind == "file":
        target.write_text("hello\n")
    elif kind == "empty folder":
        target.mkdir()
    out = _cli(tmp_path, "--store", str(target), "verify", registry=mlflow_sqlite_uri)
    assert out.returncode in (3, 5), out
    assert "ok" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0], lines
    assert kind != "missing" or not target.exists()


def test_init_on_a_plain_file_fails_cleanly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "afile").write_text("not a store\n")
    assert main(["init", "--store", "afile", "--registry", mlflow_sqlite_uri]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert main(["init", "--store", "store", "--registry", mlflow_sqlite_uri]) == 0


def test_ctrl_c_says_nothing_was_registered_and_a_rerun_reuses_what_landed(
    tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    model = write_model(tmp_path / "model", tensors(n=32, rows=2048, cols=1024))  # ~130 MB
    store = tmp_path / "store"
    name = unique_name()
    env = {**os.environ, "MODELKEEP_REGISTRY": mlflow_sqlite_uri}
    env.pop("MODELKEEP_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelkeep", "--store", str(store), "register", name, str(model)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Ctrl-C once the first chunks have landed: a real SIGINT, as a terminal sends it.
        chunks = store / "chunks"
        deadline = time.monotonic() + 120
        while not (chunks.is_dir() and any(p.is_file() for p in chunks.rglob("*"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "interrupted" in lines[0] and "nothing was registered" in lines[0]
    assert "re-run reuses" in lines[0]
    keep = modelkeep.open(store=str(store), registry=mlflow_sqlite_uri)
    assert name not in keep.models()  # nothing partial is visible
    again = keep.register(name, model)
    assert again.version == 1
    assert again.bytes_added is not None and again.bytes_added < again.size  # what landed
    assert tree_digest(keep.pull(again.ref, tmp_path / "out")) == tree_digest(model)


def test_next_pull_removes_what_a_killed_pull_left_and_nothing_else(
    tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    model = write_model(tmp_path / "model", tensors(n=2), extra=False)
    version = keep.register(unique_name(), model)
    dest = tmp_path / "serving" / "model"
    dest.parent.mkdir()
    # A pull killed with -9 from a process that is gone, one still running, one on another host.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = dest.parent / f".model.modelkeep-partial-{host}-{dead.pid}-0123abcd"
    running = dest.parent / f".model.modelkeep-partial-{host}-{os.getpid()}-0123abcd"
    remote = dest.parent / f".model.modelkeep-partial-otherhost-{dead.pid}-0123abcd"
    for folder in (stale, running, remote):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "half.bin").write_bytes(b"x" * 1000)
    keep.pull(version.ref, dest)
    assert tree_digest(dest) == tree_digest(model)
    assert not stale.exists() and running.exists() and remote.exists()
