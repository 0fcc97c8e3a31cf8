"""How a file is cut into chunks.

* safetensors: the header (``8 + N`` bytes) ends a chunk and every tensor starts a new one, so a
  changed, inserted or re-sharded tensor changes only its own chunks. Tensors larger than
  :data:`TENSOR_PIECE` are split into pieces of that size counted from the tensor's start; so are
  a header and padding runs of that size or more. Bytes between or after tensors (padding) form
  chunks of their own. Small tensors travel together: a run of adjacent tensors each under
  :data:`SMALL_TENSOR` bytes, of one dtype, shares one chunk of at most :data:`PACK_MAX` bytes.
  A chunk per tiny tensor cost an object per bias (a file of 100,000 scalars became 100,002
  objects), and tensors under 16 KB compress 3-6 points worse alone; small tensors are under 1%
  of a model's bytes, so packing them costs dedup nearly nothing.
* everything else: FastCDC (compiled, ``pyfastcdc``) with a 1 MiB average, 256 KiB minimum and
  4 MiB maximum, so an insertion shifts only the chunks around it.

Both are streaming: at most one chunk of a file is in memory per call, so memory is bounded no
matter how large the file. The cut points are part of the store format (they decide which chunks
dedup), so changing these constants is a format change; see docs/format.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import BinaryIO

from pyfastcdc.cy import FastCDC

from modelkeep.store.safetensors import Layout, Tensor, read_layout

TENSOR_PIECE = 4 << 20
SMALL_TENSOR = 64 << 10
PACK_MAX = 1 << 20
CDC_AVG = 1 << 20
CDC_MIN = 256 << 10
CDC_MAX = 4 << 20
MAX_CHUNK = max(TENSOR_PIECE, CDC_MAX)

_cdc = None


def _fastcdc() -> FastCDC:
    global _cdc
    if _cdc is None:
        # avg_size in pyfastcdc excludes min_size (cut-point skipping); pass the mask size.
        _cdc = FastCDC(CDC_AVG - CDC_MIN, min_size=CDC_MIN, max_size=CDC_MAX)
    return _cdc


_Unit = tuple[int, int, str, list[Tensor]]
_last_units: tuple[Layout, list[_Unit]] | None = None  # cutting, tagging, packing: one layout


def _units(layout: Layout) -> list[_Unit]:
    """``(start, end, dtype, tensors)`` of the byte ranges that start chunks: each tensor, except
    that a run of adjacent small tensors of one dtype is one range of at most :data:`PACK_MAX`
    bytes. Empty tensors hold no bytes and play no part."""
    global _last_units
    last = _last_units
    if last is not None and last[0] is layout:
        return last[1]
    units = _make_units(layout)
    _last_units = (layout, units)
    return units


def _make_units(layout: Layout) -> list[_Unit]:
    # One pass, the open unit in locals: a file may hold 100,000 tensors.
    units: list[_Unit] = []
    members: list[Tensor] = []
    u_start = u_end = 0
    u_dtype = ""
    packing = False  # the open unit was started by a small tensor
    for t in layout.tensors:
        start, end = t.start, t.end
        if end == start:
            continue
        small = end - start < SMALL_TENSOR
        if packing and small and t.dtype == u_dtype and start == u_end \
                and end - u_start <= PACK_MAX:
            members.append(t)
            u_end = end
            continue
        if members:
            units.append((u_start, u_end, u_dtype, members))
        u_start, u_end, u_dtype, members, packing = start, end, t.dtype, [t], small
    if members:
        units.append((u_start, u_end, u_dtype, members))
    return units


def packs(layout: Layout) -> dict[int, list[Tensor]]:
    """The tensors of each chunk that holds more than one, by the chunk's start offset."""
    return {start: members for start, _end, _dtype, members in _units(layout)
            if len(members) > 1}


def tensor_cuts(layout: Layout, size: int) -> list[int]:
    """Sorted cut offsets (excluding 0, including *size*) for a safetensors file."""
    cuts = {layout.header_end, size}
    for start, end, _dtype, _members in _units(layout):
        cuts.add(start)
        cuts.add(end)
        for piece in range(start + TENSOR_PIECE, end, TENSOR_PIECE):
            cuts.add(piece)
    # Long padding runs are split too, so no chunk exceeds the piece size.
    ordered = sorted(c for c in cuts if 0 < c <= size)
    out: list[int] = []
    prev = 0
    for c in ordered:
        while c - prev > TENSOR_PIECE:
            prev += TENSOR_PIECE
            out.append(prev)
        out.append(c)
        prev = c
    return out


# What makes a chunk "the same part of the same tensor" in two versions, for parent deltas: the
# dtype, the names and shapes of the tensors it holds, where it starts in them and its length.
ChunkKey = tuple[str, tuple[tuple[str, tuple[int, ...]], ...], int, int]
_NAME_SHAPE = itemgetter(0, 2)  # (name, shape) of a Tensor, in C: a pack may hold 100,000


def chunk_tags(layout: Layout, cuts: list[int]) -> list[tuple[str | None, ChunkKey | None]]:
    """For each chunk of *cuts*: the dtype of the tensor data it holds (what its codec is chosen
    by) and its :data:`ChunkKey`; both None when it holds anything else (header, padding)."""
    units = _units(layout)
    out: list[tuple[str | None, ChunkKey | None]] = []
    i, prev = 0, 0
    for c in cuts:
        while i < len(units) and units[i][1] <= prev:
            i += 1
        if i < len(units) and units[i][0] <= prev and c <= units[i][1]:
            start, _end, dtype, members = units[i]
            names = tuple(map(_NAME_SHAPE, members))
            out.append((dtype, (dtype, names, prev - start, c - prev)))
        else:
            out.append((None, None))
        prev = c
    return out


Take = Callable[[], bytearray]


class FileChangedError(OSError):
    """A file being chunked turned out shorter or longer than its planned cuts."""


def plan_safetensors(f: BinaryIO, size: int) -> tuple[Layout, list[int]] | None:
    """The layout and cut offsets of a safetensors file, from its header alone; None if *f* is not
    a safetensors file (it is then cut by :func:`cdc_chunks`). Leaves *f* at offset 0."""
    layout = read_layout(f, size)
    f.seek(0)
    if layout is None:
        return None
    return layout, tensor_cuts(layout, size)


def read_cuts(f: BinaryIO, cuts: list[int], take: Take) -> Iterator[tuple[bytearray, memoryview]]:
    """Read *f* sequentially from offset 0, one chunk per cut, each into a buffer from ``take()``;
    yields ``(buffer, view of the chunk's bytes)``. Fails if the file is shorter or longer than the
    last cut."""
    prev = 0
    for c in cuts:
        n = c - prev
        buf = take()
        view = memoryview(buf)[:n]
        got = 0
        while got < n:
            r = f.readinto(view[got:])  # type: ignore[attr-defined]
            if not r:
                raise FileChangedError(f"it shrank while being read ({n - got} bytes short)")
            got += r
        prev = c
        yield buf, view
    trailing = f.read(1)
    if trailing:
        raise FileChangedError("it grew while being read")


def cdc_chunks(f: BinaryIO, take: Take) -> Iterator[tuple[bytearray, memoryview]]:
    """Cut *f* (from its current position) with FastCDC; like :func:`read_cuts` otherwise."""
    for chunk in _fastcdc().cut_stream(f):
        # cut_stream reuses its own buffer: copy out before the next chunk is produced.
        buf = take()
        view = memoryview(buf)[: chunk.length]
        view[:] = chunk.data
        yield buf, view
