"""Encrypted stores on local disk, S3 (moto) and Azure (Azurite): round trip, nothing readable in
the bucket, wrong keys, tampering (flipped bits, swapped chunks, a replayed snapshot), key
rotation without re-uploads, the key sources (environment, key file) and the CLI. The key-provider
plugin is tested with the other hooks (tests/test_hooks.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from blake3 import blake3

import modelkeep
from modelkeep.cli.main import main
from modelkeep.errors import ConfigError, IntegrityError, StoreError, StoreKeyError
from modelkeep.store import Kind, Store, scan_local
from modelkeep.store.crypto import format_key, kek_id, new_key, parse_key
from tests.backends import Backend, make_backend, unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model

BACKENDS = ["local", "s3", "azure"]
# 64 bytes that occur nowhere by chance: written into a tensor, a text file and a file name.
MARKER = b"modelkeep-plaintext-marker-7f3a9c1e5b2d406-must-never-reach-disk"
assert len(MARKER) == 64


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mlflow_sqlite_uri: str) -> Backend:
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODELKEEP_KEY", "MODELKEEP_NEW_KEY"):
        monkeypatch.delenv(var, raising=False)


def key_file(folder: Path, name: str = "store.key") -> Path:
    path = folder / name
    path.write_text(format_key(new_key()) + "\n")
    return path


def open_encrypted(backend: Backend, url: str, key: Path) -> modelkeep.Keep:
    return modelkeep.open(store=url, registry=backend.registry,
                          store_options={**backend.options, "key_file": str(key)})


def marked_model(folder: Path) -> Path:
    ts = tensors(n=4)
    ts["marker"] = np.frombuffer(MARKER, dtype=np.uint8).copy()
    write_model(folder, ts)
    (folder / f"{MARKER.decode()}.txt").write_bytes(b"notes: " + MARKER + b"\n")
    return folder


class Raw:
    """The bytes a store location holds, read and changed behind modelkeep's back."""

    def __init__(self, store: Store) -> None:
        self.fs = store.db.fs
        self.root = store.db.root
        self.local = store.location.is_local

    def files(self) -> list[str]:
        self.fs.invalidate_cache()
        return sorted(p for p in self.fs.find(self.root) if not p.endswith("/"))

    def read(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(path))

    def write(self, path: str, data: bytes) -> None:
        if self.local:
            os.chmod(path, 0o644)
            Path(path).write_bytes(data)
        else:
            self.fs.pipe_file(path, data)

    def delete(self, path: str) -> None:
        self.fs.rm_file(path)

    def object_path(self, kind: Kind, oid: str) -> str:
        return f"{self.root}/{'chunks' if kind == Kind.CHUNK else 'snapshots'}/{oid[:2]}/{oid[2:]}"

    def info(self, path: str) -> dict[str, Any]:
        self.fs.invalidate_cache()
        return dict(self.fs.info(path))


# -- round trip and confidentiality ---------------------------------------------------------------


def test_encrypted_round_trip(backend: Backend, tmp_path: Path) -> None:
    key = key_file(tmp_path)
    url = backend.new_store_url()
    keep = open_encrypted(backend, url, key)
    src = marked_model(tmp_path / "model")
    name = unique_name()
    v = keep.register(name, src, tags={"team": "nlp"})
    assert tree_digest(keep.pull(v.ref, tmp_path / "out")) == tree_digest(src)
    assert keep.verify(v.ref).ok and keep.verify().ok
    with keep.open_file(v.ref, "model.safetensors") as f:
        f.seek(100)
        assert f.read(1000) == (src / "model.safetensors").read_bytes()[100:1100]
    status = keep.store.key_status()
    assert status.encrypted and status.key_id == kek_id(parse_key(key.read_bytes(), "k"))
    # Ids are keyed: none is the plain BLAKE3 of its content, yet equal content dedups.
    config = (src / "config.json").read_bytes()
    entry = v.files[[f.path for f in v.files].index("config.json")]
    assert entry.chunks[0][0] != blake3(config).hexdigest()
    assert v.snapshot_id != keep.snapshot(v.ref).id
    again = keep.register(name, src, force=True)
    assert again.bytes_added == 0
    # A second process with the same key reads it; the descriptor records the scheme.
    other = open_encrypted(backend, url, key)
    assert tree_digest(other.pull(v.ref, tmp_path / "out2")) == tree_digest(src)
    desc = json.loads(Raw(keep.store).read(f"{keep.store.db.root}/modelkeep-store.json"))
    assert desc["encryption"]["scheme"] == "aes-256-gcm+blake3-keyed"


def test_bucket_holds_no_plaintext(backend: Backend, tmp_path: Path) -> None:
    src = marked_model(tmp_path / "model")
    name = unique_name()
    # Control: the marker is found in a plain store, so the search below can fail.
    plain = backend.open()
    plain.register(name, src)
    raw_plain = Raw(plain.store)
    assert any(MARKER in raw_plain.read(p) or MARKER.decode() in p for p in raw_plain.files())

    keep = open_encrypted(backend, backend.new_store_url(), key_file(tmp_path))
    keep.register(unique_name(), src, message=MARKER.decode())
    raw = Raw(keep.store)
    paths = raw.files()
    assert len(paths) > 10
    needles = [MARKER, MARKER[:32], b"layers.00.weight", b"model.safetensors", b"vocab.txt"]
    for path in paths:
        blob = raw.read(path)
        assert MARKER.decode() not in path and "model.safetensors" not in path
        for needle in needles:
            assert needle not in blob, (path, needle)


# -- keys -----------------------------------------------------------------------------------------


def test_wrong_key_and_missing_key_fail_clearly(backend: Backend, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    key = key_file(tmp_path)
    url = backend.new_store_url()
    keep = open_encrypted(backend, url, key)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))

    wrong = key_file(tmp_path, "wrong.key")
    with pytest.raises(StoreKeyError) as info:
        open_encrypted(backend, url, wrong).get(v.ref)
    message = str(info.value)
    assert message.startswith(f"wrong key for store {keep.store.url}")
    assert kek_id(parse_key(wrong.read_bytes(), "k")) in message
    for secret in (wrong.read_text().strip(), key.read_text().strip(),
                   parse_key(wrong.read_bytes(), "k").hex()):
        assert secret not in message

    plain = modelkeep.open(store=url, registry=backend.registry, store_options=backend.options)
    with pytest.raises(StoreKeyError, match="is encrypted and no key was given"):
        plain.pull(v.ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    # MODELKEEP_KEY, hex or base64, opens it too; a malformed one is named, not printed.
    raw_key = parse_key(key.read_bytes(), "k")
    for text in (raw_key.hex(), base64.b64encode(raw_key).decode()):
        monkeypatch.setenv("MODELKEEP_KEY", text)
        env_keep = modelkeep.open(store=url, registry=backend.registry,
                                  store_options=backend.options)
        assert env_keep.get(v.ref).size == v.size
        assert env_keep.store.key_status().key_source == "MODELKEEP_KEY"
    monkeypatch.setenv("MODELKEEP_KEY", "not-a-key")
    with pytest.raises(ConfigError, match="the key in MODELKEEP_KEY is not a 256-bit key"):
        modelkeep.open(store=url, registry=backend.registry,
                       store_options=backend.options).get(v.ref)


def test_key_formats() -> None:
    key = new_key()
    assert parse_key(key.hex(), "x") == key
    assert parse_key(key.hex().upper() + "\n", "x") == key
    assert parse_key(base64.b64encode(key), "x") == key
    assert parse_key(base64.urlsafe_b64encode(key).rstrip(b"="), "x") == key
    assert parse_key(format_key(key), "x") == key
    raw = bytes(range(32))  # a binary key file
    assert parse_key(raw, "x") == raw
    for bad in ("", "a" * 32, "z" * 64, base64.b64encode(bytes(16)).decode()):
        with pytest.raises(ConfigError, match="not a 256-bit key"):
            parse_key(bad, "key file 'k'")


def test_refuses_to_encrypt_a_plain_store(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    url = str(tmp_path / "store")
    plain = modelkeep.open(store=url, registry=mlflow_sqlite_uri)
    plain.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    before = sorted(p.relative_to(url) for p in Path(url).rglob("*"))
    with pytest.raises(StoreError, match="it already holds unencrypted objects"):
        Store.open(url).init_encrypted(new_key())
    # A store whose settings name a key file is never written in the clear.
    key = key_file(tmp_path)
    with pytest.raises(StoreError, match="is not encrypted, but its settings name a key_file"):
        modelkeep.open(store=url, registry=mlflow_sqlite_uri,
                       store_options={"key_file": str(key)}).register(unique_name(), tmp_path / "m")
    assert sorted(p.relative_to(url) for p in Path(url).rglob("*")) == before


# -- tampering ------------------------------------------------------------------------------------


def test_flipped_bit_fails_authentication(backend: Backend, tmp_path: Path) -> None:
    keep = open_encrypted(backend, backend.new_store_url(), key_file(tmp_path))
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=3), extra=False))
    raw = Raw(keep.store)
    entry = v.files[0]
    cid = entry.chunks[2][0]
    path = raw.object_path(Kind.CHUNK, cid)
    blob = bytearray(raw.read(path))
    blob[40] ^= 0x01  # inside the ciphertext
    raw.write(path, bytes(blob))

    report = keep.verify(v.ref)
    assert not report.ok
    [problem] = report.problems
    assert problem.object_id == cid and problem.path == entry.path and problem.chunk_index == 2
    assert "fails authentication" in problem.reason
    with pytest.raises(IntegrityError, match=f"chunk 2 \\({cid[:12]}\\) of {entry.path} fails "
                       "authentication"):
        keep.pull(v.ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_swapped_chunks_fail_authentication(backend: Backend, tmp_path: Path) -> None:
    keep = open_encrypted(backend, backend.new_store_url(), key_file(tmp_path))
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=3), extra=False))
    raw = Raw(keep.store)
    (a, _na), (b, _nb) = v.files[0].chunks[1], v.files[0].chunks[3]
    pa, pb = raw.object_path(Kind.CHUNK, a), raw.object_path(Kind.CHUNK, b)
    blob_a, blob_b = raw.read(pa), raw.read(pb)
    raw.write(pa, blob_b)
    raw.write(pb, blob_a)

    report = keep.verify(v.ref)
    assert {p.object_id for p in report.problems} == {a, b}
    assert all("fails authentication" in p.reason for p in report.problems)
    with pytest.raises(IntegrityError, match="fails authentication"):
        keep.pull(v.ref, tmp_path / "out")
    with pytest.raises(IntegrityError, match="fails authentication"), \
            keep.open_file(v.ref, v.files[0].path) as f:
        f.read()
    assert not (tmp_path / "out").exists()


def test_replayed_older_snapshot_fails(backend: Backend, tmp_path: Path) -> None:
    keep = open_encrypted(backend, backend.new_store_url(), key_file(tmp_path))
    ts = tensors(n=4)
    src = write_model(tmp_path / "m", ts, extra=False)
    name = unique_name()
    v1 = keep.register(name, src)
    change_fraction(ts, 0.5)
    write_model(src, ts, extra=False)
    v2 = keep.register(name, src)
    raw = Raw(keep.store)
    old = raw.read(raw.object_path(Kind.SNAPSHOT, v1.snapshot_id))
    raw.write(raw.object_path(Kind.SNAPSHOT, v2.snapshot_id), old)

    fresh = open_encrypted(backend, keep.store.url, Path(keep.store.key_file or ""))
    with pytest.raises(IntegrityError, match=f"snapshot {v2.snapshot_id[:12]} fails "
                       "authentication"):
        fresh.pull(f"{name}@2", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = fresh.verify()
    assert [p.object_id for p in report.problems] == [v2.snapshot_id]
    assert fresh.get(f"{name}@1").snapshot_id == v1.snapshot_id  # the original still reads


def test_plaintext_object_injected_is_refused(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    key = key_file(tmp_path)
    url = str(tmp_path / "store")
    keep = modelkeep.open(store=url, registry=mlflow_sqlite_uri,
                          store_options={"key_file": str(key)})
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2), extra=False))
    cid, _n = v.files[0].chunks[1]
    raw = Raw(keep.store)
    # What a plain store would hold for the same bytes, under the keyed id.
    header = bytes(raw.read(raw.object_path(Kind.CHUNK, cid))[:16])
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    off = v.files[0].chunk_offsets()[1]
    plain = header[:6] + b"\x00" + header[7:] + data[off:off + v.files[0].chunks[1][1]]
    raw.write(raw.object_path(Kind.CHUNK, cid), plain)
    report = keep.verify(v.ref)
    assert [p.object_id for p in report.problems] == [cid]
    assert "is not encrypted, but its store is" in report.problems[0].reason


def test_verify_finds_missing_and_modified_objects(backend: Backend, tmp_path: Path) -> None:
    keep = open_encrypted(backend, backend.new_store_url(), key_file(tmp_path))
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=3), extra=False))
    raw = Raw(keep.store)
    chunks = v.files[0].chunks
    missing, truncated = chunks[1][0], chunks[2][0]
    raw.delete(raw.object_path(Kind.CHUNK, missing))
    path = raw.object_path(Kind.CHUNK, truncated)
    raw.write(path, raw.read(path)[:-100])
    reasons = {p.object_id: p.reason for p in keep.verify().problems}
    assert reasons[missing] == "missing"
    # A plain sealed object has a fixed length, so a cut is seen in the header; a coded one's
    # payload length varies, so the cut is caught by authentication.
    assert ("truncated" in reasons[truncated]
            or "fails authentication" in reasons[truncated]), reasons[truncated]
    assert set(reasons) == {missing, truncated}


# -- rotation -------------------------------------------------------------------------------------


def test_key_rotation_rewraps_without_rewriting_objects(backend: Backend, tmp_path: Path) -> None:
    old_key = key_file(tmp_path, "old.key")
    new_key_path = key_file(tmp_path, "new.key")
    url = backend.new_store_url()
    keep = open_encrypted(backend, url, old_key)
    src = write_model(tmp_path / "m", tensors(n=3))
    name = unique_name()
    v = keep.register(name, src)
    raw = Raw(keep.store)
    objects = [p for p in raw.files() if "/chunks/" in p or "/snapshots/" in p]
    before = {p: raw.info(p) for p in objects}
    old_id = kek_id(parse_key(old_key.read_bytes(), "k"))
    new_id = kek_id(parse_key(new_key_path.read_bytes(), "k"))

    status = Store.open(url, {**backend.options, "key_file": str(old_key)}).rotate_key(
        parse_key(new_key_path.read_bytes(), "k"))
    assert status.key_id == new_id and status.key_ids == (new_id,)

    after_files = raw.files()
    assert [p for p in after_files if "/chunks/" in p or "/snapshots/" in p] == objects
    assert {p: raw.info(p) for p in objects} == before  # same etag / mtime / inode: not rewritten
    assert [p.rsplit("/", 1)[-1] for p in after_files if "/keys/" in p] == [f"{new_id}.json"]

    with pytest.raises(StoreKeyError, match="wrong key for store"):
        open_encrypted(backend, url, old_key).get(v.ref)
    fresh = open_encrypted(backend, url, new_key_path)
    assert tree_digest(fresh.pull(v.ref, tmp_path / "out")) == tree_digest(src)
    assert fresh.verify().ok
    assert fresh.register(name, src, force=True).bytes_added == 0  # same ids: dedup holds
    assert fresh.store.key_status().key_ids == (new_id,)
    assert old_id not in json.dumps(fresh.store.key_status().to_json())


def test_interrupted_rotation_is_finished_by_running_it_again(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    old, new = new_key(), new_key()
    Store.open(url).init_encrypted(old)
    # A crash after the new key object was written, before the old one was removed.
    store = Store.open(url)
    store._given = []
    from modelkeep.store.crypto import wrap_keys, wrap_path

    cipher = Store.open(url, keys=lambda: [(old, "old")]).db.cipher
    assert cipher is not None
    desc = json.loads((Path(url) / "modelkeep-store.json").read_text())
    store.db.put_raw_once(wrap_path(store.db.root, kek_id(new)),
                          wrap_keys(new, desc["encryption"]["store_id"], *cipher.keys(), "t"))
    both = Store.open(url, keys=lambda: [(old, "old")]).key_status()
    assert set(both.key_ids) == {kek_id(old), kek_id(new)}
    assert Store.open(url, keys=lambda: [(new, "new")]).key_status().key_id == kek_id(new)
    done = Store.open(url, keys=lambda: [(old, "old")]).rotate_key(new)
    assert done.key_ids == (kek_id(new),)
    stale = Store.open(url, keys=lambda: [(old, "old")])
    assert stale.key_status().key_id is None
    assert (stale.key_status().key_error or "").startswith("wrong key for store")
    with pytest.raises(StoreKeyError, match="wrong key for store"):
        stale.load_snapshot("0" * 64)


def test_interrupted_init_is_finished_by_running_it_again(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    kek = new_key()
    first = Store.open(url).init_encrypted(kek)
    # A crash after the key object was written, before the descriptor.
    (Path(url) / "modelkeep-store.json").unlink()
    again = Store.open(url).init_encrypted(kek)
    assert again.store_id == first.store_id and again.key_ids == (kek_id(kek),)
    store = Store.open(url, keys=lambda: [(kek, "k")])
    [entry], _stats = store.ingest(scan_local(write_model(tmp_path / "m", tensors(n=2),
                                                          extra=False)))
    assert store.db.get(Kind.CHUNK, entry.chunks[0][0]).nbytes == entry.chunks[0][1]


# -- command line ---------------------------------------------------------------------------------


def test_cli_init_encrypt_status_rotate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        mlflow_sqlite_uri: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    key = tmp_path / "keys" / "store.key"
    key.parent.mkdir()
    assert main(["--json", "key", "generate", str(key)]) == 0
    generated = json.loads(capsys.readouterr().out)
    key_text = key.read_text().strip()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert generated["key_id"] == kek_id(parse_key(key_text, "k"))
    assert main(["key", "generate", str(key)]) == 2  # never replaces a key
    capsys.readouterr()

    assert main(["--json", "init", "--registry", mlflow_sqlite_uri, "--encrypt",
                 "--key-file", str(key)]) == 0
    out = capsys.readouterr().out
    init = json.loads(out)
    assert init["encrypted"] is True and init["key_id"] == generated["key_id"]
    assert "key_file" in (tmp_path / "modelkeep.toml").read_text()

    src = marked_model(tmp_path / "model")
    name = unique_name()
    assert main(["-q", "register", name, str(src)]) == 0
    assert main(["--json", "key", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["encrypted"] is True and status["key_id"] == generated["key_id"]
    assert main(["config"]) == 0 and main(["--json", "config"]) == 0
    assert main(["verify"]) == 0
    printed = capsys.readouterr()
    raw_key = parse_key(key_text, "k")
    for secret in (key_text, raw_key.hex(), base64.urlsafe_b64encode(raw_key).decode()):
        assert secret not in out + json.dumps(status) + printed.out + printed.err

    new = tmp_path / "keys" / "new.key"
    assert main(["key", "generate", str(new)]) == 0
    assert main(["key", "rotate"]) == 2
    assert "no new key given" in capsys.readouterr().err
    assert main(["--json", "key", "rotate", "--new-key-file", str(new)]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["key_id"] == kek_id(parse_key(new.read_text(), "k"))
    # The settings still name the old key: refused, clearly, until they name the new one.
    assert main(["pull", name, str(tmp_path / "out")]) == 5
    assert "wrong key for store" in capsys.readouterr().err
    assert main(["--json", "key", "status"]) == 5  # says why, and which key ids would open it
    stale = json.loads(capsys.readouterr().out)
    assert stale["key_id"] is None and stale["key_ids"] == [rotated["key_id"]]
    assert stale["key_error"].startswith("wrong key for store")
    monkeypatch.setenv("MODELKEEP_KEY", new.read_text().strip())
    assert main(["pull", name, str(tmp_path / "out")]) == 0
    assert tree_digest(tmp_path / "out") == tree_digest(src)

    # A plain store is not encrypted after the fact.
    monkeypatch.delenv("MODELKEEP_KEY")
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    assert main(["init", "--registry", mlflow_sqlite_uri]) == 0
    assert main(["-q", "register", unique_name(), str(src)]) == 0
    capsys.readouterr()
    assert main(["init", "--encrypt", "--key-file", str(key)]) == 5
    assert "cannot encrypt store" in capsys.readouterr().err
    assert main(["--json", "key", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["encrypted"] is False


def test_mlflow_reads_an_encrypted_version(tmp_path: Path, mlflow_sqlite_uri: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_sqlite_uri)
    key = key_file(tmp_path)
    monkeypatch.setenv("MODELKEEP_KEY", key.read_text().strip())
    url = str(tmp_path / "store")
    Store.open(url).init_encrypted(parse_key(key.read_bytes(), "k"))
    keep = modelkeep.open(store=url, registry=mlflow_sqlite_uri)
    src = write_model(tmp_path / "m", tensors(n=2))
    name = unique_name()
    keep.register(name, src)
    out = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "o"))
    assert tree_digest(Path(out)) == tree_digest(src)
    # The modelkeep:// filesystem reads through the same key sources.
    v = keep.get(f"{name}@1")
    with fsspec.open(f"{v.uri}/config.json", "rb") as f:
        assert f.read() == (src / "config.json").read_bytes()
    # The store alone rebuilds the registry: snapshots are read back through the key.
    report = keep.rebuild_registry(dry_run=True)
    assert not report.skipped and name in report.models


def test_pointer_files_on_an_encrypted_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             mlflow_sqlite_uri: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tests.gitrepos import commit, init_git

    root = init_git(tmp_path / "repo")
    monkeypatch.chdir(root)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    key = key_file(tmp_path)
    assert main(["init", "--registry", mlflow_sqlite_uri, "--encrypt", "--key-file",
                 str(key)]) == 0
    (root / ".gitignore").write_text("/.modelkeep\n")
    target = write_model(root / "models" / "llm", tensors(seed=1, n=3))
    v1 = (target / "model.safetensors").read_bytes()
    name = unique_name()
    assert main(["-q", "track", name, "models/llm"]) == 0
    commit(root, "model v1")
    capsys.readouterr()
    assert main(["--json", "status"]) == 0
    [state] = json.loads(capsys.readouterr().out)
    assert state["status"] == "ok" and state["unchanged"] == 5  # keyed digests match
    write_model(target, tensors(seed=2, n=3))
    assert main(["--json", "status"]) == 1
    [state] = json.loads(capsys.readouterr().out)
    assert "model.safetensors" in state["modified"]
    assert main(["-q", "checkout", "--force"]) == 0
    assert (target / "model.safetensors").read_bytes() == v1
