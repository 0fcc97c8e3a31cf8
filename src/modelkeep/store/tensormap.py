"""The tensor map of a stored safetensors file, wherever the snapshot keeps it.

A file of up to :data:`~modelkeep.store.snapshot.INLINE_TENSORS` tensors has its map in its
snapshot entry, with the ids of tensors that share a chunk. A file with more has only its
``header_end`` there (docs/format.md §5.4): its map is its header, stored as its first chunks, and
is read back from them here, parsed by the same rules that cut the file. Asked for, the ids of
packed tensors are computed from their chunks, which hold small tensors only (a few MiB at most
for a whole file), so callers compare tensors the same way whichever form the entry has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelkeep.errors import IntegrityError
from modelkeep.store.chunking import packs
from modelkeep.store.codec import Kind
from modelkeep.store.safetensors import Layout, layout_of

if TYPE_CHECKING:
    from modelkeep.store.objects import ObjectDB
    from modelkeep.store.safetensors import Tensor
    from modelkeep.store.snapshot import FileEntry


def _read(db: ObjectDB, entry: FileEntry, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of *entry*, from the chunks that hold them."""
    out = bytearray()
    pos = 0
    for cid, n in entry.chunks:
        if pos >= end:
            break
        if pos + n > start:
            data = db.get(Kind.CHUNK, cid, f"chunk {cid[:12]} of {entry.path!r}")
            out += data[max(start - pos, 0) : min(end - pos, n)]
        pos += n
    return bytes(out)


def layout(db: ObjectDB, entry: FileEntry) -> Layout | None:
    """The layout of the safetensors file *entry* (None for any other file), its tensors
    without ids of their own when the map is read from the stored header."""
    if entry.header_end is None:
        return None
    if entry.tensors is not None:
        return Layout(entry.header_end, entry.tensors, {})
    found = layout_of(_read(db, entry, 0, entry.header_end), entry.size)
    if found is None or found.header_end != entry.header_end:
        raise IntegrityError(
            f"the stored header of {entry.path!r} does not parse as the safetensors header its "
            "snapshot says it is", hint="run `modelkeep verify` on the store")
    return found


def tensors(db: ObjectDB, entry: FileEntry, *, digests: bool = False) -> tuple[Tensor, ...] | None:
    """The tensors of the safetensors file *entry* (None for any other file). With *digests*,
    every tensor that shares its chunk with others carries the id of its own bytes, as a map kept
    in the snapshot does."""
    found = layout(db, entry)
    if found is None:
        return None
    if entry.tensors is not None or not digests:
        return found.tensors
    ids: dict[str, str] = {}
    for start, members in packs(found).items():
        data = memoryview(_read(db, entry, start, members[-1].end))
        for t in members:
            ids[t.name] = db.object_id(data[t.start - start : t.end - start])
    return tuple(t._replace(digest=ids[t.name]) if t.name in ids else t for t in found.tensors)
