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
* ``DELTA`` (3): a chunk as the difference from its *base*, the same part of the same tensor in
  the parent version (XOR for 2-byte elements, subtraction for wider ones), in byte planes. A
  fine-tune step changes every tensor a little, so most high bits of the difference are zero:
  AdamW checkpoints of MiniLM store at 0.15x (bf16) and 0.37x (fp32). A delta names its base and
  its depth in the chain; readers follow at most ``MAX_DELTA_DEPTH`` links (format §3.4).

The writer never keeps a codec's output that is not smaller than the raw bytes: such a chunk is
stored plain, so incompressible data costs nothing but the 16-byte header.

Why these, measured on the real all-MiniLM-L6-v2 weights in 4 MiB chunks (bench/codecs.py):
byte planes with the sign rotated out of the exponent byte reach the order-0 entropy of the
planes (bf16 0.665x raw, fp32 0.820x), against zstd of the chunk 0.78x / 0.92x and blosc2's
shuffle + zstd 0.69x / 0.83x. The exponent plane is coded by zstd with a small hash table and
7-byte minimum matches: almost every byte is then a Huffman-coded literal, which beats zstd's
level 1 (0.364 of the plane) and matches level 19 (0.331) at several times level 1's speed.
zstd itself comes from the maintained ``zstandard`` package; numpy does the plane split.

Speed (profiled with py-spy and perf on the store phase and pull of a bf16 model of
weight-like values, bench/ab.py ``--weights``): the Huffman coding of the exponent plane is the
one cost that stays. zstd's fast strategy spent 1.0 ns a byte of plane on it, 0.3 of that
looking for matches that near-random bytes do not have; with the search skipped and literal
coding forced on (:class:`_Literals`, through zstandard's CFFI backend) it is 0.7 ns at the same
ratio. A sample of each chunk's exponent plane is coded both ways first: values with runs or
patterns (zeros, masks, counters stored as floats) keep the search, without which they took up
to 20 times the bytes, and so do deltas, whose high bits are mostly runs of zeros. No other zstd
setting tried codes it faster, and negative levels turn literal coding off. Everything around it
was cut.
The split takes
a 512 KiB block of elements at a time and computes every plane of it, each with one numpy
operation on whole elements whose result numpy truncates to bytes as it stores it, straight
into the payload: each block is read from memory once, the temporaries stay in the core's
cache, and nothing is copied or joined afterwards. The buffers are each thread's, reused from
chunk to chunk (a fresh 4 MiB buffer per chunk cost more in page faults than the zstd coding).
Left shifts of 2-byte elements are multiplications (numpy's 16-bit left shift runs at half
the speed of its 16-bit multiplication) and the sign bit is a comparison, whose booleans are
already bytes. A pull decodes a chunk a block at a time and hashes and writes each block while
it is in cache; for 2-byte elements each byte plane is widened by the ufunc that places it.
Both run one worker thread per core, at most 4: more threads than cores only pass the GIL and
the caches back and forth (5-9% more CPU on two cores), and a pull asks the kernel for the
chunk objects a few ahead, so two workers keep a disk as busy as four did. Per GiB of bf16, in
CPU seconds (bench/ab.py medians on two cores shared with other work, load average 3-5; the
shares from perf; measured before the match search was skipped, which saves about 0.15 more):
storing is about 1.5, of which zstd 0.55, BLAKE3 0.15, the split 0.18, reading the source 0.18
(a copy into the read buffers), writing and creating objects 0.2 and the interpreter 0.15;
pulling is 1.1-1.2, of which decoding the exponent plane 0.27, putting planes together 0.2,
BLAKE3 0.15, the kernel's writing of the file 0.27 (its copy and ext4's work for each block) and
reading of the payloads 0.08. Where this started: store-phase CPU 3.7 s per GiB and pull 2.9 s
(bench/RESULTS-codec-speed.md), same bytes on disk throughout. Measured and
not kept, as none used clearly less CPU: mapping the payload on a pull (which also made it
slower against ``cp``), one writer at a time per file, 128 KiB to 1 MiB blocks, zstd decoding
into a reused buffer, splitting the blocks last first (the end of a chunk is still in cache
after hashing it), four pull workers of which only one per core may decode at a time. Mapping
the source file on a store would spare the read copy, but a file truncated while mapped kills
the process (SIGBUS) where it must fail with "changed while being read", so it was not tried.
zipnn (0.7 GB/s to code, 1.35 GB/s to decode on one core) and blosc2 (0.86 / 1.57 GB/s, and
0.69x where planes reach 0.665x) do the same work no faster, so the format keeps its codecs; and
for the exponent plane alone no other coder on PyPI comes close (bench/entropy.py: this coder
1.0 GB/s to 0.329 of the plane; zlib-ng with Huffman coding only 0.30 GB/s at the same ratio,
ISA-L's fast deflate 0.45 GB/s to 0.45, zstd level 1 0.30 GB/s to 0.37).

Decoders are hostile-input safe: every output size is fixed in advance by the header's raw
length, a zstd frame must declare exactly the size expected before it is decompressed, and
trailing or missing bytes are refused, so no payload can make a reader allocate more than the
chunk's raw length (at most 4 MiB).
"""

from __future__ import annotations

import importlib
import struct
import threading
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

import numpy as np
import zstandard

from modelkeep.errors import IntegrityError, ModelkeepError
from modelkeep.store.chunking import MAX_CHUNK
from modelkeep.store.codec import CODEC_DELTA, CODEC_PLANES, CODEC_ZSTD, MAX_DELTA_DEPTH


class Codec(IntEnum):
    ZSTD = CODEC_ZSTD
    PLANES = CODEC_PLANES
    DELTA = CODEC_DELTA


# Element width of each safetensors floating-point dtype that byte planes apply to. The 1-byte
# float formats (F8_*) have no planes to split; they get zstd like everything else.
FLOAT_WIDTHS = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# Element width of every safetensors dtype, for parent deltas (element by element).
WIDTHS = {**FLOAT_WIDTHS, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2}

# Parent deltas: how each element is compared with the same element of the base chunk. Measured
# on checkpoints of a real AdamW fine-tune (bench/codecs.py): XOR leaves more zero bits in
# 2-byte floats (bf16 0.12x against 0.15x by subtraction), subtraction in 4-byte ones (fp32 0.33x
# against 0.38x), whose small updates carry into fewer bytes than they flip.
XOR, SUBTRACT = 0, 1
_DELTA_PREFIX = struct.Struct("<32sBBB")  # base id, depth, transform, element width

ZSTD_LEVEL = 3  # for general data: the zstd default, a fair speed for text and pickles
_SAMPLE = 64 << 10  # bytes tried before coding a whole plane or chunk that may not compress
_SAMPLE_GAIN = 0.95  # a sample must shrink at least this much for the whole to be coded
# Byte planes must save this fraction of a chunk to be worth their time; the exponent plane of
# trained weights saves about a third of bf16 and a sixth of fp32 (bench/codecs.py).
_PLANES_MIN_GAIN = 0.08
# The exponent plane is coded without zstd's match search when a sample of it codes at most this
# much larger that way (trained weights: the same size; anything with runs: far larger).
_HUFFMAN_SLACK = 1.01
_PLANE_RECORD = struct.Struct("<BI")  # method, stored length
_STORED, _ZSTD_FRAME = 0, 1

_local = threading.local()


def _literal_params() -> zstandard.ZstdCompressionParameters:
    # A small hash table and 7-byte minimum matches: near-random bytes with a skewed
    # distribution (exponents) are coded almost entirely as Huffman literals.
    return zstandard.ZstdCompressionParameters(
        window_log=18, hash_log=6, chain_log=6, search_log=1, min_match=7, target_length=0,
        strategy=zstandard.STRATEGY_FAST, write_content_size=True)


class _Literals:
    """zstd frames of bytes that are nearly all Huffman-coded literals (the exponent planes of
    trained weights), made as fast as zstd makes them.

    zstd's fast strategy still looks for matches at every position, which on such bytes finds
    almost none and costs 0.3 of the 1.0 ns a byte: its acceleration (``targetLength``) skips
    that search, but on its own it also turns literal coding off, and only zstd's experimental
    ``literalCompressionMode`` turns it back on. The ``zstandard`` package's C backend does not
    take that parameter; its CFFI backend gives the whole libzstd API of the same bundled zstd,
    so a context is set up through it (0.70 ns a byte, the same ratio on such planes; a plane
    with runs or patterns codes far larger without the search, so a sample decides, in
    :func:`_encode_planes`, and deltas and other planes keep it). Where
    that backend cannot be loaded the C backend's parameters above are used: the frames differ
    in a few bytes, any zstd decoder reads both, and the stored format is the same."""

    ACCELERATION = 4096  # positions skipped between match attempts: in effect none are tried

    def __init__(self) -> None:
        self._fallback: zstandard.ZstdCompressor | None = None
        try:
            backend = importlib.import_module("zstandard.backend_cffi")
        except ImportError:  # CFFI missing, or a platform without that backend
            self._fall_back()
            return
        ffi: Any = backend.ffi
        lib: Any = backend.lib
        self._ffi, self._lib = ffi, lib
        self._cctx = ffi.gc(lib.ZSTD_createCCtx(), lib.ZSTD_freeCCtx)
        for param, value in (
                (lib.ZSTD_c_strategy, lib.ZSTD_fast), (lib.ZSTD_c_windowLog, 18),
                (lib.ZSTD_c_hashLog, 6), (lib.ZSTD_c_chainLog, 6), (lib.ZSTD_c_searchLog, 1),
                (lib.ZSTD_c_minMatch, 7), (lib.ZSTD_c_targetLength, self.ACCELERATION),
                (lib.ZSTD_c_literalCompressionMode, lib.ZSTD_ps_enable),
                (lib.ZSTD_c_contentSizeFlag, 1)):
            if lib.ZSTD_isError(lib.ZSTD_CCtx_setParameter(self._cctx, param, value)):
                self._fall_back()
                return
        self._out = bytearray(0)

    def _fall_back(self) -> None:
        self._fallback = zstandard.ZstdCompressor(compression_params=_literal_params())

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._fallback is not None:
            return self._fallback.compress(data)
        ffi, lib = self._ffi, self._lib
        src = memoryview(data).cast("B")
        bound = lib.ZSTD_compressBound(len(src))
        if len(self._out) < bound:
            self._out = bytearray(max(bound, _BUFFER_SIZE))
        dst = ffi.from_buffer(self._out)
        n = lib.ZSTD_compress2(self._cctx, dst, len(self._out), ffi.from_buffer(src), len(src))
        if lib.ZSTD_isError(n):
            raise ModelkeepError("zstd could not code a chunk: "
                                 + ffi.string(lib.ZSTD_getErrorName(n)).decode())
        return bytes(memoryview(self._out)[:n])  # one copy (a bytearray slice is another)


def _compressor(kind: str) -> zstandard.ZstdCompressor | _Literals:
    # zstd contexts are not thread-safe: one of each kind per thread, reused for every chunk.
    ctx: zstandard.ZstdCompressor | _Literals | None = getattr(_local, kind, None)
    if ctx is None:
        if kind == "huffman":
            ctx = _Literals()
        elif kind == "literal":
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


# Work buffers, one of each per thread, reused from chunk to chunk. A fresh 4 MiB buffer per
# chunk costs its page faults and zero-filling: profiled on the store phase of a bf16 model,
# more than the zstd coding of the exponent planes. Sized once: a piece, or the largest chunk.
_BUFFER_SIZE = MAX_CHUNK + 64
# Planes are split and put back together this many bytes of elements at a time: small enough
# for the intermediate to stay in a core's cache between the numpy operations (and, on a
# pull, between decoding, hashing and writing), large enough that the per-call overhead of
# numpy (and its handing back and taking the GIL) is small. Measured on 4 MiB bf16 chunks,
# decode and hash: 35% less time than whole-chunk operations, alike from 128 KiB to 512 KiB.
PIECE = 512 << 10


def _buffer(name: str, size: int) -> memoryview:
    """*size* bytes of this thread's buffer *name* (contents undefined)."""
    buf: np.ndarray | None = getattr(_local, name, None)
    if buf is None or len(buf) < size:
        # numpy leaves the memory as it comes (bytearray would zero it first).
        buf = np.empty(PIECE if size <= PIECE else max(size, _BUFFER_SIZE), dtype=np.uint8)
        setattr(_local, name, buf)
    return buf.data[:size]


def _array(name: str, count: int, dtype: np.dtype[Any]) -> np.ndarray:
    """A reused array of *count* elements of *dtype* (contents undefined)."""
    return np.frombuffer(_buffer(name, count * dtype.itemsize), dtype=dtype, count=count)


def _shift_left(x: np.ndarray, bits: int, out: np.ndarray, casting: str = "same_kind") -> None:
    """``x << bits`` into *out* (truncated to its dtype). 2-byte elements are multiplied by
    ``2**bits`` instead, which wraps the same: numpy's 16-bit left shift measured twice as slow
    as its 16-bit multiplication (the bf16 plane split and assembly each use it per block)."""
    if x.dtype.itemsize == 2:
        np.multiply(x, 1 << bits, out=out, casting=casting)  # type: ignore[call-overload]
    else:
        np.left_shift(x, bits, out=out, casting=casting)  # type: ignore[call-overload]


# -- encoding ----------------------------------------------------------------------------------


def encode(raw: bytes | bytearray | memoryview, dtype: str | None,
           policy: str = "auto", *, reuse: bool = False
           ) -> tuple[Codec, bytes | memoryview] | None:
    """The codec and payload to store chunk *raw* with, or None to store it plain.

    *dtype* is the safetensors dtype when the whole chunk is tensor data of that one dtype, else
    None. *policy* is the store's ``codec`` setting: ``auto`` (planes for float tensors, zstd for
    the rest), ``zstd`` (zstd for everything) or ``none``. With *reuse*, the payload may be in
    a buffer of this thread that its next ``encode(..., reuse=True)`` overwrites: for a caller
    that writes it out first."""
    n = len(raw)
    if policy == "none" or n == 0:
        return None
    width = FLOAT_WIDTHS.get(dtype or "") if policy == "auto" else None
    if width is not None and n % width == 0:
        payload = _encode_planes(raw, width, reuse)
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


def _encode_planes(raw: bytes | bytearray | memoryview, width: int,
                   reuse: bool = False) -> memoryview | None:
    """The plane payload of *raw*, or None when its exponent plane, tried on a sample, would
    save less than :data:`_PLANES_MIN_GAIN` of the chunk: data that is not trained weights
    (random bits, already-compressed bytes) is then stored as it is, at no coding cost."""
    utype = np.dtype(f"<u{width}")
    bits = 8 * width
    values = np.frombuffer(raw, dtype=utype)
    sample = values[: _SAMPLE // width]
    top = ((sample << 1) | (sample >> (bits - 1))) >> (bits - 8)
    plane = top.astype(np.uint8)
    searched = len(_compressor("literal").compress(plane.data))
    if searched > (1 - _PLANES_MIN_GAIN * width) * len(plane):
        return None
    # Trained weights' exponents repeat nothing a match could use: the plane is coded without
    # the search (0.7 instead of 1.0 ns a byte). Values with runs or patterns (zeros, masks,
    # counters stored as floats) keep it: skipping it there costs up to 20x in stored bytes.
    fast = len(_compressor("huffman").compress(plane.data)) <= searched * _HUFFMAN_SLACK
    return _planes_payload(values, b"", rotate=True, code_top=True,
                           into="planes" if reuse else None,
                           top_kind="huffman" if fast else "literal")


def _planes_payload(values: np.ndarray, prefix: bytes, *, rotate: bool,
                    code_top: bool, into: str | None, top_kind: str = "literal") -> memoryview:
    """*prefix*, the element width, then each byte plane of *values* (rotated left by one bit
    first when *rotate*) as ``method, length, bytes``.

    Every plane is computed straight into the payload by contiguous numpy operations on
    whole elements: one shift per plane, truncated to bytes as numpy stores it (plane 0 of a
    rotation adds the sign bit). All planes are split a block of :data:`PIECE` bytes of
    elements at a time, so each block is read from memory once and the temporaries stay in
    the processor's cache; each plane lands where it belongs when no plane before it is
    coded. Strided byte access, element-wide temporaries and joining the pieces afterwards
    each cost more than the split itself. The top plane holds the exponent (or, in a delta,
    the rarely set high bits): always worth coding. Lower planes are mantissa bits, near
    random in trained weights; a sample tells cheaply whether to try. A plane that codes
    smaller is replaced by its frame, and the stored planes after it move up (trained
    weights code only their top plane, which is last: nothing moves). The payload is written
    into this thread's buffer *into* when given, else a new one."""
    width = values.dtype.itemsize
    bits = 8 * width
    count = len(values)
    stride = _PLANE_RECORD.size + count
    first = len(prefix) + 1
    size = first + width * stride
    out: bytearray | memoryview = _buffer(into, size) if into is not None else bytearray(size)
    out[: len(prefix)] = prefix
    out[len(prefix)] = width
    # Plane j, as split: at its place in a payload where every plane is stored.
    planes = [np.frombuffer(out, dtype=np.uint8, count=count,
                            offset=first + j * stride + _PLANE_RECORD.size)
              for j in range(width)]
    step = PIECE // width
    sign = _array("split", min(step, count), np.dtype(np.bool_)) if rotate else None
    top = 1 << (bits - 1)
    for start in range(0, count, step):
        v = values[start : start + step]
        # Byte j of the element rotated left by one bit is bits 8j-1 .. 8j+6 of the element
        # (unrotated: 8j .. 8j+7), and for plane 0 its low 7 bits above the sign bit. One
        # shift whose result numpy truncates to bytes as it stores it, in its own small
        # buffers: no element-wide intermediate crosses memory. The sign is a comparison,
        # whose booleans are already the bytes 0 and 1 (a shift would be narrowed after).
        for j in range(width):
            dst = planes[j][start : start + step]
            if j == 0 and rotate:
                assert sign is not None
                s = sign[: len(v)]
                _shift_left(v, 1, dst, casting="unsafe")
                np.greater_equal(v, top, out=s)
                np.bitwise_or(dst, s.view(np.uint8), out=dst)
            elif j == 0:
                np.copyto(dst, v, casting="unsafe")
            else:
                np.right_shift(v, 8 * j - 1 if rotate else 8 * j, out=dst, casting="unsafe")
    pos = first
    for j in range(width):
        split_at = first + j * stride + _PLANE_RECORD.size
        body = pos + _PLANE_RECORD.size
        view = memoryview(out)[split_at : split_at + count]
        if (code_top and j == width - 1) or _shrinks(view[:_SAMPLE], "literal"):
            frame = _compressor(top_kind if code_top and j == width - 1 else "literal").compress(
                view)
            if len(frame) < count:
                # The frame ends before the next plane's bytes start: nothing is overwritten
                # that is still to be read.
                _PLANE_RECORD.pack_into(out, pos, _ZSTD_FRAME, len(frame))
                out[body : body + len(frame)] = frame
                pos = body + len(frame)
                continue
        _PLANE_RECORD.pack_into(out, pos, _STORED, count)
        if body != split_at:  # a plane before it was coded: move it up to its place
            np.copyto(np.frombuffer(out, dtype=np.uint8, count=count, offset=body), planes[j])
        pos = body + count
    return memoryview(out)[:pos]


def delta_width(dtype: str | None, size: int) -> int:
    """The element width a delta of a chunk of *dtype* works in (1 for bytes)."""
    width = WIDTHS.get(dtype or "", 1)
    return width if size % width == 0 else 1


def encode_delta(raw: bytes | bytearray | memoryview, base: bytes | memoryview, base_id: str,
                 depth: int, width: int, *, reuse: bool = False) -> memoryview:
    """The payload of *raw* coded against *base* (same length), the chunk *base_id*; *depth*
    is this chunk's place in its chain (1: the base is stored whole). *reuse* as for
    :func:`encode`, in a buffer of its own (a delta and planes of one chunk are compared)."""
    utype = np.dtype(f"<u{width}")
    x = np.frombuffer(raw, dtype=utype)
    y = np.frombuffer(base, dtype=utype)
    transform = XOR if width <= 2 else SUBTRACT
    diff = _array("diff", len(x), utype)
    if transform == XOR:
        np.bitwise_xor(x, y, out=diff)
    else:
        np.subtract(x, y, out=diff)  # unsigned: wraps modulo 2^(8 width)
    prefix = _DELTA_PREFIX.pack(bytes.fromhex(base_id), depth, transform, width)
    # The prefix ends with the width, which the plane payload starts with.
    return _planes_payload(diff, prefix[:-1], rotate=False, code_top=False,
                           into="delta" if reuse else None)


def delta_base(payload: bytes | memoryview, what: str) -> tuple[str, int]:
    """``(base id, depth)`` a delta payload names."""
    view = memoryview(payload).cast("B")
    if len(view) < _DELTA_PREFIX.size:
        raise IntegrityError(f"{what} is corrupt: its delta payload is truncated")
    base, depth, _transform, _width = _DELTA_PREFIX.unpack_from(view)
    if not 1 <= depth <= MAX_DELTA_DEPTH:
        raise IntegrityError(f"{what} is corrupt: delta depth {depth} is outside 1 to "
                             f"{MAX_DELTA_DEPTH}")
    return bytes(base).hex(), depth


# -- decoding ----------------------------------------------------------------------------------


def decode(codec: int, payload: bytes | memoryview, raw_length: int, what: str,
           base: bytes | memoryview | None = None) -> memoryview:
    """The raw bytes of a coded chunk: exactly *raw_length* of them, or :class:`IntegrityError`.
    A delta needs the raw bytes of its *base* (:func:`delta_base` names it). The caller still
    checks the result against the chunk's id."""
    view = memoryview(payload).cast("B")
    if codec == Codec.ZSTD:
        return memoryview(_unzstd(view, raw_length, what))
    plan = _plan(codec, view, raw_length, what, base)
    values = np.empty(plan.count, dtype=plan.utype)
    step = PIECE // plan.width
    tmp = _array("assemble", min(step, plan.count), plan.utype)
    for start in range(0, plan.count, step):
        dst = values[start : start + step]
        plan.assemble(start, dst, tmp[: len(dst)])
    return values.view(np.uint8).data


def decode_pieces(codec: int, payload: bytes | memoryview, raw_length: int, what: str,
                  base: bytes | memoryview | None = None) -> Iterator[memoryview]:
    """:func:`decode` in consecutive pieces of at most :data:`PIECE` bytes (a zstd chunk: one
    piece). Each piece is in a buffer of this thread, valid until the next is asked for: for
    a caller that hashes and writes each piece while it is still in the processor's cache.
    The whole payload is checked before the first piece."""
    view = memoryview(payload).cast("B")
    if codec == Codec.ZSTD:
        yield memoryview(_unzstd(view, raw_length, what))
        return
    plan = _plan(codec, view, raw_length, what, base)
    step = PIECE // plan.width
    piece = _array("piece", min(step, plan.count), plan.utype)
    tmp = _array("assemble", len(piece), plan.utype)
    for start in range(0, plan.count, step):
        n = min(step, plan.count - start)
        dst = piece[:n]
        plan.assemble(start, dst, tmp[:n])
        yield dst.view(np.uint8).data


class _Planes:
    """A checked plane payload, ready to be put back together a block of elements at a time:
    the planes interleaved with whole-element operations (top plane first: plane j widened,
    shifted into byte j of each element and ORed in; a strided byte copy per plane measured
    slower),
    then rotated right by one bit (byte planes) or combined with the base (a delta)."""

    def __init__(self, planes: list[np.ndarray], width: int, *, rotate: bool,
                 base: np.ndarray | None = None, transform: int = XOR) -> None:
        self.planes = planes
        self.width = width
        self.count = len(planes[0])
        self.utype = np.dtype(f"<u{width}")
        self.rotate = rotate
        self.base = base
        self.transform = transform

    def assemble(self, start: int, dst: np.ndarray, tmp: np.ndarray) -> None:
        """Elements ``start`` to ``start + len(dst)`` into *dst*; *tmp* is scratch space of
        the same length and type."""
        stop = start + len(dst)
        width = self.width
        if width == 2:
            # Two ufuncs that widen their byte input as they go: as fast as a plain widening
            # copy and a multiplication each, and two fewer calls (each hands the GIL over).
            np.multiply(self.planes[1][start:stop], 256, out=dst, dtype=self.utype)
            np.add(dst, self.planes[0][start:stop], out=dst)
        else:
            # Each plane widened by a plain copy, then shifted and ORed element by element.
            planes = [p[start:stop] for p in self.planes]
            np.copyto(dst, planes[-1])
            if width > 1:
                _shift_left(dst, 8 * (width - 1), dst)
            for j in range(width - 2, -1, -1):
                np.copyto(tmp, planes[j])
                if j:
                    _shift_left(tmp, 8 * j, tmp)
                np.bitwise_or(dst, tmp, out=dst)
        if self.rotate:
            np.right_shift(dst, 1, out=tmp)
            _shift_left(dst, 8 * width - 1, dst)
            np.bitwise_or(dst, tmp, out=dst)
        if self.base is not None:
            y = self.base[start:stop]
            if self.transform == XOR:
                np.bitwise_xor(dst, y, out=dst)
            else:
                np.add(dst, y, out=dst)  # unsigned: wraps modulo 2^(8 width), as specified


def _plan(codec: int, view: memoryview, size: int, what: str,
          base: bytes | memoryview | None) -> _Planes:
    if codec == Codec.PLANES:
        if not view or view[0] not in (2, 4, 8):
            raise IntegrityError(f"{what} is corrupt: bad element width in its plane payload")
        width = view[0]
        return _Planes(_read_planes(view, 1, size, width, what), width, rotate=True)
    if codec == Codec.DELTA:
        if base is None:
            raise IntegrityError(f"{what} is a delta and its base was not given")
        delta_base(view, what)
        _b, _d, transform, width = _DELTA_PREFIX.unpack_from(view)
        if width not in (1, 2, 4, 8) or transform not in (XOR, SUBTRACT):
            raise IntegrityError(f"{what} is corrupt: bad width or transform in its delta "
                                 "payload")
        if len(base) != size:
            raise IntegrityError(f"{what} is corrupt: its base has {len(base)} bytes, it has "
                                 f"{size}")
        planes = _read_planes(view, _DELTA_PREFIX.size, size, width, what)
        y = np.frombuffer(base, dtype=f"<u{width}")
        return _Planes(planes, width, rotate=False, base=y, transform=transform)
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


def _read_planes(view: memoryview, pos: int, size: int, width: int,
                 what: str) -> list[np.ndarray]:
    """The *width* byte planes of *size* bytes of elements, whose records start at *pos*."""
    if size % width:
        raise IntegrityError(f"{what} is corrupt: {size} bytes is not a whole number of "
                             f"{width}-byte elements")
    count = size // width
    planes: list[np.ndarray] = []
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
            planes.append(np.frombuffer(body, dtype=np.uint8))
        elif method == _ZSTD_FRAME:
            planes.append(np.frombuffer(_unzstd(body, count, what), dtype=np.uint8))
        else:
            raise IntegrityError(f"{what} is corrupt: plane {j} has unknown method {method}")
    if pos != len(view):
        raise IntegrityError(f"{what} is corrupt: {len(view) - pos} bytes after its planes")
    return planes
