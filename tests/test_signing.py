"""Ed25519 snapshot signatures: key generation, signing on register and promote, the status of a
version's signatures, and ``verify --require-signed`` on local disk, S3 (moto) and Azure
(Azurite)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

import modelkeep
from modelkeep.cli.main import main
from modelkeep.errors import ConfigError
from modelkeep.signing import key_id, load_public_key, write_key_pair
from tests.backends import Backend, make_backend, unique_name
from tests.helpers import tensors, write_model


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELKEEP_SIGNING_KEY", raising=False)
    monkeypatch.delenv("MODELKEEP_TRUSTED_KEYS", raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    folder = tmp_path_factory.mktemp("keys")
    return {who: write_key_pair(folder / who) for who in ("alice", "mallory")}


def _keep(tmp_path: Path, registry: str, signing_key: Path | None = None) -> modelkeep.Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=registry,
                          signing_key=signing_key)


def _rewrite(keep: modelkeep.Keep, path: str, blob: bytes) -> None:
    """Replace a stored file, as someone with write access to the bucket can."""
    fs = keep.store.db.fs
    if keep.store.location.is_local:
        os.chmod(path, 0o644)
    fs.rm(path)
    fs.pipe_file(path, blob)


@pytest.mark.parametrize("spelling", [["key", "generate", "--signing"], ["keygen", "--signing"]])
def test_key_generate_signing_writes_a_private_and_a_public_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: list[str]) -> None:
    # `key generate --signing FILE` is the spelling; `keygen --signing FILE` is kept for scripts.
    out = tmp_path / "keys" / "release"
    assert main(["--json", *spelling, str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    pub = Path(info["public_key"])
    assert Path(info["private_key"]) == out and pub == tmp_path / "keys" / "release.pub"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in out.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    assert info["key_id"] == key_id(load_public_key(pub))
    before = out.read_bytes()
    assert main([*spelling, str(out)]) == 2  # never overwrites a key
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_signature_round_trip(tmp_path: Path, mlflow_sqlite_uri: str,
                              keys: dict[str, tuple[Path, Path, str]]) -> None:
    private, public, kid = keys["alice"]
    keep = _keep(tmp_path, mlflow_sqlite_uri, private)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    sig_path = f"{keep.store.db.signature_dir(v.snapshot_id)}/{kid}"
    doc = json.loads(Path(sig_path).read_bytes())
    assert doc["snapshot"] == v.snapshot_id and doc["key_id"] == kid
    status = keep.signature_status(v.ref)
    assert (status.state, status.key_id, status.signers) == ("valid", kid, (kid,))
    # Another client trusting the public key file sees the same.
    reader = _keep(tmp_path, mlflow_sqlite_uri)
    assert reader.signature_status(v.ref, [public]).state == "valid"
    assert reader.signature_status(v.ref, [kid]).state == "valid"  # a key id works too
    # ... and without trusting it, the signature is good but proves nothing.
    assert reader.signature_status(v.ref).state == "untrusted"


def test_unsigned_version_is_missing(tmp_path: Path, mlflow_sqlite_uri: str,
                                     keys: dict[str, tuple[Path, Path, str]]) -> None:
    keep = _keep(tmp_path, mlflow_sqlite_uri)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    status = keep.signature_status(v.ref, [keys["alice"][1]])
    assert (status.state, status.key_id) == ("missing", None)


def test_signature_by_an_untrusted_key(tmp_path: Path, mlflow_sqlite_uri: str,
                                       keys: dict[str, tuple[Path, Path, str]]) -> None:
    # Whoever can write the bucket can sign with a key of their own.
    keep = _keep(tmp_path, mlflow_sqlite_uri, keys["mallory"][0])
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    reader = _keep(tmp_path, mlflow_sqlite_uri)
    status = reader.signature_status(v.ref, [keys["alice"][1]])
    assert (status.state, status.key_id) == ("untrusted", keys["mallory"][2])


def test_tampered_signature_is_invalid(tmp_path: Path, mlflow_sqlite_uri: str,
                                       keys: dict[str, tuple[Path, Path, str]]) -> None:
    private, _public, kid = keys["alice"]
    keep = _keep(tmp_path, mlflow_sqlite_uri, private)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    path = f"{keep.store.db.signature_dir(v.snapshot_id)}/{kid}"
    doc = json.loads(Path(path).read_bytes())
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    _rewrite(keep, path, json.dumps(doc).encode())
    status = keep.signature_status(v.ref)
    assert status.state == "invalid" and status.signers == ()
    assert "does not verify" in status.problems[0]


def test_signature_copied_to_another_snapshot_is_invalid(
    tmp_path: Path, mlflow_sqlite_uri: str, keys: dict[str, tuple[Path, Path, str]]
) -> None:
    private, _public, kid = keys["alice"]
    signed = _keep(tmp_path, mlflow_sqlite_uri, private)
    name = unique_name()
    v1 = signed.register(name, write_model(tmp_path / "a", tensors(seed=1, n=2)))
    unsigned = _keep(tmp_path, mlflow_sqlite_uri)
    v2 = unsigned.register(name, write_model(tmp_path / "b", tensors(seed=2, n=2)))
    blob = Path(f"{signed.store.db.signature_dir(v1.snapshot_id)}/{kid}").read_bytes()
    signed.store.db.put_signature(v2.snapshot_id, kid, blob)
    status = signed.signature_status(v2.ref)
    assert status.state == "invalid" and "another snapshot" in status.problems[0]


def test_signed_snapshot_of_another_model_is_invalid(
    tmp_path: Path, mlflow_sqlite_uri: str, keys: dict[str, tuple[Path, Path, str]]
) -> None:
    # Someone with write access to the registry points a version at a signed snapshot of a
    # different model: the signature holds, but not for this model.
    keep = _keep(tmp_path, mlflow_sqlite_uri, keys["alice"][0])
    other = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    victim = unique_name()
    keep.registry.create_version(victim, other.uri, tags={})
    status = keep.signature_status(f"{victim}@1")
    assert status.state == "invalid" and "of model" in status.problems[0]


def test_promote_signs_the_new_snapshot(tmp_path: Path, mlflow_sqlite_uri: str,
                                        keys: dict[str, tuple[Path, Path, str]]) -> None:
    keep = _keep(tmp_path, mlflow_sqlite_uri, keys["alice"][0])
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    promoted = keep.promote(v.ref, unique_name("prod"))
    assert promoted.snapshot_id != v.snapshot_id
    assert keep.signature_status(promoted.ref).state == "valid"


def test_a_bad_signing_key_registers_nothing(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    keep = _keep(tmp_path, mlflow_sqlite_uri, bad)
    name = unique_name()
    with pytest.raises(ConfigError, match="no usable Ed25519 private key"):
        keep.register(name, write_model(tmp_path / "m", tensors(n=2)))
    assert name not in keep.models()
    assert not (tmp_path / "store" / "chunks").exists()


def test_signing_key_from_environment_and_store_options(
    tmp_path: Path, mlflow_sqlite_uri: str, keys: dict[str, tuple[Path, Path, str]],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    private, _public, kid = keys["alice"]
    src = write_model(tmp_path / "m", tensors(n=2))
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", str(private))
    v = _keep(tmp_path, mlflow_sqlite_uri).register(unique_name(), src)
    monkeypatch.delenv("MODELKEEP_SIGNING_KEY")
    keep = modelkeep.open(store=str(tmp_path / "store2"), registry=mlflow_sqlite_uri,
                          store_options={"signing_key": str(private)})
    w = keep.register(unique_name(), src)
    for version in (v, w):
        assert keep.signature_status(version.ref).key_id == kid


# -- verify --require-signed on every backend ------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "s3", "azure"])
def test_verify_require_signed(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    mlflow_sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], keys: dict[str, tuple[Path, Path, str]]
) -> None:
    backend: Backend = make_backend(kind, request, tmp_path_factory, mlflow_sqlite_uri)
    url = backend.new_store_url()
    private, public, kid = keys["alice"]
    name = unique_name()
    signed = modelkeep.open(store=url, registry=backend.registry, store_options=backend.options,
                            signing_key=private)
    signed.register(name, write_model(tmp_path / "a", tensors(seed=1, n=2)))
    backend.open(url).register(name, write_model(tmp_path / "b", tensors(seed=2, n=2)))
    mallory = modelkeep.open(store=url, registry=backend.registry,
                             store_options=backend.options, signing_key=keys["mallory"][0])
    mallory.register(name, write_model(tmp_path / "c", tensors(seed=3, n=2)))
    for key, value in backend.env(url).items():
        monkeypatch.setenv(key, value)

    def verify(*args: str) -> tuple[int, dict]:
        capsys.readouterr()
        code = main(["--json", "verify", *args])
        return code, json.loads(capsys.readouterr().out)

    code, out = verify(f"{name}@1", "--require-signed", "--trusted-key", str(public))
    assert code == 0 and out["ok"] is True
    assert [(s["ref"], s["state"], s["key_id"]) for s in out["signatures"]] == [
        (f"{name}@1", "valid", kid)]
    code, out = verify(f"{name}@2", "--require-signed", "--trusted-key", str(public))
    assert code == 4 and out["ok"] is False and out["signatures"][0]["state"] == "missing"
    code, out = verify(f"{name}@3", "--require-signed", "--trusted-key", str(public))
    assert code == 4 and out["signatures"][0]["state"] == "untrusted"
    # Trusting Mallory's key too makes her version pass.
    code, out = verify(f"{name}@3", "--require-signed", "--trusted-key", str(public),
                       "--trusted-key", str(keys["mallory"][1]))
    assert code == 0
    # Without --require-signed, verify checks content only, as before.
    code, out = verify(f"{name}@2")
    assert code == 0 and "signatures" not in out


def test_verify_require_signed_checks_every_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    keys: dict[str, tuple[Path, Path, str]]
) -> None:
    # A registry of its own: every version in it is judged.
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    private, public, _kid = keys["alice"]
    monkeypatch.setenv("MODELKEEP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODELKEEP_REGISTRY", registry)
    keep = _keep(tmp_path, registry, private)
    a, b = unique_name("a"), unique_name("b")
    keep.register(a, write_model(tmp_path / "a", tensors(seed=1, n=2)))
    keep.register(b, write_model(tmp_path / "b", tensors(seed=2, n=2)))
    capsys.readouterr()
    assert main(["verify", "--require-signed"]) == 2  # no trusted key at all
    assert "needs a trusted key" in capsys.readouterr().err
    monkeypatch.setenv("MODELKEEP_TRUSTED_KEYS", str(public))
    assert main(["--json", "verify", "--require-signed"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(s["ref"] for s in out["signatures"]) == sorted([f"{a}@1", f"{b}@1"])
    _keep(tmp_path, registry).register(b, write_model(tmp_path / "c", tensors(seed=3, n=2)))
    assert main(["verify", "--require-signed"]) == 4
    err_out = capsys.readouterr().out
    assert f"UNSIGNED {b}@2: signature missing" in err_out
    assert "2 of 3 version(s) signed by a trusted key" in err_out
