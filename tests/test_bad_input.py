"""Bad input gets a clear error and changes nothing: no version appears, no object is written."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

import modelkeep
from modelkeep.errors import (
    CredentialsError,
    InvalidNameError,
    InvalidRefError,
    NotFoundError,
    SourceError,
    StoreUnreachableError,
    UnsafePathError,
)
from modelkeep.store import Kind
from modelkeep.store.hashing import content_id
from modelkeep.store.snapshot import FileEntry, file_digest, tree_digest
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str) -> modelkeep.Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)


def _objects(keep: modelkeep.Keep) -> list[str]:
    root = Path(keep.store.url)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _assert_nothing_changed(keep: modelkeep.Keep, name: str, before: list[str]) -> None:
    assert name not in keep.models()
    assert _objects(keep) == before


def test_missing_path(keep: modelkeep.Keep, tmp_path: Path) -> None:
    name, before = unique_name(), _objects(keep)
    with pytest.raises(SourceError, match="does not exist"):
        keep.register(name, tmp_path / "nope")
    _assert_nothing_changed(keep, name, before)


def test_empty_folder(keep: modelkeep.Keep, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    name, before = unique_name(), _objects(keep)
    with pytest.raises(SourceError, match="has no files"):
        keep.register(name, tmp_path / "empty")
    _assert_nothing_changed(keep, name, before)


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "-lead", "x@1", "é", "a" * 201])
def test_invalid_model_name(keep: modelkeep.Keep, tmp_path: Path, bad: str) -> None:
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    before = _objects(keep)
    with pytest.raises(InvalidNameError, match="invalid model name"):
        keep.register(bad, src)
    assert _objects(keep) == before


@pytest.mark.parametrize("alias", ["latest", "v3", "bad alias", "9lives"])
def test_invalid_alias(keep: modelkeep.Keep, tmp_path: Path, alias: str) -> None:
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    name, before = unique_name(), _objects(keep)
    with pytest.raises(InvalidNameError, match="invalid alias"):
        keep.register(name, src, aliases=[alias])
    _assert_nothing_changed(keep, name, before)


def test_unknown_refs(keep: modelkeep.Keep, tmp_path: Path) -> None:
    name = unique_name()
    keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False))
    with pytest.raises(NotFoundError, match="not found"):
        keep.get(f"{name}@7")
    with pytest.raises(NotFoundError, match="not found"):
        keep.get(f"{name}@nosuchalias")
    with pytest.raises(NotFoundError):
        keep.get("never-registered@latest")
    with pytest.raises(InvalidRefError):
        keep.get(f"{name}@0")
    with pytest.raises(NotFoundError):  # an unknown parent stops the register before any write
        keep.register(name, tmp_path / "m", parents=[f"{name}@9"])
    assert [v.version for v in keep.versions(name)] == [1]


def test_symlink_outside_model_folder(keep: modelkeep.Keep, tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    (src / "leak.txt").symlink_to(secret)
    name, before = unique_name(), _objects(keep)
    with pytest.raises(UnsafePathError, match="points outside the model folder"):
        keep.register(name, src)
    _assert_nothing_changed(keep, name, before)


def test_symlink_inside_folder_is_stored_as_its_content(keep: modelkeep.Keep,
                                                        tmp_path: Path) -> None:
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    (src / "alias.safetensors").symlink_to(src / "model.safetensors")
    v = keep.register(unique_name(), src)
    out = keep.pull(v.ref, tmp_path / "out")
    assert not (out / "alias.safetensors").is_symlink()
    assert (out / "alias.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/passwd-modelkeep", "a/../../b",
                                  "C:/windows.txt", "ok/./x"])
def test_crafted_snapshot_with_unsafe_path_is_refused_at_pull(
    keep: modelkeep.Keep, tmp_path: Path, evil: str
) -> None:
    # Build a snapshot by hand, as an attacker controlling the bucket would, and register it.
    data = b"payload"
    cid = content_id(data)
    digest = file_digest([(cid, len(data))])
    keep.store.ensure_initialized()
    keep.store.db.put(Kind.CHUNK, cid, data)
    doc = {
        "format": 1, "type": "modelkeep.snapshot", "name": "x",
        "created": "2026-01-01T00:00:00.000000Z",
        "author": "", "message": "", "parents": [], "tags": {}, "lineage": {}, "size": len(data),
        "files": [{"path": evil, "size": len(data), "mode": 0o644, "digest": digest,
                   "chunks": [[cid, len(data)]]}],
    }

    class _F:  # the tree digest only reads these four attributes
        path, size, mode = evil, len(data), 0o644

    _F.digest = digest  # type: ignore[attr-defined]

    doc["tree"] = tree_digest([_F()])  # type: ignore[list-item]
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    sid = content_id(payload)
    keep.store.db.put(Kind.SNAPSHOT, sid, payload)
    name = unique_name()
    keep.registry.create_version(name, keep.store.uri(sid), tags={})
    dest = tmp_path / "dest"
    with pytest.raises(UnsafePathError, match="unsafe path"):
        keep.pull(f"{name}@1", dest)
    assert not dest.exists()
    assert not (tmp_path / "escape.txt").exists() and not Path("/etc/passwd-modelkeep").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_store(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                              "region_name": "us-east-1"},
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    keep = modelkeep.open(store="s3://bucket/models", registry=mlflow_sqlite_uri,
                          store_options=opts)
    name = unique_name()
    with pytest.raises(StoreUnreachableError, match="unreachable"):
        keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False))
    assert name not in keep.models()


def test_missing_credentials(tmp_path: Path, mlflow_sqlite_uri: str, moto_s3,  # type: ignore[no-untyped-def]
                             monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = moto_s3.make_bucket()
    opts = {"client_kwargs": {"endpoint_url": moto_s3.endpoint_url, "region_name": "us-east-1"}}
    keep = modelkeep.open(store=f"s3://{bucket}/models", registry=mlflow_sqlite_uri,
                          store_options=opts)
    name = unique_name()
    with pytest.raises(CredentialsError, match="credentials"):
        keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False))
    assert name not in keep.models()


def test_store_path_with_at_sign_is_refused(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    from modelkeep.errors import StoreError

    with pytest.raises(StoreError, match="'@'"):
        modelkeep.open(store=str(tmp_path / "a@b"), registry=mlflow_sqlite_uri)


def test_snapshot_with_file_under_file_is_refused(keep: modelkeep.Keep) -> None:
    from modelkeep.errors import IntegrityError
    from modelkeep.store.snapshot import Snapshot, parse

    data = b"x"
    cid = content_id(data)
    digest = file_digest([(cid, 1)])
    entries = tuple(FileEntry(p, 1, 0o644, digest, ((cid, 1),)) for p in ("a", "a/b"))
    snap = Snapshot(name="x", files=entries, created="2026-01-01T00:00:00.000000Z")
    with pytest.raises(IntegrityError, match="which is a file"):
        parse(snap.encode())
