"""Chunk codecs: how a chunk's bytes are coded inside its object, chosen per chunk.

A chunk object whose header has the *coded* flag holds the output of one codec, named by the
header's codec byte (docs/format.md §3.1); its id is still the hash of the raw bytes, so dedup,
verification and every reader keep their meaning: decode, then hash.

* ``ZSTD`` (1): one zstd frame of the raw bytes. For everything that is not floating-point
  tensor data: headers, JSON, tokenizers, pickles, opaque blobs, integer tensors.
* ``PLANES`` (2): floating-point tensor data of element width 2, 4 or 8 bytes. Each element,
  read as a little-endian unsigned integer, is rotated left by one bit (the sign moves from the
  top bit to the bottom), then the elements are split into byte planes: plane *j* holds byte *j*
  of every element. The top plane then holds the exponent (all of it for bf16, fp32 and fp64)
  and compresses to about a third; the mantissa planes are close to random in trained weights
  and are usually stored as they are. Each plane is stored or zstd-coded on its own.

The writer never keeps a codec's output that is not smaller than the raw bytes: such a chunk is
stored plain, so incompressible data costs nothing but the 16-byte header.

Why these, measured on the real all-MiniLM-L6-v2 weights in 4 MiB chunks (bench/codecs.py):
byte planes with the sign rotated out of the exponent byte reach the order-0 entropy of the
planes (bf16 0.665x raw, fp32 0.833x), against zstd of the chunk 0.78x / 0.92x and blosc2's
shuffle + zstd 0.69x / 0.83x. The exponent plane is coded by zstd with a small hash table and
7-byte minimum matches: almost every byte is then a Huffman-coded literal, which beats zstd's
level 1 (0.364 of the plane) and level 19 (0.331) at 0.331 and several times level 1's speed.
zstd itself comes from the maintained ``zstandard`` package; numpy does the plane split.

Decoders are hostile-input safe: every output size is fixed in advance by the header's raw
length, a zstd frame must declare exactly the size expected before it is decompressed, and
trailing or missing bytes are refused, so no payload can make a reader allocate more than the
chunk's raw length (at most 4 MiB).
"""

from __future__ import annotations

import struct
import threading
from enum import IntEnum

import numpy as np
import zstandard

from modelkeep.errors import IntegrityError
from modelkeep.store.codec import CODEC_PLANES, CODEC_ZSTD


class Codec(IntEnum):
    ZSTD = CODEC_ZSTD
    PLANES = CODEC_PLANES



# Element width of each safetensors floating-point dtype that byte planes apply to. The 1-byte
# float formats (F8_*) have no planes to split; they get zstd like everything else.
FLOAT_WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}

ZSTD_LEVEL = 3  # for general data: the zstd default, a fair speed for text and pickles
_SAMPLE = 64 << 10  # bytes tried before coding a whole plane or chunk that may not compress
_SAMPLE_GAIN = 0.95  # a sample must shrink at least this much for the whole to be coded
_PLANE_RECORD = struct.Struct("<BI")  # method, stored length
_STORED, _ZSTD_FRAME = 0, 1

_local = threading.local()


def _literal_params() -> zstandard.ZstdCompressionParameters:
    # A small hash table and 7-byte minimum matches: near-random bytes with a skewed
    # distribution (exponents) are coded almost entirely as Huffman literals.
    return zstandard.ZstdCompressionParameters(
        window_log=18, hash_log=6, chain_log=6, search_log=1, min_match=7, target_length=0,
        strategy=zstandard.STRATEGY_FAST, write_content_size=True)


def _compressor(kind: str) -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe: one of each kind per thread, reused for every chunk.
    ctx: zstandard.ZstdCompressor | None = getattr(_local, kind, None)
    if ctx is None:
        if kind == "literal":
            ctx = zstandard.ZstdCompressor(compression_params=_literal_params())
        else:
            ctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        setattr(_local, kind, ctx)
    return ctx


def _decompressor() -> zstandard.ZstdDecompressor:
    ctx: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if ctx is None:
        ctx = _local.d = zstandard.ZstdDecompressor()
    return ctx


# -- encoding ----------------------------------------------------------------------------------


def encode(raw: bytes | bytearray | memoryview, dtype: str | None,
           policy: str = "auto") -> tuple[Codec, bytes] | None:
    """The codec and payload to store chunk *raw* with, or None to store it plain.

    *dtype* is the safetensors dtype when the whole chunk is tensor data of that one dtype, else
    None. *policy* is the store's ``codec`` setting: ``auto`` (planes for float tensors, zstd for
    the rest), ``zstd`` (zstd for everything) or ``none``."""
    n = len(raw)
    if policy == "none" or n == 0:
        return None
    width = FLOAT_WIDTHS.get(dtype or "") if policy == "auto" else None
    if width is not None and n % width == 0:
        payload = _encode_planes(raw, width)
        if payload is not None and len(payload) < n:
            return Codec.PLANES, payload
        return None
    kind = "literal" if (dtype or "").startswith("F8") and policy == "auto" else "general"
    if n > _SAMPLE and not _shrinks(memoryview(raw)[:_SAMPLE], kind):
        return None
    frame = _compressor(kind).compress(raw)
    if len(frame) < n:
        return Codec.ZSTD, frame
    return None


def _shrinks(sample: bytes | memoryview, kind: str) -> bool:
    return len(_compressor(kind).compress(sample)) < _SAMPLE_GAIN * len(sample)


def _encode_planes(raw: bytes | bytearray | memoryview, width: int) -> bytes | None:
    utype = np.dtype(f"<u{width}")
    bits = 8 * width
    values = np.frombuffer(raw, dtype=utype)
    rotated = (values << 1) | (values >> (bits - 1))
    grid = rotated.view(np.uint8).reshape(-1, width)
    parts = [bytes((width,))]
    for j in range(width):
        plane = np.ascontiguousarray(grid[:, j])
        # The top plane holds the exponent: always worth coding. Lower planes are mantissa
        # bits, near random in trained weights; a sample tells cheaply whether to try.
        if j == width - 1 or _shrinks(memoryview(plane)[:_SAMPLE], "literal"):
            frame = _compressor("literal").compress(plane)
            if len(frame) < len(plane):
                parts += (_PLANE_RECORD.pack(_ZSTD_FRAME, len(frame)), frame)
                continue
        parts += (_PLANE_RECORD.pack(_STORED, len(plane)), plane.tobytes())
    return b"".join(parts)


# -- decoding ----------------------------------------------------------------------------------


def decode(codec: int, payload: bytes | memoryview, raw_length: int, what: str) -> memoryview:
    """The raw bytes of a coded chunk: exactly *raw_length* of them, or :class:`IntegrityError`.
    The caller still checks them against the chunk's id."""
    view = memoryview(payload).cast("B")
    if codec == Codec.ZSTD:
        return memoryview(_unzstd(view, raw_length, what))
    if codec == Codec.PLANES:
        return _decode_planes(view, raw_length, what)
    raise IntegrityError(f"{what} uses codec {codec}, which this modelkeep does not know",
                         hint="upgrade modelkeep")


def _unzstd(frame: memoryview, size: int, what: str) -> bytes:
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise IntegrityError(f"{what} is corrupt: its payload is not a zstd frame") from None
    if declared != size:
        raise IntegrityError(f"{what} is corrupt: its zstd frame declares {declared} bytes, "
                             f"the chunk has {size}")
    try:
        out = _decompressor().decompress(frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{what} is corrupt: {exc}") from None
    if len(out) != size:
        raise IntegrityError(f"{what} is corrupt: it decodes to {len(out)} bytes, not {size}")
    return out


def _decode_planes(view: memoryview, size: int, what: str) -> memoryview:
    if not view or view[0] not in (2, 4, 8):
        raise IntegrityError(f"{what} is corrupt: bad element width in its plane payload")
    width = view[0]
    if size % width:
        raise IntegrityError(f"{what} is corrupt: {size} bytes is not a whole number of "
                             f"{width}-byte elements")
    count = size // width
    grid = np.empty((count, width), dtype=np.uint8)
    pos = 1
    for j in range(width):
        if pos + _PLANE_RECORD.size > len(view):
            raise IntegrityError(f"{what} is corrupt: its plane payload is truncated")
        method, length = _PLANE_RECORD.unpack_from(view, pos)
        pos += _PLANE_RECORD.size
        body = view[pos : pos + length]
        if len(body) != length:
            raise IntegrityError(f"{what} is corrupt: its plane payload is truncated")
        pos += length
        if method == _STORED:
            if length != count:
                raise IntegrityError(f"{what} is corrupt: plane {j} has {length} bytes, "
                                     f"not {count}")
            grid[:, j] = np.frombuffer(body, dtype=np.uint8)
        elif method == _ZSTD_FRAME:
            grid[:, j] = np.frombuffer(_unzstd(body, count, what), dtype=np.uint8)
        else:
            raise IntegrityError(f"{what} is corrupt: plane {j} has unknown method {method}")
    if pos != len(view):
        raise IntegrityError(f"{what} is corrupt: {len(view) - pos} bytes after its planes")
    rotated = grid.reshape(-1).view(np.dtype(f"<u{width}"))
    bits = 8 * width
    values = (rotated >> 1) | (rotated << (bits - 1))
    return memoryview(values.view(np.uint8))
