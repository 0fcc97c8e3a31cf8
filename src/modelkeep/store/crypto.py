"""Encryption at rest: key material, key wraps and sealed objects of an encrypted store.

Envelope encryption. At creation an encrypted store gets two random 256-bit keys: the *data key*
(DEK), which seals every chunk and snapshot with AES-256-GCM, and the *id key*, which keys the
BLAKE3 hash that names objects (so names reveal nothing about content, while equal content still
gets equal names and dedups within the store). Both are kept only *wrapped*: sealed with the
user's key-encryption key (KEK) in a small key object ``keys/<kek id>.json``. Changing the user's
key (rotation) therefore rewrites one small file and no chunk.

The KEK id is a keyed BLAKE3 of a fixed label under the KEK: it names the wrap a key opens and
tells a wrong key from a damaged wrap without revealing anything about the key.

Sealed object layout (docs/format.md §14) and what each piece defends against:

* the 16-byte object header, with the *sealed* codec flag, and the object's 32-byte id are the
  associated data, so bytes moved to another name (a swapped chunk, an older snapshot copied over
  a newer one) or a header edited to claim another kind or length fail authentication;
* a fresh random 96-bit nonce per object: objects are written once, and NIST SP 800-38D allows
  2^32 random-nonce encryptions per key, which at chunk sizes of 256 KiB to 4 MiB is petabytes of
  distinct chunks per store.

This module holds key material; nothing here formats a key into an error or a log line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelkeep.errors import ConfigError, IntegrityError
from modelkeep.store.chunking import MAX_CHUNK
from modelkeep.store.codec import NONCE_SIZE, SEAL_OVERHEAD, TAG_SIZE

KEY_SIZE = 32
_SCRATCH_MAX = MAX_CHUNK + TAG_SIZE
KEYS_DIR = "keys"
WRAP_TYPE = "modelkeep.key"
WRAP_FORMAT = 1
SCHEME = "aes-256-gcm+blake3-keyed"
_KEK_ID_LABEL = b"modelkeep kek id v1"
_WRAP_AAD = b"modelkeep.key\x00"


def parse_key(text: str | bytes, source: str) -> bytes:
    """A 32-byte key from its written form: 64 hexadecimal characters, or standard or URL-safe
    base64 of 32 bytes (44 characters with padding). A key file may also hold the 32 raw bytes.
    *source* names where the key came from, for the error (never the key itself)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    if len(raw) == KEY_SIZE and not _is_text_key(raw):
        return bytes(raw)
    stripped = raw.strip()
    if len(stripped) == 2 * KEY_SIZE:
        try:
            return binascii.unhexlify(stripped)
        except (binascii.Error, ValueError):
            pass
    stripped += b"=" * (-len(stripped) % 4)
    try:
        decoded = base64.b64decode(stripped.replace(b"-", b"+").replace(b"_", b"/"),
                                   validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEY_SIZE:
        return decoded
    raise ConfigError(
        f"the key in {source} is not a 256-bit key",
        hint="write 32 random bytes as 64 hex characters or base64, e.g. "
        "`modelkeep key generate FILE`",
    )


def _is_text_key(raw: bytes) -> bool:
    # 32 printable bytes cannot be a hex or base64 key (those are 64 and 44 characters long), but
    # a user may have meant them as a passphrase: refuse those rather than use them as raw bytes.
    return all(32 <= b < 127 for b in raw)


def format_key(key: bytes) -> str:
    """The written form of *key* that :func:`parse_key` reads (base64, 44 characters)."""
    return base64.b64encode(key).decode("ascii")


def new_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def kek_id(kek: bytes) -> str:
    """The id of a key-encryption key: 32 hex characters, the same for the same key."""
    return blake3(_KEK_ID_LABEL, key=kek).hexdigest()[:32]


@dataclass(frozen=True)
class Candidate:
    """A key offered for a store, and where it came from (for messages; never the key)."""

    key: bytes
    source: str

    @property
    def id(self) -> str:
        return kek_id(self.key)

    def __repr__(self) -> str:  # keep key bytes out of tracebacks and logs
        return f"Candidate(id={self.id!r}, source={self.source!r})"


def wrap_path(root: str, kid: str) -> str:
    return f"{root}/{KEYS_DIR}/{kid}.json"


def wrap_keys(kek: bytes, store_id: str, dek: bytes, id_key: bytes, created: str) -> bytes:
    """The key object that keeps *dek* and *id_key* sealed under *kek* for store *store_id*."""
    kid = kek_id(kek)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = AESGCM(kek).encrypt(nonce, dek + id_key, _wrap_aad(store_id, kid))
    doc = {
        "format": WRAP_FORMAT,
        "type": WRAP_TYPE,
        "alg": "AES-256-GCM",
        "kek_id": kid,
        "store_id": store_id,
        "nonce": nonce.hex(),
        "wrapped": sealed.hex(),
        "created": created,
    }
    return json.dumps(doc, sort_keys=True).encode()


def _wrap_aad(store_id: str, kid: str) -> bytes:
    return _WRAP_AAD + store_id.encode("ascii") + b"\x00" + kid.encode("ascii")


def unwrap_keys(blob: bytes, kek: bytes, store_id: str, what: str) -> tuple[bytes, bytes]:
    """``(dek, id_key)`` from a key object. A key object that is malformed, belongs to another
    store or was altered is an :class:`IntegrityError` naming *what*."""
    kid = kek_id(kek)
    try:
        doc = json.loads(blob)
        ok = (isinstance(doc, dict) and doc.get("type") == WRAP_TYPE
              and doc.get("format") == WRAP_FORMAT and doc.get("kek_id") == kid)
        nonce = bytes.fromhex(doc["nonce"]) if ok else b""
        sealed = bytes.fromhex(doc["wrapped"]) if ok else b""
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok or len(nonce) != NONCE_SIZE or len(sealed) != 2 * KEY_SIZE + TAG_SIZE:
        raise IntegrityError(f"{what} is malformed",
                             hint="restore it from a backup, or open the store with another key")
    if doc.get("store_id") != store_id:
        raise IntegrityError(f"{what} belongs to another store (store id {doc.get('store_id')!r})",
                             hint="restore this store's key object from a backup")
    try:
        plain = AESGCM(kek).decrypt(nonce, sealed, _wrap_aad(store_id, kid))
    except InvalidTag:
        raise IntegrityError(f"{what} fails authentication: it was altered",
                             hint="restore it from a backup") from None
    return plain[:KEY_SIZE], plain[KEY_SIZE:]


class ObjectCipher:
    """Keyed ids and AES-256-GCM sealing for the objects of one encrypted store.

    Thread-safe: workers seal and open objects concurrently (OpenSSL releases the GIL while it
    encrypts), each with its own cipher context.
    """

    def __init__(self, dek: bytes, id_key: bytes, kid: str) -> None:
        if len(dek) != KEY_SIZE or len(id_key) != KEY_SIZE:
            raise ValueError("keys must be 32 bytes")
        self._dek = dek
        self._id_key = id_key
        self.kek_id = kid
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ObjectCipher(kek_id={self.kek_id!r})"

    def _aead(self) -> AESGCM:
        aead = getattr(self._local, "aead", None)
        if aead is None:
            aead = self._local.aead = AESGCM(self._dek)
        return aead

    def keys(self) -> tuple[bytes, bytes]:
        """``(dek, id_key)``, for re-wrapping them under another key-encryption key."""
        return self._dek, self._id_key

    def object_id(self, data: bytes | bytearray | memoryview) -> str:
        """Keyed BLAKE3 of *data*: equal content, equal id, but only for holders of the key."""
        return blake3(data, key=self._id_key).hexdigest()

    def new_hasher(self) -> blake3:
        return blake3(key=self._id_key)

    def _scratch(self, name: str, size: int) -> memoryview:
        """This thread's reusable buffer *name*, at least *size* bytes (objects larger than a
        chunk get a fresh one): sealing into a reused buffer spares a 4 MiB allocation and its
        page faults per chunk, which measured a quarter of the cost of encrypting."""
        if size > _SCRATCH_MAX:
            return memoryview(bytearray(size))
        buf = getattr(self._local, name, None)
        if buf is None:
            buf = bytearray(_SCRATCH_MAX)
            setattr(self._local, name, buf)
        return memoryview(buf)[:size]

    def seal(
        self, header: bytes, oid: str, data: bytes | memoryview,
        workspace: bytearray | None = None,
    ) -> tuple[bytes, memoryview]:
        """``(nonce, ciphertext + tag)`` of *data* stored under *oid* with *header*.

        With *workspace*, the buffer *data* is the start of and that the caller is done with, the
        object is sealed in place (AES-GCM encrypts in place), which saves writing every byte to
        a second buffer; it needs 16 spare bytes for the tag. Otherwise the ciphertext is in this
        thread's buffer: write it out before sealing the next object."""
        nonce = os.urandom(NONCE_SIZE)
        n = len(data)
        if workspace is not None and len(workspace) >= n + TAG_SIZE:
            out = memoryview(workspace)[: n + TAG_SIZE]
        else:
            out = self._scratch("seal_buf", n + TAG_SIZE)
        self._aead().encrypt_into(nonce, data, header + bytes.fromhex(oid), out)
        return nonce, out

    def open(self, header: bytes | memoryview, oid: str, body: memoryview, what: str,
             *, transient: bool = False) -> memoryview:
        """The plaintext of a sealed object body (nonce, ciphertext, tag). With *transient*, it
        is in this thread's buffer, valid until the thread opens the next object."""
        if len(body) < SEAL_OVERHEAD:
            raise IntegrityError(f"{what} is truncated: a sealed payload needs "
                                 f"{SEAL_OVERHEAD} bytes, it has {len(body)}")
        nonce = bytes(body[:NONCE_SIZE])
        size = len(body) - SEAL_OVERHEAD
        out = (self._scratch("open_buf", size) if transient
               else memoryview(bytearray(size)))
        try:
            self._aead().decrypt_into(nonce, body[NONCE_SIZE:],
                                      bytes(header) + bytes.fromhex(oid), out)
        except InvalidTag:
            raise IntegrityError(
                f"{what} fails authentication: its bytes were altered, or it is another "
                f"object's content stored under its id {oid}"
            ) from None
        return out


def candidates_from(keys: Iterable[tuple[bytes, str]]) -> list[Candidate]:
    """Distinct candidates, first source kept for a key offered twice."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for key, source in keys:
        cand = Candidate(key, source)
        if cand.id not in seen:
            seen.add(cand.id)
            out.append(cand)
    return out
