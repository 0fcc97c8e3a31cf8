"""Reading the header of a safetensors file, without any ML framework.

A safetensors file is ``u64 little-endian N`` + ``N bytes of JSON`` + a data section. The JSON maps
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data
section), plus an optional ``__metadata__`` map of strings. Anything that does not parse exactly is
treated as "not safetensors" by the chunker, which then falls back to content-defined chunking, so
a malformed file is still stored byte for byte.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from typing import BinaryIO

# The reference implementation refuses headers over 100 MB; so do we, so that a hostile length
# cannot make us allocate gigabytes.
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class Tensor:
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
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack (a header of 1,000 nested
        # arrays); it does not parse, so the file is cut as opaque bytes like any other.
        return None
    if not isinstance(header, dict):
        return None
    data_start = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        return None
    tensors: list[Tensor] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            return None
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
        ):
            return None
        begin, end = offsets
        if not 0 <= begin <= end or data_start + end > size:
            return None
        tensors.append(Tensor(name, dtype, tuple(shape), data_start + begin, data_start + end))
    tensors.sort(key=lambda t: (t.start, t.end))
    for a, b in itertools.pairwise(tensors):
        if b.start < a.end:  # overlapping tensors: not something we can cut cleanly
            return None
    return Layout(data_start, tuple(tensors), {str(k): str(v) for k, v in metadata.items()})
