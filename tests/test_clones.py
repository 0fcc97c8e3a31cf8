"""Private copies out of the read cache: a reflink where the filesystem offers one, else a byte
copy; either way a file of its own, whose edits never reach the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import modelkeep
from modelkeep.store.readcache import clone_or_copy, link_or_copy
from tests.backends import unique_name
from tests.helpers import tensors, tree_digest, write_model


def test_clone_or_copy_makes_an_independent_file(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    src.chmod(0o444)
    dest = tmp_path / "dest.bin"
    clone_or_copy(src, dest)
    assert dest.read_bytes() == data and dest.stat().st_ino != src.stat().st_ino
    dest.chmod(0o644)
    with open(dest, "r+b") as f:
        f.write(b"\0" * 16)
    assert src.read_bytes() == data
    with pytest.raises(FileNotFoundError):
        clone_or_copy(tmp_path / "absent", tmp_path / "x")
    # Where a link can be made (the same filesystem), link_or_copy links: the same inode.
    linked = tmp_path / "linked.bin"
    assert link_or_copy(src, linked) is True and linked.stat().st_ino == src.stat().st_ino


def test_a_private_pull_from_the_cache_never_changes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str
) -> None:
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=3))
    v = keep.register(unique_name(), src)
    folder = keep.fetch(v.ref)
    out = keep.pull(v.ref, tmp_path / "out")
    with open(out / "model.safetensors", "r+b") as f:
        f.write(b"\xff" * 64)
    assert tree_digest(folder) == tree_digest(src)
    assert tree_digest(keep.pull(v.ref, tmp_path / "again")) == tree_digest(src)
