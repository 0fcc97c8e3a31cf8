"""Damaged chunks named once with the versions that use them, and repaired from the original
folder, from a replica store, or by registering the original files again (local and S3)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from modelkeep.store import Kind, Store
from tests.backends import Backend, make_backend, unique_name
from tests.test_codecs import fine_tune, same_files


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mlflow_sqlite_uri: str) -> Backend:
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


def _two_versions(keep, tmp_path: Path) -> tuple[str, list[Path]]:  # type: ignore[no-untyped-def]
    """A model and a fine-tune of it, whose tensor chunk is a delta of the first's."""
    name = unique_name()
    folders = fine_tune(tmp_path, 2, 300_000, seed=11)
    for step, folder in enumerate(folders):
        (folder / "README.md").write_text(f"version {step}\n")
        keep.register(name, folder)
    return name, folders


def _damage(store: Store, cid: str) -> None:
    """Flip one byte of chunk *cid*'s object, behind modelkeep's back."""
    db = store.db
    path = db.path(Kind.CHUNK, cid)
    blob = bytearray(db.fs.cat_file(path))
    blob[len(blob) // 2] ^= 0x20
    if store.location.is_local:
        Path(path).chmod(0o644)
        Path(path).write_bytes(bytes(blob))
    else:
        db.fs.pipe_file(path, bytes(blob))


def _tensor_chunk(keep, name: str, version: int) -> str:  # type: ignore[no-untyped-def]
    entry = next(f for f in keep.get(f"{name}@{version}").files if f.path == "model.safetensors")
    return max(entry.chunks, key=lambda c: c[1])[0]


def test_verify_names_each_damaged_chunk_once_with_its_versions(backend: Backend,
                                                                tmp_path: Path) -> None:
    url = backend.new_store_url()
    keep = backend.open(url)
    name, _folders = _two_versions(keep, tmp_path)
    base = _tensor_chunk(keep, name, 1)
    _damage(keep.store, base)
    out = subprocess.run([sys.executable, "-m", "modelkeep", "--json", "verify"],
                         capture_output=True, text=True, env={**_env(backend, url)})
    assert out.returncode == 4, out.stderr
    damaged = json.loads(out.stdout)["damaged"]
    assert [d["id"] for d in damaged] == [base]  # once, though two versions read it
    assert damaged[0]["uses"] == [f"{name}@1 model.safetensors",  # its own use first
                                  f"{name}@2 model.safetensors (through a delta)"]
    assert damaged[0]["through"] == 1  # version 2's delta is read through it
    human = subprocess.run([sys.executable, "-m", "modelkeep", "verify"],
                           capture_output=True, text=True, env=_env(backend, url))
    lines = [ln for ln in human.stdout.splitlines() if ln.startswith("DAMAGED")]
    assert len(lines) == 1 and base[:12] in lines[0] and f"{name}@1" in lines[0]


def _env(backend: Backend, url: str) -> dict[str, str]:
    import os

    return {**os.environ, **backend.env(url)}


def test_repair_from_the_original_folder(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    name, folders = _two_versions(keep, tmp_path)
    base = _tensor_chunk(keep, name, 1)
    _damage(keep.store, base)
    result = keep.repair(str(folders[0]))
    assert [d.id for d in result.damaged] == [base]
    assert result.repair is not None and result.repair.rewritten == [base]
    assert result.ok and result.after is not None and result.after.ok
    for n, folder in ((1, folders[0]), (2, folders[1])):
        keep.pull(f"{name}@{n}", tmp_path / f"out{n}")
        assert same_files(folder, tmp_path / f"out{n}")
    # The damaged object was moved aside, never overwritten in place.
    db = keep.store.db
    assert db.fs.exists(db.quarantine_path(base))


def test_repair_from_a_replica(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    name, folders = _two_versions(keep, tmp_path)
    replica = str(tmp_path / "replica")
    keep.sync(replica)
    delta = _tensor_chunk(keep, name, 2)
    _damage(keep.store, delta)
    result = keep.repair(replica)
    assert [d.id for d in result.damaged] == [delta]
    assert result.ok
    keep.pull(f"{name}@2", tmp_path / "out")
    assert same_files(folders[1], tmp_path / "out")


def test_repair_without_a_source_lets_a_register_rewrite_the_chunk(backend: Backend,
                                                                   tmp_path: Path) -> None:
    keep = backend.open()
    name, folders = _two_versions(keep, tmp_path)
    base = _tensor_chunk(keep, name, 1)
    _damage(keep.store, base)
    result = keep.repair()
    assert not result.ok and result.repair is not None
    assert result.repair.quarantined == [base] and result.repair.missing == [base]
    keep.register(name, folders[0], force=True)  # the original bytes, registered again
    assert keep.verify().ok
    keep.pull(f"{name}@2", tmp_path / "out")
    assert same_files(folders[1], tmp_path / "out")


def test_a_register_after_verify_never_reuses_a_damaged_chunk(backend: Backend,
                                                              tmp_path: Path) -> None:
    keep = backend.open()
    name, folders = _two_versions(keep, tmp_path)
    base = _tensor_chunk(keep, name, 1)
    _damage(keep.store, base)
    assert not keep.verify().ok  # found, and recorded
    # The original bytes registered again (no repair run): the damaged object is moved aside
    # and the chunk written anew, not counted as already stored.
    again = keep.register(name, folders[0], force=True)
    assert again.bytes_added is not None and again.bytes_added > 0
    report = keep.verify()
    assert report.ok, report.problems
    db = keep.store.db
    assert db.fs.exists(db.quarantine_path(base))
    assert db.damaged_ids() == set()
    for n, folder in ((1, folders[0]), (2, folders[1])):
        keep.pull(f"{name}@{n}", tmp_path / f"out{n}")
        assert same_files(folder, tmp_path / f"out{n}")


def test_gc_deletes_quarantined_copies_once_kept_for_the_grace_period(backend: Backend,
                                                                       tmp_path: Path) -> None:
    keep = backend.open()
    name, folders = _two_versions(keep, tmp_path)
    base = _tensor_chunk(keep, name, 1)
    _damage(keep.store, base)
    assert keep.repair(str(folders[0])).ok
    db = keep.store.db
    kept = keep.gc(grace=timedelta(hours=1))
    assert kept.purged == [] and db.fs.exists(db.quarantine_path(base))
    dry = keep.gc(grace=timedelta(0), dry_run=True)
    assert [i.id for i in dry.purged] == [base] and db.fs.exists(db.quarantine_path(base))
    report = keep.gc(grace=timedelta(0))
    assert [i.id for i in report.purged] == [base]
    assert report.bytes_reclaimed >= report.purged[0].size > 0
    assert not db.fs.exists(db.quarantine_path(base))
    assert keep.verify().ok
    for n, folder in ((1, folders[0]), (2, folders[1])):
        keep.pull(f"{name}@{n}", tmp_path / f"out{n}")
        assert same_files(folder, tmp_path / f"out{n}")
