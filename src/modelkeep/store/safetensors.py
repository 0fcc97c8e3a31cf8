"""Reading the header of a safetensors file, without any ML framework.

A safetensors file is ``u64 little-endian N`` + ``N bytes of JSON`` + a data section. The JSON maps
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
section), plus an optional ``__metadata__`` map of strings. Anything that does not parse exactly is
treated as "not safetensors" by the chunker, which then falls back to content-defined chunking, so
a malformed file is still stored byte for byte.

Two parsers, one answer. ``json.loads`` and the checks of docs/format.md §4.1.1 are the
reference. A header as the safetensors libraries write it (compact JSON, ``__metadata__`` first if
at all, then every tensor as ``"name":{"dtype":"…","shape":[…],"data_offsets":[…,…]}``, names
and dtypes printable ASCII without quotes or backslashes) is instead checked and read by numpy,
a whole column of tensors per operation: every byte outside the names and dtypes is matched
against that grammar, so any header it accepts means to the reference exactly what it reads, and
anything else goes to the reference. Its tensors are made only when asked for
(:attr:`Layout.tensors`): cutting a file needs their offsets and dtypes, not one object each.
Storing a file of 100,000 four-byte tensors took 0.30 CPU-s with the reference alone (making and
freeing 100,000 tensors and the parsed JSON), against 0.03 for a file of one tensor of the same
size; the numpy parser reads that header in some 30 ms, and the store phase takes 0.10
(bench/ab.py ``--ops tiny``, docs/format.md §5.4).
"""

from __future__ import annotations

import gc
import json
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from modelkeep.store.hashing import content_id

if TYPE_CHECKING:
    import numpy as np

# The reference implementation refuses headers over 100 MB; so do we, so that a hostile length
# cannot make us allocate gigabytes.
MAX_HEADER = 100_000_000


class Tensor(NamedTuple):
    """One tensor of a file. A named tuple rather than a dataclass: a file may hold 100,000 of
    them, and a tuple is made in half the time."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int
    # The id of the tensor's bytes, recorded for a tensor that shares its chunk with others
    # (small tensors travel together), so it can be compared without reading the chunk.
    digest: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "dtype": self.dtype,
                                  "shape": list(self.shape), "start": self.start, "end": self.end}
        if self.digest is not None:
            out["digest"] = self.digest
        return out


class Layout:
    """The tensors of a safetensors file and where its header ends.

    ``tensors`` are sorted by start offset (ties in header order). A layout read by the fast
    parser keeps them as columns and makes the :class:`Tensor` tuples on first use; what cutting a
    file needs (:meth:`spans`, :meth:`names_key`) it answers from the columns."""

    def __init__(self, header_end: int, tensors: tuple[Tensor, ...] | None,
                 metadata: dict[str, str], table: _Table | None = None) -> None:
        self.header_end = header_end  # 8 + N: the header chunk is bytes [0, header_end)
        self.metadata = metadata
        self._tensors = tensors
        self._table = table
        if tensors is None and table is None:
            raise ValueError("a layout needs its tensors or their table")

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        if self._tensors is None:
            assert self._table is not None
            self._tensors = self._table.tensors()
        return self._tensors

    @property
    def count(self) -> int:
        """How many tensors the file holds (without making them)."""
        if self._tensors is not None:
            return len(self._tensors)
        assert self._table is not None
        return self._table.count

    def __repr__(self) -> str:
        return f"Layout(header_end={self.header_end}, {self.count} tensors)"

    def with_tensors(self, tensors: tuple[Tensor, ...]) -> Layout:
        """This layout with *tensors* (the same ones, with ids added) in place of its own."""
        return Layout(self.header_end, tensors, self.metadata)

    def spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``(starts, ends, dtype codes, dtype names)`` of the tensors in order, the first three
        as int64 arrays (``names[code]`` is a tensor's dtype)."""
        if self._table is not None:
            t = self._table
            return t.starts, t.ends, t.codes, t.dtypes
        import numpy as np

        tensors = self.tensors
        n = len(tensors)
        starts = np.fromiter((t.start for t in tensors), np.int64, n)
        ends = np.fromiter((t.end for t in tensors), np.int64, n)
        names: dict[str, int] = {}
        codes = np.fromiter((names.setdefault(t.dtype, len(names)) for t in tensors),
                            np.int64, n)
        return starts, ends, codes, list(names)

    def names_key(self, positions: Sequence[int] | np.ndarray) -> str:
        """What tells the tensors at *positions* (of :attr:`tensors`) apart from others: an id
        of their names and shapes, in order (see :func:`names_key`)."""
        if self._tensors is None:
            assert self._table is not None
            return self._table.names_key(positions)
        tensors = self._tensors
        return names_key(tensors[i] for i in _ints(positions))


def names_key(tensors: Iterator[Tensor] | Sequence[Tensor]) -> str:
    """The id of the names and shapes of *tensors*, in order: each as its name, a NUL, its
    dimensions in decimal joined by commas, a NUL. What makes a chunk "the same tensors" in two
    versions (parent deltas); compared within one process only, never stored."""
    return content_id(b"".join(
        f"{t.name}\x00{','.join([f'{d:d}' for d in t.shape])}\x00".encode(
            "utf-8", "surrogatepass") for t in tensors))


def _ints(positions: Sequence[int] | np.ndarray) -> list[int]:
    tolist = getattr(positions, "tolist", None)
    return list(tolist() if tolist is not None else positions)


def read_layout(f: BinaryIO, size: int) -> Layout | None:
    """Parse the header from the start of *f*; None if it is not a well-formed safetensors file."""
    if size < 8:
        return None
    prefix = f.read(8)
    if len(prefix) != 8:
        return None
    (n,) = struct.unpack("<Q", prefix)
    if n < 2 or n > MAX_HEADER or 8 + n > size:
        return None
    buf = bytearray(n + _PAD)
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        r = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not r:
            return None
        got += r
    return _parse(buf, n, size)


def layout_of(head: bytes | memoryview, size: int) -> Layout | None:
    """Parse a header already read: *head* holds (at least) the file's first ``8 + N`` bytes,
    *size* is the file's length; None if it is not a well-formed safetensors file."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack_from("<Q", head)
    if n < 2 or n > MAX_HEADER or 8 + n > min(size, len(head)):
        return None
    buf = bytearray(n + _PAD)
    buf[:n] = head[8 : 8 + n]
    return _parse(buf, n, size)


@contextmanager
def paused_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector while the tensors of a header are made and used.

    A header of 100,000 tensors makes some 500,000 containers, none in a cycle; each batch of
    them set off a collection, and the full ones walk every object of the process (MLflow's
    modules included): three quarters of a second of a one-second re-register. Nests."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# The header is read into a buffer this many zero bytes longer, so that the fast parser can read
# any eight bytes of it as one word.
_PAD = 8


def _parse(buf: bytearray, n: int, size: int) -> Layout | None:
    """The layout of the header ``buf[:n]`` (followed in *buf* by :data:`_PAD` zero bytes) of
    a file of *size* bytes; None if it does not parse."""
    if n >= PLAIN_MIN:
        plain = _plain(buf, n, size)
        if plain is not None:
            return plain
    with paused_collection():
        try:
            header = json.loads(bytes(memoryview(buf)[:n]))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # RecursionError: JSON nested deeper than the parser's stack (a header of 1,000
            # nested arrays); it does not parse, so the file is cut as opaque bytes like any
            # other.
            return None
        if not isinstance(header, dict):
            return None
        data_start = 8 + n
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            return None
        tensors = _tensors(header, data_start, size)
        # Freed here, while the collector is paused, rather than walked by its next pass.
        del header
        if tensors is None:
            return None
        return Layout(data_start, tuple(tensors), {str(k): str(v) for k, v in metadata.items()})


def _tensors(header: dict[str, object], data_start: int, size: int) -> list[Tensor] | None:
    # json.loads makes exact dicts, lists and strs, so ``type() is`` tests what isinstance would;
    # integers keep isinstance (the parser's true/false pass as 1/0, docs/format.md §4.1.1).
    tensors: list[Tensor] = []
    append = tensors.append
    for name, info in header.items():
        if type(info) is not dict:
            return None
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if type(dtype) is not str or type(shape) is not list or type(offsets) is not list \
                or len(offsets) != 2:
            return None
        for d in shape:
            if not isinstance(d, int) or d < 0:
                return None
        begin, end = offsets
        if not isinstance(begin, int) or not isinstance(end, int) or not 0 <= begin <= end \
                or data_start + end > size:
            return None
        append(Tensor(name, dtype, tuple(shape), data_start + begin, data_start + end))
    tensors.sort(key=_OFFSETS)  # stable: ties keep header order
    prev_end = 0
    for t in tensors:
        if t.start < prev_end:  # overlapping tensors: not something we can cut cleanly
            return None
        prev_end = t.end
    return tensors


_OFFSETS = itemgetter(3, 4)  # (start, end) of a Tensor


# -- the fast parser --------------------------------------------------------------------------

# Headers shorter than this (some 800 tensors) go to the reference parser: it takes well under a
# millisecond for them, and numpy's fixed costs would not pay off.
PLAIN_MIN = 64 << 10
_PLAIN_BYTES = bytes(range(0x20, 0x7F)).replace(b"\\", b"")  # printable ASCII, no backslash
_META = b'{"__metadata__":'
_MAX_DTYPE = 8  # bytes of a dtype name read by the fast parser (the longest real one is 7)
_MAX_NAME = 1024  # headers with longer names go to the reference
_DECODER = json.JSONDecoder()  # what json.loads uses


class _Table:
    """The tensors of a plain header as columns, in file order (sorted by start, then end):
    offsets, dtype codes, and where each name and shape is in the header's bytes."""

    def __init__(self, body: bytearray, n: int, starts: np.ndarray, ends: np.ndarray,
                 codes: np.ndarray, dtypes: list[str], names: tuple[np.ndarray, np.ndarray],
                 dims: tuple[np.ndarray, np.ndarray]) -> None:
        self.body, self.n = body, n  # the header's n bytes, then zeros
        self.starts, self.ends, self.codes, self.dtypes = starts, ends, codes, dtypes
        self.names, self.dims = names, dims
        self.count = len(starts)

    def tensors(self) -> tuple[Tensor, ...]:
        body, dtypes = bytes(self.body), self.dtypes
        shapes: dict[bytes, tuple[int, ...]] = {}
        out: list[Tensor] = []
        append = out.append
        with paused_collection():
            for ns, ne, ds, de, code, start, end in zip(
                    self.names[0].tolist(), self.names[1].tolist(), self.dims[0].tolist(),
                    self.dims[1].tolist(), self.codes.tolist(), self.starts.tolist(),
                    self.ends.tolist(), strict=True):
                text = body[ds:de]
                shape = shapes.get(text)
                if shape is None:
                    shape = shapes[text] = tuple(map(int, text.split(b","))) if text else ()
                append(Tensor(body[ns:ne].decode("ascii"), dtypes[code], shape, start, end))
        return tuple(out)

    def names_key(self, positions: Sequence[int] | np.ndarray) -> str:
        """:func:`names_key` of the tensors at *positions*, from the header's bytes: a plain
        header's names are ASCII as they are, and its shapes are decimal without leading zeros,
        as :func:`names_key` writes them."""
        import numpy as np

        pos = np.asarray(positions, dtype=np.intp)
        n = len(pos)
        nul = self.n  # the padding after the header is NULs
        buf = np.frombuffer(self.body, dtype=np.uint8)
        starts = np.empty((n, 4), dtype=np.int64)
        lens = np.ones((n, 4), dtype=np.int64)
        starts[:, 0] = self.names[0][pos]
        lens[:, 0] = self.names[1][pos] - starts[:, 0]
        starts[:, 1] = starts[:, 3] = nul
        starts[:, 2] = self.dims[0][pos]
        lens[:, 2] = self.dims[1][pos] - starts[:, 2]
        return content_id(buf[_ranges(starts.ravel(), lens.ravel())].tobytes())


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The indices ``starts[0] .. starts[0] + lens[0] - 1``, then those of the next range, ..."""
    import numpy as np

    out_starts = np.cumsum(lens) - lens
    out: np.ndarray = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(
        starts - out_starts, lens)
    return out


# Byte masks of a little-endian 8-byte word: _LOW[k] keeps its first k bytes, _HIGH[k] its last k.
_LOW = [(1 << (8 * k)) - 1 for k in range(9)]
_HIGH = [_LOW[8] ^ _LOW[8 - k] for k in range(9)]
_ZEROS = 0x3030303030303030  # eight ASCII "0"
_POWERS = [10**k for k in range(16)]


def _plain(body: bytearray, n: int, size: int) -> Layout | None:
    """The layout of a plain header (see the module's docstring), read with whole-array
    operations; None when the header is not plain, or is but does not parse: the reference
    parser then decides. Every byte outside the names and dtype values is checked against::

        {["__metadata__":<any JSON value>,]"N":{"dtype":"D","shape":[S],"data_offsets":[B,E]},…}

    followed by spaces only, with ``S`` empty or integers joined by commas, ``B`` and ``E``
    integers of at most 16 digits (JSON integers: no sign, no leading zero), the names and dtype
    values printable ASCII without quotes or backslashes, and no name twice. Such a header means
    to ``json.loads`` exactly what it means here, so the layout is the reference's. *body*
    holds the header's *n* bytes, then :data:`_PAD` zero bytes."""
    data_start = 8 + n
    size_body = n  # without the spaces the libraries pad a header with (up to 7)
    while size_body and body[size_body - 1] == 0x20 and n - size_body < 64:
        size_body -= 1
    t0 = 1
    metadata: dict[str, str] = {}
    if body.startswith(_META):
        if not body.isascii():  # positions in the decoded text must be positions in the bytes
            return None
        try:
            value, meta_end = _DECODER.raw_decode(body.decode("ascii"), len(_META))
        except (ValueError, RecursionError):
            return None
        if value and not isinstance(value, dict):
            return None
        metadata = {str(k): str(v) for k, v in (value or {}).items()}
        if body[meta_end : meta_end + 2] != b',"':
            return None
        t0 = meta_end + 1
    elif not body.startswith(b'{"'):
        return None
    # Nothing but printable ASCII without backslashes from the first name on: what is left of
    # the whole buffer once those are deleted is what is left of the bytes before it, and the
    # padding.
    if len(body.translate(None, _PLAIN_BYTES)) != len(body[:t0].translate(None, _PLAIN_BYTES)) \
            + _PAD or not body.endswith(b"]}}", 0, size_body):
        return None
    import numpy as np

    arr = np.frombuffer(body, dtype=np.uint8, count=size_body)
    # words[i] is bytes [i, i + 8) as a little-endian integer: one gather reads eight bytes.
    words = np.ndarray((n,), dtype="<u8", buffer=body, strides=(1,))
    quotes = np.flatnonzero(arr[t0:] == 0x22)
    if len(quotes) == 0 or len(quotes) % 10:
        return None
    # Positions as int32 (a header is at most 100 MB): half the memory traffic of int64.
    count = len(quotes) // 10
    q = quotes.astype(np.int32).reshape(-1, 10).T.copy()  # q[k]: each entry's k-th quote
    q += np.int32(t0)
    q0, q1, q5, q8 = q[0], q[1], q[5], q[8]
    # Where each entry's offsets end: at its "]}", three bytes before the next name's quote.
    ends = np.empty(count, dtype=np.int32)
    ends[:-1] = q0[1:] - 3
    ends[-1] = size_body - 3
    dims_start, dims_end = q5 + 11, q8 - 2
    offs_start = q8 + 16
    # The quotes of the keys and of the dtype value where the grammar puts them, then the bytes
    # between them; every other quote is a name's.
    if not ((q[2] == q1 + 3).all() and (q[3] == q1 + 9).all()
            and (q[4] == q1 + 11).all() and (q[6] == q5 + 2).all()
            and (q[7] == q5 + 8).all() and (q[9] == q8 + 13).all()
            and (dims_end >= dims_start).all() and (ends >= offs_start + 3).all()
            and _literal(words, q1, b'":{"dtype":"') and _literal(words, q5, b'","shape":[')
            and _literal(words, dims_end, b'],"data_offsets":[')
            and _literal(words, ends[:-1], b"]},")):
        return None
    dtype_start = q1 + 12
    dtype_len = q5 - dtype_start
    name_len = q1 - q0 - 1
    if int(dtype_len.max()) > _MAX_DTYPE or int(name_len.max()) > _MAX_NAME \
            or not _shape_lists(words, dims_start, dims_end - dims_start):
        return None
    offsets = _offset_pairs(words, offs_start, ends)
    if offsets is None:
        return None
    begin, end = offsets
    # Duplicate names mean something else to json.loads (the last wins, in the first's place):
    # the reference decides. Names hashed; equal hashes (a duplicate, or a collision) defer.
    hashes = _hash_names(words, q0 + 1, name_len)
    ordered = np.sort(hashes)
    if (ordered[1:] == ordered[:-1]).any():
        return None
    # A second "__metadata__" (or one not first) is for the reference to judge.
    twelve = q0[name_len == 12] + 1
    if ((words[twelve] == _word(b"__metada"))
            & ((words[twelve + 8] & np.uint64(_LOW[4])) == _word(b"ta__"))).any():
        return None
    if (begin > end).any() or int(end.max()) + data_start > size:
        return None
    step = np.diff(begin)
    if not ((step > 0) | ((step == 0) & (np.diff(end) >= 0))).all():
        order: np.ndarray | None = np.lexsort((end, begin))  # stable: ties keep header order
    else:
        order = None  # already in file order, as the safetensors libraries write them
    names = (q0 + 1, q1)
    dims = (dims_start, dims_end)
    dtype_words = words[dtype_start] & np.array(_LOW, dtype=np.uint64)[dtype_len]
    if order is not None:
        begin, end, dtype_words = begin[order], end[order], dtype_words[order]
        names = (names[0][order], names[1][order])
        dims = (dims[0][order], dims[1][order])
    starts, stops = begin + data_start, end + data_start
    if (starts[1:] < stops[:-1]).any():  # overlapping tensors
        return None
    if (dtype_words == dtype_words[0]).all():
        codes = np.zeros(count, dtype=np.int64)
        firsts = [0]
    else:
        _uniq, first, inverse = np.unique(dtype_words, return_index=True, return_inverse=True)
        codes = inverse.reshape(-1).astype(np.int64)
        firsts = first.tolist()
    dtype_pos = dtype_start if order is None else dtype_start[order]
    dtype_end = q5 if order is None else q5[order]
    dtype_names = [body[int(dtype_pos[i]) : int(dtype_end[i])].decode("ascii") for i in firsts]
    table = _Table(body, n, starts, stops, codes, dtype_names, names, dims)
    return Layout(data_start, None, metadata, table)


def _word(text: bytes) -> np.uint64:
    """*text* (at most 8 bytes) as the little-endian word the header's bytes make."""
    import numpy as np

    return np.uint64(int.from_bytes(text, "little"))


def _literal(words: np.ndarray, at: np.ndarray, text: bytes) -> bool:
    """Whether *text* is in the header at each of the positions *at*."""
    import numpy as np

    for off in range(0, len(text), 8):
        piece = text[off : off + 8]
        want = np.uint64(int.from_bytes(piece, "little"))
        if not ((words[at + off] & np.uint64(_LOW[len(piece)])) == want).all():
            return False
    return True


def _hash_names(words: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each name (``lens[i]`` bytes from ``starts[i]``): equal names hash
    equal; different ones almost never do."""
    import numpy as np

    low = np.array(_LOW, dtype=np.uint64)
    weights = np.array(_odd_weights(int(lens.max()) // 8 + 2), dtype=np.uint64)
    out = lens.astype(np.uint64) * weights[0]
    last = len(words) - 1
    for i in range(int(lens.max() + 7) // 8):
        left = np.clip(lens - 8 * i, 0, 8)
        out += (words[np.minimum(starts + 8 * i, last)] & low[left]) * weights[i + 1]
    hashes: np.ndarray = out
    return hashes


def _odd_weights(n: int) -> list[int]:
    """*n* fixed odd 64-bit numbers that look random (splitmix64 from 0; numpy.random would be
    an import of its own)."""
    out, x = [], 0
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _LOW[8]
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _LOW[8]
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _LOW[8]
        out.append((z ^ (z >> 31)) | 1)
    return out


def _shape_lists(words: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> bool:
    """Whether each range of the header is empty or JSON integers joined by commas: those of
    up to 8 bytes (most shapes) a word at a time, the others a byte at a time."""
    import numpy as np

    short = lens <= 8
    if not short.all():
        long = np.flatnonzero(~short)
        if not _shape_bytes(words, starts[long], lens[long]):
            return False
        starts, lens = starts[short], lens[short]
    u = np.uint64
    ones, top = u(0x0101010101010101), u(0x8080808080808080)
    seven = u(0x7F7F7F7F7F7F7F7F)
    inside = np.array(_LOW, dtype=np.uint64)[lens] & top  # the top bit of each byte in range
    w = words[starts]
    # Per byte, its top bit: a digit (the header's bytes are ASCII, so no sum carries into the
    # next byte), a comma, a "0".
    digit = (w + u(0x50) * ones) & ~(w + u(0x46) * ones) & top
    comma = ~(((w ^ u(0x2C) * ones) & seven) + seven | (w ^ u(0x2C) * ones)) & top
    zero = ~(((w ^ u(0x30) * ones) & seven) + seven | (w ^ u(0x30) * ones)) & top
    next_inside = inside >> u(8)
    filled = lens > 0
    shift = (np.maximum(lens, 1) - 1).astype(np.uint64) * u(8)
    return bool(((digit | comma) & inside == inside).all()
                and not (comma & (comma >> u(8)) & next_inside).any()
                and (digit[filled] & u(0x80)).all()  # the first byte is a digit
                and ((digit >> shift)[filled] & u(0x80)).all()  # and the last
                # a number starting with 0 is just "0"
                and not (((comma << u(8)) | u(0x80)) & digit & zero & (digit >> u(8))
                         & next_inside).any())


def _shape_bytes(words: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> bool:
    """:func:`_shape_lists` a byte at a time, for ranges of any length."""
    import numpy as np

    width = int(lens.max())
    n = (width + 7) // 8
    last = len(words) - 1
    cells = np.stack([words[np.minimum(starts + 8 * i, last)] for i in range(n)],
                     axis=1).view(np.uint8)
    inside = np.arange(8 * n) < lens[:, None]
    cells = np.where(inside, cells, np.uint8(0))
    digit = (cells - np.uint8(0x30)) < 10
    comma = cells == 0x2C
    if not (digit | comma | ~inside).all() or (comma[:, 1:] & comma[:, :-1]).any():
        return False
    rows = np.flatnonzero(lens > 0)
    if not (digit[rows, 0].all() and digit[rows, lens[rows] - 1].all()):
        return False
    # A number starts at the range's start or after a comma; one starting with 0 is just "0".
    first = digit.copy()
    first[:, 1:] &= comma[:, :-1]
    return not (first[:, :-1] & (cells[:, :-1] == 0x30) & digit[:, 1:]).any()


def _offset_pairs(words: np.ndarray, starts: np.ndarray, ends: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(begins, ends)`` when each range of the header is two JSON integers of at most 16
    digits joined by a comma; None otherwise."""
    import numpy as np

    # The comma is the last byte before the range's end that is not a digit (in the last
    # eight bytes, or the eight before them); what is on either side of it must then be digits
    # only (_integers), so it is the range's only one.
    u = np.uint64
    ones, top = u(0x0101010101010101), u(0x8080808080808080)
    comma = np.empty(len(ends), dtype=np.int64)
    todo = np.arange(len(ends))
    for back in (8, 16):
        at = np.maximum(ends[todo] - back, 0)
        w = words[at]
        # The top bit of each byte that is not a digit (the bytes are ASCII: no carries).
        other = ~((w + u(0x50) * ones) & ~(w + u(0x46) * ones)) & top
        found = other != 0
        # The highest such bit's byte: from the exponent of the word as a float, exact here
        # (its set bits are eight apart, so rounding never reaches the next power of two).
        _mantissa, exponent = np.frexp(other[found].astype(np.float64))
        byte = (exponent - 1) // 8
        if not (((w[found] >> (byte * 8).astype(np.uint64)) & u(0xFF)) == 0x2C).all():
            return None
        comma[todo[found]] = at[found] + byte
        todo = todo[~found]
        if not len(todo):
            break
    else:
        return None  # 16 digits or more after the comma
    first = _integers(words, starts, comma)
    second = _integers(words, comma + 1, ends)
    if first is None or second is None:
        return None
    return first, second


def _integers(words: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """The value of each range of the header when every one is a JSON integer of 1 to 16
    digits; None otherwise. Eight digits at a time, in a word (digits right-aligned, "0" to
    the left, then pairs, quads and octets combined)."""
    import numpy as np

    lens = ends - starts
    if int(lens.min()) < 1 or int(lens.max()) > 16:
        return None
    high = np.array(_HIGH, dtype=np.uint64)
    zeros, nibbles = np.uint64(_ZEROS), np.uint64(0xF0F0F0F0F0F0F0F0)
    parts = []
    for part in (1, 0) if int(lens.max()) > 8 else (0,):  # digits 16 to 9, then 8 to 1
        keep = high[np.clip(lens - 8 * part, 0, 8)]
        w = (words[np.maximum(ends - 8 * (part + 1), 0)] & keep) | (zeros & ~keep)
        # ASCII bytes (the header was checked printable) are digits when their high nibble
        # is 3 and adding 6 leaves it 3.
        if not (((w & nibbles) == zeros).all()
                and (((w + np.uint64(0x0606060606060606)) & nibbles) == zeros).all()):
            return None
        d = w - zeros
        d = (d * np.uint64(10) + (d >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
        d = (d * np.uint64(100) + (d >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
        d = (d * np.uint64(10000) + (d >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
        parts.append(d)
    low = parts[-1] if len(parts) == 1 else parts[0] * np.uint64(10**8) + parts[1]
    value: np.ndarray = low.astype(np.int64)
    # A leading zero: fewer digits' worth of value than digits.
    if ((lens > 1) & (value < np.array(_POWERS, dtype=np.int64)[lens - 1])).any():
        return None
    return value
