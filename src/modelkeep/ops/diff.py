"""What changed between two versions (``modelkeep diff``).

Which files were added, removed or changed comes from the two snapshots alone (file digests are
hashes of the chunk lists), and so does which tensors of a safetensors file changed (the chunk
ids, or the digest recorded for small tensors that share a chunk). With *content*, the changes are
also read:

* a changed text file (UTF-8, no NUL byte, both sides at most :data:`TEXT_LIMIT`) gets a unified
  diff (:mod:`difflib`), as does an added or removed one against nothing;
* a changed tensor of the same dtype and shape gets the largest absolute difference of its
  values, read chunk by chunk through the store in blocks of :data:`BLOCK` bytes, so memory stays
  bounded whatever the tensor's size; bfloat16 and float8 values are read with ``ml_dtypes``, the
  numpy types JAX and safetensors use. Where both sides of a tensor are cut into chunks at the
  same places, only the chunks whose ids differ are read: equal ids are equal bytes.

Without *content* (``--stat``) nothing but the snapshots is read, except for a safetensors file
of so many tensors that its snapshot entry leaves the tensor map in its header: its header chunks,
and the chunks its small tensors share, are read for their names and ids.
"""

from __future__ import annotations

import bisect
import difflib
import math
from typing import TYPE_CHECKING, Any

from modelkeep.ops._common import load, resolve
from modelkeep.ops.results import Diff, FileChange, TensorChange, TensorChanges, VersionRef

if TYPE_CHECKING:
    import numpy as np

    from modelkeep.keep import Keep
    from modelkeep.store import FileEntry, Store, Tensor

TEXT_LIMIT = 1 << 20  # text files up to 1 MiB get a unified diff
BLOCK = 4 << 20  # bytes of each side of a tensor compared at a time
_INTS = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
         "U32": "uint32", "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16",
         "F32": "float32", "F64": "float64"}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def diff(keep: Keep, ref_a: str, ref_b: str, *, content: bool = True) -> Diff:
    """Files added, removed and changed from *ref_a* to *ref_b*; for safetensors files the
    tensors added, removed and changed (by content, dtype or shape); with *content*, unified
    diffs of small text files and the largest absolute difference of each changed tensor."""
    rv_a, rv_b = resolve(keep, ref_a), resolve(keep, ref_b)
    store_a, a, sid_a = load(keep, rv_a)
    store_b, b, sid_b = load(keep, rv_b)
    fa = {f.path: f for f in a.files}
    fb = {f.path: f for f in b.files}
    changes = []
    unchanged = 0
    for path in sorted(fa.keys() | fb.keys()):
        ea, eb = fa.get(path), fb.get(path)
        if ea is not None and eb is not None and ea.digest == eb.digest and ea.mode == eb.mode:
            unchanged += 1
            continue
        status = "added" if ea is None else "removed" if eb is None else "changed"
        tensors = None
        if ea is not None and eb is not None and ea.is_safetensors and eb.is_safetensors:
            maps = (store_a.tensor_map(ea, digests=True), store_b.tensor_map(eb, digests=True))
            tensors = tensor_changes(ea, eb, (store_a, store_b) if content else None, maps)
        text = None
        mode_only = ea is not None and eb is not None and ea.digest == eb.digest
        if content and tensors is None and not mode_only:
            text = text_diff(path, store_a, ea, store_b, eb)
        changes.append(FileChange(
            path, status, ea.size if ea else None, eb.size if eb else None, tensors,
            mode_a=ea.mode if ea else None, mode_b=eb.mode if eb else None, text_diff=text))
    return Diff(VersionRef(rv_a.name, rv_a.version, sid_a),
                VersionRef(rv_b.name, rv_b.version, sid_b), tuple(changes), unchanged,
                content=content)


# -- text --------------------------------------------------------------------------------------


def _text(store: Store, entry: FileEntry | None) -> list[str] | None:
    """The lines of a small UTF-8 text file (``[]`` for no file), None if it is not one."""
    if entry is None:
        return []
    if entry.size > TEXT_LIMIT or entry.is_safetensors:
        return None
    with store.open_entry(entry) as f:
        data = f.read()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def text_diff(path: str, store_a: Store, a: FileEntry | None, store_b: Store,
              b: FileEntry | None) -> str | None:
    """A unified diff of a text file between two versions, None when either side is not a
    small text file."""
    old, new = _text(store_a, a), _text(store_b, b)
    if old is None or new is None:
        return None
    lines = []
    # Headers as git writes them (no dates): the versions are named on the file's own line.
    for line in difflib.unified_diff(
            old, new, f"a/{path}" if a else "/dev/null", f"b/{path}" if b else "/dev/null"):
        if line.endswith("\n"):
            lines.append(line)
        else:  # as diff(1) marks a last line without its newline
            lines.append(line + "\n\\ No newline at end of file\n")
    return "".join(lines)


# -- tensors -----------------------------------------------------------------------------------


def _chunk_ids_in(entry: FileEntry, start: int, end: int) -> tuple[str, ...]:
    offsets = entry.chunk_offsets()
    first = bisect.bisect_right(offsets, start) - 1
    last = bisect.bisect_left(offsets, end)
    return tuple(cid for cid, _n in entry.chunks[max(first, 0):last])


def _tensor_key(entry: FileEntry, t: Tensor) -> str | tuple[str, ...]:
    """What identifies a tensor's bytes: the id of its own bytes, recorded for a tensor that
    shares its chunk with others (small tensors travel together); else the chunks that hold it,
    of which a tensor that is exactly one chunk has that chunk's id, its own bytes' id too."""
    if t.digest is not None:
        return t.digest
    ids = _chunk_ids_in(entry, t.start, t.end)
    if len(ids) == 1:
        offsets = entry.chunk_offsets()
        i = bisect.bisect_left(offsets, t.start)
        if i < len(offsets) and offsets[i] == t.start and offsets[i] + entry.chunks[i][1] == t.end:
            return ids[0]
    return ids


def tensor_changes(a: FileEntry, b: FileEntry, stores: tuple[Store, Store] | None = None,
                   maps: tuple[tuple[Tensor, ...] | None, tuple[Tensor, ...] | None] | None = None,
                   ) -> TensorChanges:
    """The tensors added, removed and changed from file *a* to *b*; with *stores* (the stores
    *a* and *b* are read from), each changed tensor of unchanged dtype and shape is read for its
    largest absolute difference. *maps* are the two files' tensors (``Store.tensor_map`` with
    digests), for a file whose snapshot entry leaves its map in its header."""
    ta = {t.name: t for t in (maps[0] if maps else a.tensors) or ()}
    tb = {t.name: t for t in (maps[1] if maps else b.tensors) or ()}
    changed, unchanged = [], 0
    details: list[TensorChange] = []
    for name in sorted(ta.keys() & tb.keys()):
        x, y = ta[name], tb[name]
        if x.dtype == y.dtype and x.shape == y.shape and (
                x.start == x.end or _tensor_key(a, x) == _tensor_key(b, y)):
            unchanged += 1
            continue
        changed.append(name)
        details.append(TensorChange(name, "changed", x.dtype, y.dtype, x.shape, y.shape))
    details += [TensorChange(n, "added", None, tb[n].dtype, None, tb[n].shape)
                for n in sorted(tb.keys() - ta.keys())]
    details += [TensorChange(n, "removed", ta[n].dtype, None, ta[n].shape, None)
                for n in sorted(ta.keys() - tb.keys())]
    if stores is not None:
        details = _measure(a, b, stores, ta, tb, details)
    return TensorChanges(
        added=tuple(sorted(tb.keys() - ta.keys())),
        removed=tuple(sorted(ta.keys() - tb.keys())),
        changed=tuple(changed),
        unchanged=unchanged,
        details=tuple(details),
    )


def _measure(a: FileEntry, b: FileEntry, stores: tuple[Store, Store], ta: dict[str, Tensor],
             tb: dict[str, Tensor], details: list[TensorChange]) -> list[TensorChange]:
    from dataclasses import replace

    out = []
    with stores[0].open_entry(a) as fa, stores[1].open_entry(b) as fb:
        # In file order, so that each side's chunks are fetched once, in sequence.
        order = sorted(range(len(details)), key=lambda i: ta[details[i].name].start
                       if details[i].status == "changed" else -1)
        measured: dict[int, float | None] = {}
        for i in order:
            d = details[i]
            if d.status != "changed" or d.dtype_a != d.dtype_b or d.shape_a != d.shape_b:
                continue
            x, y = ta[d.name], tb[d.name]
            measured[i] = max_abs_diff(fa, x, fb, y, differing(a, x, b, y))
        for i, d in enumerate(details):
            out.append(replace(d, max_abs_diff=measured[i]) if i in measured else d)
    return out


def numpy_dtype(dtype: str) -> np.dtype[Any] | None:
    """The numpy dtype of a safetensors dtype name, None for one numpy cannot hold."""
    import numpy as np

    if dtype in _INTS:
        return np.dtype(_INTS[dtype]).newbyteorder("<")
    if dtype in _ML_DTYPES:
        import ml_dtypes

        found: np.dtype[Any] = np.dtype(getattr(ml_dtypes, _ML_DTYPES[dtype]))
        return found
    return None


def _pieces(entry: FileEntry, t: Tensor) -> list[tuple[int, int, str]]:
    """``(start, end, chunk id)`` of the chunks holding tensor *t*, offsets relative to it."""
    out, pos = [], 0
    for cid, n in entry.chunks:
        if pos + n > t.start and pos < t.end:
            out.append((max(pos, t.start) - t.start, min(pos + n, t.end) - t.start, cid))
        pos += n
        if pos >= t.end:
            break
    return out


def differing(a: FileEntry, x: Tensor, b: FileEntry, y: Tensor) -> list[tuple[int, int]]:
    """The byte ranges (relative to the tensor) where tensor *x* of *a* and *y* of *b* may
    differ: where both are cut into chunks at the same places, the pieces whose chunk ids
    differ (equal ids are equal bytes, never read), else the whole tensor. A fine-tune that
    touched a few rows of a large tensor is read only there."""
    pa, pb = _pieces(a, x), _pieces(b, y)
    if [(s, e) for s, e, _c in pa] != [(s, e) for s, e, _c in pb]:
        return [(0, x.end - x.start)]
    out: list[tuple[int, int]] = []
    for (start, end, ca), (_s, _e, cb) in zip(pa, pb, strict=True):
        if ca == cb:
            continue
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def max_abs_diff(fa: Any, x: Tensor, fb: Any, y: Tensor,
                 ranges: list[tuple[int, int]] | None = None) -> float | None:
    """The largest absolute difference between the values of tensor *x* (read from stream
    *fa*) and *y* (from *fb*), same dtype and shape, over the byte *ranges* relative to the
    tensors (default: all of them; see :func:`differing`), in blocks of :data:`BLOCK` bytes.
    Positions where both are NaN count as equal; a NaN on one side only makes the answer NaN.
    None for a dtype numpy cannot read."""
    dtype = numpy_dtype(x.dtype)
    total = x.end - x.start
    if dtype is None or total != y.end - y.start:
        return None
    worst = 0.0
    size = dtype.itemsize
    for start, end in ([(0, total)] if ranges is None else ranges):
        # Chunk edges need not fall between values: widen to whole values.
        start, end = start - start % size, min(total, end + (-end) % size)
        top = _block_max(fa, x.start, fb, y.start, start, end, dtype)
        if math.isnan(top):
            return math.nan
        worst = max(worst, top)
    return worst


def _block_max(fa: Any, xa: int, fb: Any, yb: int, start: int, end: int,
               dtype: np.dtype[Any]) -> float:
    import numpy as np

    step = max(dtype.itemsize, BLOCK - BLOCK % dtype.itemsize)
    worst = 0.0
    done, total = start, end
    while done < total:
        n = min(step, total - done)
        fa.seek(xa + done)
        fb.seek(yb + done)
        left = np.frombuffer(fa.read(n), dtype=dtype).astype(np.float64)
        right = np.frombuffer(fb.read(n), dtype=dtype).astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            delta = np.abs(left - right)
        both_nan = np.isnan(left) & np.isnan(right)
        same_inf = np.isinf(left) & (left == right)
        delta[both_nan | same_inf] = 0.0
        if delta.size:
            top = float(delta.max())  # NaN if any position differs by NaN
            if math.isnan(top):
                return top
            worst = max(worst, top)
        done += n
    return worst
