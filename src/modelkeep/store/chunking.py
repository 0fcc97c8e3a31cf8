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
from typing import TYPE_CHECKING, BinaryIO

from modelkeep.store.safetensors import read_layout

if TYPE_CHECKING:
    import numpy as np
    from pyfastcdc.cy import FastCDC

    from modelkeep.store.safetensors import Layout, Tensor

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
        from pyfastcdc.cy import FastCDC  # compiled; only files that are not safetensors

        # avg_size in pyfastcdc excludes min_size (cut-point skipping); pass the mask size.
        _cdc = FastCDC(CDC_AVG - CDC_MIN, min_size=CDC_MIN, max_size=CDC_MAX)
    return _cdc


# A unit's tensors, as their positions in the layout's ``tensors``.
_Unit = tuple[int, int, str, "np.ndarray"]
_last_units: tuple[Layout, list[_Unit]] | None = None  # cutting, tagging, packing: one layout


def _units(layout: Layout) -> list[_Unit]:
    """``(start, end, dtype, positions)`` of the byte ranges that start chunks: each tensor,
    except that a run of adjacent small tensors of one dtype is one range of at most
    :data:`PACK_MAX` bytes; *positions* are those of its tensors in ``layout.tensors``. Empty
    tensors hold no bytes and play no part."""
    global _last_units
    last = _last_units
    if last is not None and last[0] is layout:
        return last[1]
    units = _make_units(layout)
    _last_units = (layout, units)
    return units


def _make_units(layout: Layout) -> list[_Unit]:
    # A file may hold 100,000 tensors: which of them may join the tensor before them is worked
    # out on whole arrays, and the loop runs once per run of joinable tensors.
    import numpy as np

    starts, ends, codes, dtypes = layout.spans()
    kept = np.flatnonzero(ends > starts)
    s, e, c = starts[kept], ends[kept], codes[kept]
    small = (e - s) < SMALL_TENSOR
    # A tensor joins the unit of the one before it when both are small, of one dtype and
    # adjacent (a small tensor's unit is a pack), while the unit stays within PACK_MAX.
    joins = np.zeros(len(kept), dtype=bool)
    joins[1:] = small[1:] & small[:-1] & (c[1:] == c[:-1]) & (s[1:] == e[:-1])
    heads = np.flatnonzero(~joins)
    tails = np.append(heads[1:], len(kept))
    run_start, run_end = s[heads], e[tails - 1]
    units: list[_Unit] = []
    for a, b, start, end, code in zip(heads.tolist(), tails.tolist(), run_start.tolist(),
                                      run_end.tolist(), c[heads].tolist(), strict=True):
        if end - start <= PACK_MAX or b - a == 1:
            units.append((start, end, dtypes[code], kept[a:b]))
            continue
        # A run longer than a pack: as many tensors as end within PACK_MAX of the unit's start
        # (a run's ends increase), then the next unit from there.
        while a < b:
            start = int(s[a])
            hi = a + int(np.searchsorted(e[a:b], start + PACK_MAX, side="right"))
            units.append((start, int(e[hi - 1]), dtypes[code], kept[a:hi]))
            a = hi
    return units


def packs(layout: Layout) -> dict[int, list[Tensor]]:
    """The tensors of each chunk that holds more than one, by the chunk's start offset."""
    tensors = layout.tensors
    return {start: [tensors[i] for i in positions.tolist()]
            for start, _end, _dtype, positions in _units(layout) if len(positions) > 1}


def tensor_cuts(layout: Layout, size: int) -> list[int]:
    """Sorted cut offsets (excluding 0, including *size*) for a safetensors file."""
    cuts = {layout.header_end, size}
    for start, end, _dtype, _positions in _units(layout):
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


class TensorNames:
    """The names and shapes of the tensors a chunk holds, in order, as part of a dict key: their
    id (:meth:`Layout.names_key`) is worked out when first hashed or compared, which only a
    version stored against a parent does (a pack of 100,000 tensors takes some 15 ms)."""

    __slots__ = ("_id", "_layout", "_positions")

    def __init__(self, layout: Layout, positions: np.ndarray) -> None:
        self._layout: Layout | None = layout
        self._positions = positions
        self._id: str | None = None

    @property
    def id(self) -> str:
        # Workers storing pieces of one tensor may ask at once: each works it out from what it
        # read, and the id is set before the layout is let go (it may be large).
        found, layout = self._id, self._layout
        if found is None:
            if layout is None:
                found = self._id
                assert found is not None
                return found
            found = self._id = layout.names_key(self._positions)
            self._layout = None
        return found

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorNames) and self.id == other.id

    def __repr__(self) -> str:
        return f"TensorNames({self.id[:12]})"


# What makes a chunk "the same part of the same tensor" in two versions, for parent deltas: the
# dtype, the names and shapes of the tensors it holds, where it starts in them and its length.
ChunkKey = tuple[str, TensorNames, int, int]


def chunk_tags(layout: Layout, cuts: list[int]) -> list[tuple[str | None, ChunkKey | None]]:
    """For each chunk of *cuts*: the dtype of the tensor data it holds (what its codec is chosen
    by) and its :data:`ChunkKey`; both None when it holds anything else (header, padding)."""
    units = _units(layout)
    out: list[tuple[str | None, ChunkKey | None]] = []
    i, prev = 0, 0
    names: TensorNames | None = None  # of unit i, shared by its pieces
    for c in cuts:
        while i < len(units) and units[i][1] <= prev:
            i += 1
            names = None
        if i < len(units) and units[i][0] <= prev and c <= units[i][1]:
            start, _end, dtype, positions = units[i]
            if names is None:
                names = TensorNames(layout, positions)
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
