"""The framing every stored object carries.

An object is a 16-byte header followed by its payload::

    offset  size  field
    0       4     magic  b"MKOB"
    4       1     format version (1)
    5       1     kind   (1 = chunk, 2 = snapshot, 3 = journal entry)
    6       1     codec flags (bit 0: zstd, reserved; bit 1: sealed, AES-256-GCM)
    7       1     reserved, 0
    8       8     raw length, unsigned little-endian: length of the payload once decoded

The header makes compression and encryption per-object options rather than new formats: a reader
that meets a flag it does not know refuses the object instead of returning garbage. The payload of
an object with flags 0 is the raw bytes; the object's id is the BLAKE3 of those bytes. A sealed
object's payload is ``nonce (12) + ciphertext (raw length) + tag (16)``, and its id the keyed
BLAKE3 of the plaintext (:mod:`modelkeep.store.crypto`). An encrypted store holds only sealed
objects and a plain one none, so a reader says which it expects and refuses the other: a plaintext
object slipped into an encrypted store is as damaged as a corrupt one.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from modelkeep.errors import IntegrityError

if TYPE_CHECKING:
    import mmap

MAGIC = b"MKOB"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ")
HEADER_SIZE = HEADER.size  # 16
FLAG_SEALED = 0x02
KNOWN_FLAGS = FLAG_SEALED
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE


class Kind(IntEnum):
    CHUNK = 1
    SNAPSHOT = 2
    JOURNAL = 3


def encode_header(kind: Kind, raw_length: int, flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, int(kind), flags, 0, raw_length)


def decode(blob: bytes | memoryview | mmap.mmap, kind: Kind, what: str, *,
           sealed: bool = False) -> memoryview:
    """Check *blob*'s header and return its payload (for a *sealed* object: nonce, ciphertext and
    tag, still to be opened). *what* names the object in errors."""
    view = memoryview(blob)
    check_header(view[:HEADER_SIZE], len(view) - HEADER_SIZE, kind, what, sealed=sealed)
    return view[HEADER_SIZE:]


def check_header(header: bytes | memoryview, payload_size: int, kind: Kind, what: str, *,
                 sealed: bool = False) -> None:
    """Check an object's *header* against the *payload_size* bytes that follow it: what
    :func:`decode` checks, for a reader that does not hold the payload in memory."""
    view = memoryview(header)
    if len(view) < HEADER_SIZE:
        raise IntegrityError(f"{what} is truncated ({len(view)} bytes, header needs 16)")
    magic, version, got_kind, flags, _reserved, raw_length = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise IntegrityError(f"{what} is not a modelkeep object (bad magic)")
    if version != FORMAT_VERSION:
        raise IntegrityError(
            f"{what} has format version {version}; this modelkeep reads version {FORMAT_VERSION}",
            hint="upgrade modelkeep",
        )
    if got_kind != int(kind):
        raise IntegrityError(f"{what} is a {_kind_name(got_kind)} object, expected {kind.name}")
    if flags & ~KNOWN_FLAGS:
        raise IntegrityError(
            f"{what} uses codec flags {flags:#04x} that this modelkeep does not support",
            hint="upgrade modelkeep",
        )
    if sealed and not flags & FLAG_SEALED:
        raise IntegrityError(f"{what} is not encrypted, but its store is: it was not written "
                             "by this store")
    if flags & FLAG_SEALED and not sealed:
        raise IntegrityError(f"{what} is encrypted, but its store is not",
                             hint="the object was copied from an encrypted store")
    expected = raw_length + (SEAL_OVERHEAD if sealed else 0)
    if payload_size != expected:
        raise IntegrityError(
            f"{what} is truncated: header says {expected} bytes, payload has {payload_size}"
        )


def _kind_name(value: int) -> str:
    try:
        return Kind(value).name
    except ValueError:
        return f"unknown ({value})"
