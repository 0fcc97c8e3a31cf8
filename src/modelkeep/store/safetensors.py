"""Reading the header of a safetensors file, without any ML framework.

A safetensors file is ``u64 little-endian N`` + ``N bytes of JSON`` + a data section. The JSON maps
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
section), plus an optional ``__metadata__`` map of strings. Anything that does not parse exactly is
treated as "not safetensors" by the chunker, which then falls back to content-defined chunking, so
a malformed file is still stored byte for byte.
"""

from __future__ import annotations

import gc
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import BinaryIO, NamedTuple

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


@dataclass(frozen=True)
class Layout:
    header_end: int  # 8 + N: the header chunk is bytes [0, header_end)
    tensors: tuple[Tensor, ...]  # sorted by start offset
    metadata: dict[str, str]


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
    raw = f.read(n)
    if len(raw) != n:
        return None
    return _parse(raw, size)


def layout_of(head: bytes | memoryview, size: int) -> Layout | None:
    """Parse a header already read: *head* holds (at least) the file's first ``8 + N`` bytes,
    *size* is the file's length; None if it is not a well-formed safetensors file."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack_from("<Q", head)
    if n < 2 or n > MAX_HEADER or 8 + n > min(size, len(head)):
        return None
    return _parse(bytes(head[8 : 8 + n]), size)


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


def _parse(raw: bytes, size: int) -> Layout | None:
    with paused_collection():
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            # RecursionError: JSON nested deeper than the parser's stack (a header of 1,000
            # nested arrays); it does not parse, so the file is cut as opaque bytes like any
            # other.
            return None
        if not isinstance(header, dict):
            return None
        data_start = 8 + len(raw)
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
