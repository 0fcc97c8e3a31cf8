"""Ed25519 signatures of snapshots: keys, signing, and judging a version's signatures.

A snapshot's id is the BLAKE3 of its bytes, so signing the id signs the whole version: every file,
chunk list, tensor map, the model name, parents, tags and lineage. The signature cannot live inside
the snapshot (that would change its id); it is a separate write-once object beside it,
``signatures/<id[0:2]>/<id[2:]>/<key id>`` (docs/format.md §13), one per signing key. Ed25519
signatures are deterministic, so two writers signing the same snapshot with the same key write the
same bytes and the conditional create cannot conflict.

A signature proves something only when its key is trusted: an attacker who can write to the bucket
can also sign with a key of their own. :func:`judge` therefore reports ``valid`` only for a
signature by a trusted key, ``untrusted`` for a good signature by any other key, ``invalid`` when
signature objects exist but none verifies (tampered, copied from another snapshot, or for a
snapshot that names another model), and ``missing`` when there is none.

Keys: the signing key comes from ``modelkeep.open(signing_key=PATH)``, ``MODELKEEP_SIGNING_KEY``
(a path) or the store option ``signing_key``; a private key file is PEM (PKCS#8 or OpenSSH), 32 raw
bytes, or 64 hex characters. Trusted public keys are files (PEM, OpenSSH ``ssh-ed25519 …``, 32 raw
bytes or hex) or key ids, from ``--trusted-key``, ``MODELKEEP_TRUSTED_KEYS`` (paths separated by
``os.pathsep``), and always the public half of the signing key in use. ``modelkeep key generate
--signing FILE`` writes a pair. ``cryptography`` is imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from modelkeep.errors import ConfigError, Hint, InvalidInputError, NotFoundError, Option
from modelkeep.store.hashing import content_id, is_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from modelkeep.store import Store

SIGNING_KEY_ENV = "MODELKEEP_SIGNING_KEY"
TRUSTED_KEYS_ENV = "MODELKEEP_TRUSTED_KEYS"
SIGNING_KEY_OPTION = "signing_key"  # in a store's options; never reaches fsspec
SIGNATURE_FORMAT = 1
ALGORITHM = "ed25519"
# Domain separation: these bytes are never a valid message of any other protocol.
_CONTEXT = b"modelkeep snapshot signature v1\n"
MAX_KEY_FILE = 16 << 10

State = Literal["valid", "untrusted", "invalid", "missing"]


def _crypto() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def message(snapshot_id: str) -> bytes:
    """The bytes signed for a snapshot."""
    return _CONTEXT + snapshot_id.encode("ascii")


def raw_public(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """A public key's id: the BLAKE3 of its 32 raw bytes."""
    return content_id(public)


# -- key files ------------------------------------------------------------------------------------


# Where each kind of key file is named: a missing file is a setting to correct, and a key made
# anew would not be the one the setting meant (nor trusted where the old one is).
_WHERE_NAMED = {
    "signing key": Hint(
        "the signing key is the file {given}MODELKEEP_SIGNING_KEY or the store option "
        "signing_key names: put the key back there, or point the setting at it",
        given=Option(api="signing_key=, ", cli="")),
    "trusted key": Hint(
        "trusted keys are the files {given} and MODELKEEP_TRUSTED_KEYS name: check the path "
        "(a signing key's public key is FILE.pub beside it)",
        given=Option(api="trusted_keys=", cli="--trusted-key")),
}


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {str(path)!r} does not exist",
                          hint=_WHERE_NAMED.get(what)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(f"{what} file {str(path)!r} is too large to be a key")
    return data


def _raw32(data: bytes) -> bytes | None:
    """32 key bytes from a raw or hex file, or None."""
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 64:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            return None
    return None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8 or OpenSSH), raw or hex file."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    data = _read_key_file(path, "signing key")
    raw = _raw32(data)
    key: object
    try:
        if raw is not None:
            private: Ed25519PrivateKey = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
            return private
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key file {str(path)!r} holds no usable Ed25519 private key "
                          f"({_short(exc)})",
                          hint="use a PEM or raw key from `modelkeep key generate --signing FILE` "
                          "(without a passphrase)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"signing key file {str(path)!r} is not an Ed25519 key",
                          hint="create one with `modelkeep key generate --signing FILE`")
    return cast("Ed25519PrivateKey", key)  # the module is loaded lazily, so typed as Any


def load_public_key(value: str | os.PathLike[str]) -> bytes:
    """The 32 raw bytes of a public key named by a file (PEM, OpenSSH, raw or hex)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    path = Path(value)
    data = _read_key_file(path, "trusted key")
    raw = _raw32(data)
    if raw is not None:
        return raw
    key: object
    try:
        if data.lstrip().startswith(b"ssh-ed25519"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"trusted key file {str(path)!r} holds no usable public key "
                          f"({_short(exc)})",
                          hint="pass the .pub file that `modelkeep key generate --signing` "
                          "wrote") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"trusted key file {str(path)!r} is not an Ed25519 key")
    return raw_public(key)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:120] or type(exc).__name__


def trusted_key_ids(values: Iterable[str | os.PathLike[str]]) -> set[str]:
    """Key ids from key files or ids (64 hex characters that name no file)."""
    out = set()
    for value in values:
        text = os.fspath(value)
        if is_id(text) and not os.path.exists(text):
            out.add(text)
        else:
            out.add(key_id(load_public_key(text)))
    return out


def env_trusted_keys() -> list[str]:
    raw = os.environ.get(TRUSTED_KEYS_ENV, "")
    return [p for p in raw.split(os.pathsep) if p.strip()]


def write_key_pair(out: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new private key to *out* (PEM, mode 0600) and its public key to ``OUT.pub``;
    neither may exist. Returns both paths and the key id."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() or p.is_symlink():
            raise InvalidInputError(f"{str(p)!r} already exists",
                                    hint="choose another path; keys are never overwritten")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path, key_id(raw_public(key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise InvalidInputError(f"{str(path)!r} already exists",
                                hint="choose another path; keys are never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# -- signer ---------------------------------------------------------------------------------------


class Signer:
    """A loaded signing key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = raw_public(key.public_key())
        self.key_id = key_id(self.public)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Signer:
        return cls(load_private_key(path))

    def document(self, snapshot_id: str) -> bytes:
        """The signature object for *snapshot_id* (canonical JSON)."""
        doc = {
            "type": "modelkeep.signature",
            "format": SIGNATURE_FORMAT,
            "algorithm": ALGORITHM,
            "snapshot": snapshot_id,
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public).decode(),
            "signature": base64.b64encode(self._key.sign(message(snapshot_id))).decode(),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, store: Store, snapshot_id: str) -> None:
        store.put_signature(snapshot_id, self.key_id, self.document(snapshot_id))


# -- judging --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureStatus:
    """What the signatures of one version say.

    ``state``: ``valid`` (a good signature by a trusted key), ``untrusted`` (good signatures, by
    no trusted key), ``invalid`` (signature objects, none good), ``missing`` (none).
    ``key_id`` is the trusted key that signed (``valid``), else the first key seen, else None.
    """

    snapshot_id: str
    state: State
    key_id: str | None
    signers: tuple[str, ...] = ()  # every key with a good signature
    problems: tuple[str, ...] = ()  # why each bad signature object is bad

    @property
    def ok(self) -> bool:
        return self.state == "valid"

    def to_json(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "state": self.state, "key_id": self.key_id,
                "signers": list(self.signers), "problems": list(self.problems)}


def check_document(blob: bytes, snapshot_id: str, key_name: str) -> str:
    """The key id of a good signature object *blob* for *snapshot_id* stored under *key_name*;
    raises ValueError saying what is wrong otherwise."""
    ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"signature {key_name[:16]} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("type") != "modelkeep.signature":
        raise ValueError(f"signature {key_name[:16]} is not a modelkeep signature")
    if doc.get("format") != SIGNATURE_FORMAT or doc.get("algorithm") != ALGORITHM:
        raise ValueError(f"signature {key_name[:16]} has an unknown format or algorithm")
    if doc.get("snapshot") != snapshot_id:
        raise ValueError(f"signature {key_name[:16]} is for another snapshot")
    try:
        public = base64.b64decode(str(doc.get("public_key")), validate=True)
        sig = base64.b64decode(str(doc.get("signature")), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"signature {key_name[:16]} is not base64") from None
    if len(public) != 32 or key_id(public) != doc.get("key_id") or doc.get("key_id") != key_name:
        raise ValueError(f"signature {key_name[:16]} names the wrong key")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(sig, message(snapshot_id))
    except (InvalidSignature, ValueError):
        raise ValueError(f"signature by key {key_name[:16]} does not verify") from None
    return key_name


def judge(store: Store, snapshot_id: str, model: str, snapshot_name: str,
          trusted: set[str]) -> SignatureStatus:
    """The :class:`SignatureStatus` of snapshot *snapshot_id* registered as model *model*."""
    names = store.signature_keys(snapshot_id)
    if not names:
        return SignatureStatus(snapshot_id, "missing", None)
    signers: list[str] = []
    problems: list[str] = []
    for name in names:
        try:
            blob = store.read_signature(snapshot_id, name)
            signers.append(check_document(bytes(blob), snapshot_id, name))
        except (ValueError, NotFoundError) as exc:
            problems.append(str(exc))
    if signers and snapshot_name != model:
        # A good signature on a snapshot of another model: substituted in the registry.
        return SignatureStatus(snapshot_id, "invalid", signers[0], tuple(signers),
                               (f"the signed snapshot is of model {snapshot_name!r}",))
    good = [k for k in signers if k in trusted]
    if good:
        return SignatureStatus(snapshot_id, "valid", good[0], tuple(signers), tuple(problems))
    if signers:
        return SignatureStatus(snapshot_id, "untrusted", signers[0], tuple(signers),
                               tuple(problems))
    return SignatureStatus(snapshot_id, "invalid", names[0], (), tuple(problems))


__all__ = [
    "SIGNING_KEY_ENV",
    "TRUSTED_KEYS_ENV",
    "SignatureStatus",
    "Signer",
    "judge",
    "key_id",
    "load_private_key",
    "load_public_key",
    "trusted_key_ids",
    "write_key_pair",
]
