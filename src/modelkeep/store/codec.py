"""The framing every stored object carries.

An object is a 16-byte header followed by its payload::

    offset  size  field
    0       4     magic  b"MKOB"
    4       1     format version (1)
    5       1     kind   (1 = chunk, 2 = snapshot, 3 = journal entry)
    6       1     codec flags (bit 0: coded; bit 1: sealed, AES-256-GCM)
    7       1     codec: which one coded the payload (coded chunks); otherwise 0, ignored
    8       8     raw length, unsigned little-endian: length of the payload once decoded

The header makes compression and encryption per-object options rather than new formats: a reader
that meets a flag or codec it does not know refuses the object instead of returning garbage. The
payload of an object with flags 0 is the raw bytes; the object's id is the BLAKE3 of those bytes.
A *coded* chunk's payload is the output of its codec (:mod:`modelkeep.store.coding`), strictly
shorter than the raw bytes it decodes to, and its id is still the BLAKE3 of the raw bytes. A sealed
object's payload is ``nonce (12) + ciphertext (raw length) + tag (16)``, and its id the keyed
BLAKE3 of the plaintext (:mod:`modelkeep.store.crypto`). An encrypted store holds only sealed
objects and a plain one none, so a reader says which it expects and refuses the other: a plaintext
object slipped into an encrypted store is as damaged as a corrupt one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from modelkeep.errors import IntegrityError
from modelkeep.store.chunking import MAX_CHUNK

if TYPE_CHECKING:
    import mmap

MAGIC = b"MKOB"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBBBQ")
HEADER_SIZE = HEADER.size  # 16
FLAG_CODED = 0x01
FLAG_SEALED = 0x02
KNOWN_FLAGS = FLAG_CODED | FLAG_SEALED
# Codec numbers (header byte 7 of a coded chunk); what each means is in modelkeep.store.coding,
# imported only by the code that codes, so reading a header needs neither numpy nor zstd.
CODEC_ZSTD = 1
CODEC_PLANES = 2
CODEC_DELTA = 3
KNOWN_CODECS = frozenset({CODEC_ZSTD, CODEC_PLANES, CODEC_DELTA})
# The longest chain of deltas a reader follows: a chunk is read with at most this many more.
MAX_DELTA_DEPTH = 3
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE


class Kind(IntEnum):
    CHUNK = 1
    SNAPSHOT = 2
    JOURNAL = 3


@dataclass(frozen=True)
class Header:
    """What a checked object header says."""

    flags: int
    codec: int  # 0 unless coded
    raw_length: int

    @property
    def coded(self) -> bool:
        return bool(self.flags & FLAG_CODED)


def encode_header(kind: Kind, raw_length: int, flags: int = 0, codec: int = 0) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, int(kind), flags, codec, raw_length)


def decode(blob: bytes | memoryview | mmap.mmap, kind: Kind, what: str, *,
           sealed: bool = False) -> memoryview:
    """Check *blob*'s header and return its payload (for a *sealed* object: nonce, ciphertext and
    tag, still to be opened; for a coded one, still to be decoded). *what* names the object in
    errors."""
    return split(blob, kind, what, sealed=sealed)[1]


def split(blob: bytes | memoryview | mmap.mmap, kind: Kind, what: str, *,
          sealed: bool = False) -> tuple[Header, memoryview]:
    """:func:`decode`, also returning what the header says."""
    view = memoryview(blob)
    header = check_header(view[:HEADER_SIZE], len(view) - HEADER_SIZE, kind, what,
                          sealed=sealed)
    return header, view[HEADER_SIZE:]


def check_header(header: bytes | memoryview, payload_size: int, kind: Kind, what: str, *,
                 sealed: bool = False) -> Header:
    """Check an object's *header* against the *payload_size* bytes that follow it: what
    :func:`decode` checks, for a reader that does not hold the payload in memory."""
    view = memoryview(header)
    if len(view) < HEADER_SIZE:
        raise IntegrityError(f"{what} is truncated ({len(view)} bytes, header needs 16)")
    magic, version, got_kind, flags, codec, raw_length = HEADER.unpack_from(view)
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
    overhead = SEAL_OVERHEAD if sealed else 0
    if flags & FLAG_CODED:
        if kind is not Kind.CHUNK:
            raise IntegrityError(f"{what} is a coded {kind.name} object; only chunks are coded")
        if codec not in KNOWN_CODECS:
            raise IntegrityError(f"{what} uses codec {codec}, which this modelkeep does not know",
                                 hint="upgrade modelkeep")
        # The raw length bounds what decoding may allocate: no more than a chunk can hold.
        if not 0 < raw_length <= MAX_CHUNK:
            raise IntegrityError(f"{what} claims a raw length of {raw_length} bytes; a chunk "
                                 f"holds 1 to {MAX_CHUNK}")
        if not overhead < payload_size < raw_length + overhead:
            raise IntegrityError(f"{what} is damaged: a coded payload of {payload_size - overhead}"
                                 f" bytes for {raw_length} raw bytes")
        return Header(flags, codec, raw_length)
    expected = raw_length + overhead
    if payload_size != expected:
        raise IntegrityError(
            f"{what} is truncated: header says {expected} bytes, payload has {payload_size}"
        )
    return Header(flags, 0, raw_length)


def _kind_name(value: int) -> str:
    try:
        return Kind(value).name
    except ValueError:
        return f"unknown ({value})"
