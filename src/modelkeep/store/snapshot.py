"""Snapshot objects: the immutable description of one model version's files.

A snapshot is canonical JSON (UTF-8, sorted keys, no insignificant white space) and its id is the
BLAKE3 of those bytes, so it cannot change without changing its name. It lists every file with its
size, mode, chunk list and digest (BLAKE3 of the chunk list), the tensor map of each safetensors
file, and the version's parents, author, creation time, message, tags and lineage. The store
alone holds enough to list every version and rebuild a registry.

Snapshots read from a store are untrusted input: :func:`parse` validates every field and every
path before anything uses them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelkeep.errors import IntegrityError, UnsafePathError
from modelkeep.store.hashing import content_id, is_id
from modelkeep.store.safetensors import Tensor

SNAPSHOT_FORMAT = 1
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # UTC, microseconds
_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_PATH = 4096
# Bounds on untrusted snapshots (docs/format.md §5.7), so that parsing one costs time and memory
# in proportion to a real model's: a snapshot payload is at most 64 MiB (the largest object
# objects.py reads), a chunk at most 4 MiB (chunking.py), JSON nested at most 64 deep.
MAX_SNAPSHOT_BYTES = 64 << 20
MAX_CHUNK_LENGTH = 4 << 20
MAX_FILES = 1_000_000
MAX_DIMS = 64
MAX_DEPTH = 64
# A safetensors file with more tensors than this has no tensor map in its snapshot entry: the map
# is its own header, already stored as its first chunks (docs/format.md §5.4). Copied, 100,000
# four-byte tensors made a 16 MB snapshot of an 8 MB file; a model's files hold hundreds to a few
# thousand tensors each, and keep the map (and the ids of packed tensors) in the snapshot.
INLINE_TENSORS = 4096


def check_relpath(path: str) -> str:
    """Return *path* if it is a safe relative POSIX path inside a folder, else raise."""
    if (
        not isinstance(path, str)
        or not path
        or len(path) > MAX_PATH
        or "\x00" in path
        or "\\" in path
        or path.startswith("/")
        or _DRIVE.match(path)
    ):
        raise UnsafePathError(
            f"unsafe path {path!r} in snapshot", hint="the snapshot is damaged or hostile; "
            "it was not materialised"
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(
                f"unsafe path {path!r} in snapshot", hint="the snapshot is damaged or hostile; "
                "it was not materialised"
            )
    return path


@dataclass(frozen=True)
class FileEntry:
    """One file of a version."""

    path: str
    size: int
    mode: int  # 0o644 or 0o755: only the executable bit is kept
    digest: str  # file digest: BLAKE3 of the chunk list (file_digest)
    chunks: tuple[tuple[str, int], ...]  # (chunk id, raw length), in file order
    # The safetensors tensor map; None for other files, and for a safetensors file whose map is
    # its header (more than INLINE_TENSORS tensors: header_end is set, see store.tensormap).
    tensors: tuple[Tensor, ...] | None = None
    header_end: int | None = None  # set for every file cut by the safetensors rule

    @property
    def is_safetensors(self) -> bool:
        return self.header_end is not None

    def chunk_offsets(self) -> list[int]:
        """Start offset of each chunk in the file."""
        out, pos = [], 0
        for _cid, n in self.chunks:
            out.append(pos)
            pos += n
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "digest": self.digest,
            "chunks": [[cid, n] for cid, n in self.chunks],
        }
        if self.header_end is not None:
            st: dict[str, Any] = {"header_end": self.header_end}
            if self.tensors is not None:
                st["tensors"] = [t.to_json() for t in self.tensors]
            data["safetensors"] = st
        return data


@dataclass(frozen=True)
class Parent:
    """A parent version: the snapshot it is built on, and the registry name it had."""

    snapshot_id: str
    name: str | None = None
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        # The snapshot format's spelling (docs/format.md); --json output spells it snapshot_id.
        return {"snapshot": self.snapshot_id, "name": self.name, "version": self.version}

    def __str__(self) -> str:
        if self.name and self.version:
            return f"{self.name}@{self.version}"
        return self.snapshot_id[:12]


@dataclass(frozen=True)
class Snapshot:
    name: str
    files: tuple[FileEntry, ...]
    created: str  # ISO 8601 UTC
    author: str = ""
    message: str = ""
    parents: tuple[Parent, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def tree(self) -> str:
        """Digest of the content alone (paths, sizes, modes, file digests): equal trees mean
        byte-identical versions, whatever their metadata."""
        return tree_digest(self.files)

    def file(self, path: str) -> FileEntry | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "type": "modelkeep.snapshot",
            "name": self.name,
            "created": self.created,
            "author": self.author,
            "message": self.message,
            "parents": [p.to_json() for p in self.parents],
            "tags": dict(self.tags),
            "lineage": dict(self.lineage),
            "size": self.size,
            "tree": self.tree,
            "files": [f.to_json() for f in self.files],
        }

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def id(self) -> str:
        return content_id(self.encode())


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def file_digest(chunks: Sequence[tuple[str, int]]) -> str:
    """A file's digest: BLAKE3 of its chunk list, each chunk as its 32-byte id followed by its
    length as 8 bytes little-endian.

    Chunk ids already hash every byte, so deriving the file's identity from them costs no second
    pass over the data (measured at a fifth of the time of storing a new version). Equal digests
    mean equal bytes cut the same way, and the cut rules are fixed per format.
    """
    out = bytearray()
    for cid, n in chunks:
        out += bytes.fromhex(cid)
        out += n.to_bytes(8, "little")
    return content_id(out)


def tree_digest(files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    items = sorted((f.path, f.size, f.mode, f.digest) for f in files)
    return content_id(canonical_json(items))


# -- parsing (untrusted input) -------------------------------------------------------------------


def _fail(what: str, problem: str) -> IntegrityError:
    return IntegrityError(f"{what} is malformed: {problem}")


def _req(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise _fail(what, f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise _fail(what, f"field {key!r} has the wrong type")
    return value


def parse(payload: bytes | memoryview, what: str = "snapshot") -> Snapshot:
    """Validate and decode a snapshot payload. Raises :class:`IntegrityError` or
    :class:`UnsafePathError`; never returns a snapshot with an unsafe path."""
    if len(payload) > MAX_SNAPSHOT_BYTES:
        raise _fail(what, f"larger than {MAX_SNAPSHOT_BYTES} bytes")
    raw = bytes(payload)
    if _nesting(raw) > MAX_DEPTH:
        raise _fail(what, f"JSON nested more than {MAX_DEPTH} deep")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(what, "not valid JSON") from None
    if not isinstance(data, dict):
        raise _fail(what, "not a JSON object")
    if data.get("type") != "modelkeep.snapshot":
        raise _fail(what, "not a modelkeep snapshot")
    if _req(data, "format", int, what) != SNAPSHOT_FORMAT:
        raise IntegrityError(
            f"{what} has snapshot format {data['format']}; this modelkeep reads "
            f"{SNAPSHOT_FORMAT}", hint="upgrade modelkeep",
        )
    files = []
    raw_files = _req(data, "files", list, what)
    if len(raw_files) > MAX_FILES:
        raise _fail(what, f"more than {MAX_FILES} files")
    tree = _Tree(what)
    for item in raw_files:
        if not isinstance(item, dict):
            raise _fail(what, "a file entry is not an object")
        entry = parse_file_entry(item, what)
        tree.add(entry.path)
        files.append(entry)
    parents = []
    for raw in _req(data, "parents", list, what):
        if not isinstance(raw, dict) or not is_id(raw.get("snapshot")):
            raise _fail(what, "a parent entry is malformed")
        name, version = raw.get("name"), raw.get("version")
        if name is not None and not isinstance(name, str):
            raise _fail(what, "a parent name is not a string")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise _fail(what, "a parent version is not an integer")
        parents.append(Parent(raw["snapshot"], name, version))
    tags = _req(data, "tags", dict, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise _fail(what, "tags must map strings to strings")
    created = _req(data, "created", str, what)
    try:
        datetime.strptime(created, CREATED_FORMAT)
    except ValueError:
        raise _fail(what, f"'created' is not {CREATED_FORMAT}") from None
    snap = Snapshot(
        name=_req(data, "name", str, what),
        files=tuple(files),
        created=created,
        author=_req(data, "author", str, what),
        message=_req(data, "message", str, what),
        parents=tuple(parents),
        tags=tags,
        lineage=_req(data, "lineage", dict, what),
    )
    if _req(data, "size", int, what) != snap.size:
        raise _fail(what, "total size does not match its files")
    if _req(data, "tree", str, what) != snap.tree:
        raise _fail(what, "tree digest does not match its files")
    return snap


def _nesting(raw: bytes) -> int:
    """How deep the JSON arrays and objects in *raw* nest (brackets inside strings count too,
    which can only overstate it). Checked before decoding, so a hostile snapshot of a million
    ``[`` costs one pass over its bytes, not a million-deep parse."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(raw):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        else:
            depth -= 1
    return deepest


_BRACKETS = re.compile(rb"[\[\]{}]")
_IS_FILE = object()


class _Tree:
    """The paths of a snapshot as a tree of components: one walk per path finds duplicates and
    files under files in time linear in the paths' length."""

    def __init__(self, what: str) -> None:
        self.root: dict[str, Any] = {}
        self.what = what

    def add(self, path: str) -> None:
        node = self.root
        parts = path.split("/")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is _IS_FILE:
                raise _fail(self.what, f"{path!r} lies under {'/'.join(parts[:i + 1])!r}, "
                            "which is a file")
            node = child
        existing = node.get(parts[-1])
        if existing is _IS_FILE:
            raise _fail(self.what, f"duplicate path {path!r}")
        if existing is not None:
            raise _fail(self.what, f"{path!r} is a file and also holds other files")
        node[parts[-1]] = _IS_FILE


def parse_file_entry(raw: Mapping[str, Any], what: str) -> FileEntry:
    """Validate one untrusted file entry (§5.3 fields) and return it."""
    path = check_relpath(_req(raw, "path", str, what))
    size = _req(raw, "size", int, what)
    mode = _req(raw, "mode", int, what)
    digest = _req(raw, "digest", str, what)
    if size < 0 or mode not in (0o644, 0o755) or not is_id(digest):
        raise _fail(what, f"file {path!r} has an invalid size, mode or digest")
    chunks = []
    total = 0
    for item in _req(raw, "chunks", list, what):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not is_id(item[0])
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or not 0 < item[1] <= MAX_CHUNK_LENGTH
        ):
            raise _fail(what, f"file {path!r} has a malformed chunk entry")
        chunks.append((item[0], item[1]))
        total += item[1]
    if total != size:
        raise _fail(what, f"chunks of {path!r} add up to {total} bytes, file size is {size}")
    if file_digest(chunks) != digest:
        raise _fail(what, f"digest of {path!r} does not match its chunk list")
    tensors = header_end = None
    st = raw.get("safetensors")
    if st is not None:
        if not isinstance(st, dict):
            raise _fail(what, f"safetensors map of {path!r} is malformed")
        header_end = _req(st, "header_end", int, what)
        if "tensors" not in st:
            # The map is the file's header: bytes [0, header_end), a u64 and at least "{}".
            if not 10 <= header_end <= size:
                raise _fail(what, f"header of {path!r} is out of range")
            return FileEntry(path, size, mode, digest, tuple(chunks), None, header_end)
        parsed = []
        for t in _req(st, "tensors", list, what):
            if not isinstance(t, dict):
                raise _fail(what, f"a tensor entry of {path!r} is malformed")
            shape = _req(t, "shape", list, what)
            start, end = _req(t, "start", int, what), _req(t, "end", int, what)
            if len(shape) > MAX_DIMS or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
            ) or not (
                0 <= start <= end <= size
            ):
                raise _fail(what, f"a tensor entry of {path!r} is out of range")
            tdigest = t.get("digest")
            if tdigest is not None and not is_id(tdigest):
                raise _fail(what, f"a tensor digest of {path!r} is malformed")
            parsed.append(
                Tensor(_req(t, "name", str, what), _req(t, "dtype", str, what), tuple(shape),
                       start, end, tdigest)
            )
        tensors = tuple(parsed)
    return FileEntry(path, size, mode, digest, tuple(chunks), tensors, header_end)
