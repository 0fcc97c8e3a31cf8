"""Turning a folder (or one file) into stored chunks and the file entries of a snapshot.

Pipeline: the calling thread reads each file sequentially and cuts it (see :mod:`chunking`); a
thread pool hashes each chunk, skips it if the store already has it, and writes it otherwise. A
fixed pool of buffers bounds the chunks in flight, so memory stays at ``max_inflight x 4 MiB``
whatever the model size. Only chunks are written here: the snapshot and
the registry entry come later, in that order, so an interrupted ingest leaves only unreferenced
chunks, which the next attempt reuses.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from modelkeep.errors import (
    IntegrityError,
    ModelkeepError,
    NotFoundError,
    SourceError,
    UnsafePathError,
)
from modelkeep.store import filestate
from modelkeep.store.buffers import BufferPool
from modelkeep.store.chunking import (
    ChunkKey,
    FileChangedError,
    cdc_chunks,
    chunk_tags,
    packs,
    plan_safetensors,
    read_cuts,
)
from modelkeep.store.codec import Kind
from modelkeep.store.objects import local_workers
from modelkeep.store.safetensors import paused_collection
from modelkeep.store.snapshot import (
    INLINE_TENSORS,
    FileEntry,
    file_digest,
    parse_file_entry,
)
from modelkeep.store.tensormap import layout as stored_layout

if TYPE_CHECKING:
    from modelkeep.store.cache import KnownChunks
    from modelkeep.store.chunking import (
        Take,
    )
    from modelkeep.store.filestate import FileStates
    from modelkeep.store.gc import GcMark
    from modelkeep.store.objects import ObjectDB
    from modelkeep.store.safetensors import Layout
    from modelkeep.store.snapshot import (
        Snapshot,
    )

Progress = Callable[[int], None]
_Stored = tuple[str, int, int]  # chunk id, length, stored size if created by this call, else 0
_ASK_FIRST_MIN = 256 << 10  # smaller chunks skip the existence request (see _store_chunk)


@dataclass(frozen=True)
class SourceFile:
    """A file to store: its path inside the version, size, mode and how to open it."""

    relpath: str
    size: int
    mode: int
    open: Callable[[], BinaryIO]
    # A file on local disk: its real path and what stat said when it was listed, so an
    # unchanged one need not be read again (:mod:`.filestate`).
    local_path: str | None = None
    stat: os.stat_result | None = None


@dataclass
class IngestStats:
    files: int = 0
    bytes_total: int = 0
    bytes_added: int = 0  # raw bytes of chunks this ingest created
    bytes_stored: int = 0  # what those chunks take in the store (coded, headers included)
    chunks_total: int = 0
    chunks_added: int = 0
    files_unread: int = 0  # unchanged since this store last stored them (:mod:`.filestate`)
    checked: bool = False  # whether the caller's before_upload ran (Store.ingest)
    # The garbage-collection state read before any chunk was looked at; the commit check
    # compares it with the state when the snapshot or manifest is written.
    gc_mark: GcMark | None = None

    @property
    def dedup_ratio(self) -> float:
        """Fraction of the version's bytes that were already stored (0.0 to 1.0)."""
        if not self.bytes_total:
            return 1.0
        return 1.0 - self.bytes_added / self.bytes_total


def scan_local(path: str | os.PathLike[str]) -> list[SourceFile]:
    """List the files of a local folder (or a single file), refusing anything that would let the
    version reach outside the folder."""
    root = Path(path)
    if not root.exists() and not root.is_symlink():
        raise SourceError(f"{str(path)!r} does not exist", hint="pass a model folder or file")
    if root.is_file():
        st = root.stat()
        return [_local_file(root.name, root, st)]
    if not root.is_dir():
        raise SourceError(f"{str(path)!r} is not a regular file or folder")
    real_root = root.resolve()
    files: list[SourceFile] = []
    visited: set[Path] = set()

    def walk(directory: Path, prefix: str) -> None:
        real = directory.resolve()
        if real in visited:  # a symlink loop back into the tree
            return
        visited.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except PermissionError as exc:
            raise SourceError(f"cannot read folder {str(directory)!r}: permission denied") from exc
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise SourceError(
                    f"file name {rel.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8",
                    hint="rename it; version paths are UTF-8",
                ) from None
            full = Path(entry.path)
            if entry.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(real_root):
                    raise UnsafePathError(
                        f"symlink {rel!r} points outside the model folder (to {str(target)!r})",
                        hint="copy the file into the folder or remove the link",
                    )
                if not target.exists():
                    raise SourceError(f"symlink {rel!r} is broken", hint="fix or remove it")
            if entry.is_dir():
                walk(full, rel + "/")
            elif entry.is_file():
                files.append(_local_file(rel, full, full.stat()))
            else:
                raise SourceError(
                    f"{rel!r} is not a regular file (socket, device or pipe)",
                    hint="remove it from the model folder",
                )

    walk(root, "")
    if not files:
        raise SourceError(f"folder {str(path)!r} has no files", hint="nothing to register")
    return files


def _local_file(rel: str, full: Path, st: os.stat_result) -> SourceFile:
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{rel!r} is not a regular file")
    mode = 0o755 if st.st_mode & 0o111 else 0o644

    def opener() -> BinaryIO:
        try:
            return open(full, "rb", buffering=0)
        except PermissionError as exc:
            raise SourceError(f"cannot read {rel!r}: permission denied") from exc

    return SourceFile(rel, st.st_size, mode, opener, os.path.realpath(full), st)


class Once:
    """*check*, run by the first of any number of threads that call this; the others wait for
    it and share its outcome (what it raised is raised to each). ``done``: it ran and passed."""

    def __init__(self, check: Callable[[], None]) -> None:
        self._check = check
        self.done = False
        self._lock = threading.Lock()
        self._refused: BaseException | None = None

    def __call__(self) -> None:
        if self.done:
            return
        with self._lock:
            if self._refused is not None:
                raise self._refused
            if not self.done:
                try:
                    self._check()
                except BaseException as exc:
                    self._refused = exc
                    raise
                self.done = True


class Ingestor:
    """Stores the chunks of source files in an :class:`ObjectDB`.

    Every byte is hashed once, by the worker that stores its chunk: a file's digest is derived
    from its chunk list (:func:`~modelkeep.store.snapshot.file_digest`), not from a second pass.
    Reading stays sequential on the calling thread; workers reading their own chunks by offset
    measured slower on two cores than one thread reading ahead of them.
    """

    def __init__(
        self,
        db: ObjectDB,
        *,
        known: KnownChunks | None = None,
        workers: int | None = None,
        max_inflight: int | None = None,
        bases: Mapping[ChunkKey, str] | None = None,
        damaged: set[str] | None = None,
        file_states: FileStates | None = None,
        before_upload: Once | None = None,
    ) -> None:
        self.db = db
        self.known = known
        self.file_states = file_states
        self.damaged = damaged or set()  # chunks a verify found damaged: rewritten, not reused
        self.rewritten: list[str] = []
        self.bases = bases if bases is not None else {}  # not bool(): ParentBases is lazy
        self.workers = workers or (local_workers() if db.location.is_local else 16)
        # Locally two chunks read ahead keep every worker busy (hashing and writing a chunk takes
        # several times as long as reading it); object stores need more requests in flight.
        local = db.location.is_local
        self.max_inflight = max_inflight or (self.workers + 2 if local else self.workers * 2)
        self._seen: set[str] = set()
        self._seen_lock = threading.Lock()
        # Called before the first chunk is written (a registry's permission check): a caller
        # refused there has stored nothing; one whose bytes are all stored never asks.
        self._before_upload = before_upload

    def _clear_upload(self) -> None:
        if self._before_upload is not None:
            self._before_upload()

    def _store_chunk(self, data: memoryview, buf: bytearray, dtype: str | None,
                     key: ChunkKey | None) -> _Stored:
        cid = self.db.object_id(data)
        with self._seen_lock:
            if cid in self._seen:
                return cid, len(data), 0
            self._seen.add(cid)
        if cid in self.damaged:
            # Known bad: the stored object moves aside, and these bytes (which hash to its id)
            # take its name.
            self._clear_upload()
            self.db.quarantine(cid)
            created = self.db.put(Kind.CHUNK, cid, data, workspace=buf, dtype=dtype)
            self.db.clear_damaged(cid)
            with self._seen_lock:
                self.rewritten.append(cid)
            return cid, len(data), created
        if self.known is not None and self.known.contains(cid):
            return cid, len(data), 0
        # On an object store, ask before uploading a large chunk that may be there already; a
        # small one is cheaper to send with the conditional create than to ask about first.
        # Locally asking is a stat, and spares a stored chunk its base (the parent's chunk
        # read and decoded, and the parent's tensor map, which may be a header to parse).
        if (
            (self.db.location.is_local or len(data) >= _ASK_FIRST_MIN)
            and self.db.exists(Kind.CHUNK, cid)
        ):
            created = 0
        else:
            # The buffer goes back to the pool once this returns: it may be sealed in place.
            self._clear_upload()
            created = self.db.put(Kind.CHUNK, cid, data, workspace=buf, dtype=dtype,
                                  base=self._base(cid, key))
        if self.known is not None:
            self.known.add(cid)
        return cid, len(data), created

    def _base(self, cid: str, key: ChunkKey | None) -> tuple[str, memoryview, int] | None:
        """The parent's chunk of the same part of the same tensor, to code *cid* against."""
        base_id = self.bases.get(key) if key is not None else None
        if base_id is None or base_id == cid:
            return None
        try:
            raw, depth = self.db.get_base(base_id)
        except (NotFoundError, IntegrityError):
            return None  # a damaged or collected base: the chunk is stored whole instead
        return base_id, raw, depth

    def _unchanged(self, src: SourceFile) -> FileEntry | None:
        """The entry *src* had when this store last stored it, if the file has not changed
        since and the store still holds each of its chunks, none known damaged."""
        if self.file_states is None or src.local_path is None or src.stat is None:
            return None
        raw = self.file_states.lookup(src.local_path, src.stat)
        if raw is None:
            return None
        try:
            entry = parse_file_entry({**raw, "path": src.relpath, "mode": src.mode},
                                     "remembered file")
        except ModelkeepError:
            return None
        if entry.size != src.size or entry.digest != file_digest(list(entry.chunks)):
            return None
        for cid, _n in entry.chunks:
            if cid in self.damaged:
                return None
            if (self.known is None or not self.known.contains(cid)) and not self.db.exists(
                    Kind.CHUNK, cid):
                return None
        with self._seen_lock:
            self._seen.update(cid for cid, _n in entry.chunks)
        return entry

    def _remember(self, src: SourceFile, entry: FileEntry, started_ns: int) -> None:
        """Record *src* as stored as *entry*, unless a write may have landed while it was read."""
        if self.file_states is None or src.local_path is None or src.stat is None:
            return
        if not filestate.settled(src.stat, started_ns):
            return
        try:
            now = os.stat(src.local_path)
        except OSError:
            return
        if filestate.identity(now) == filestate.identity(src.stat):
            self.file_states.record(src.local_path, src.stat, entry.to_json())

    def ingest(
        self, sources: list[SourceFile], progress: Progress | None = None
    ) -> tuple[tuple[FileEntry, ...], IngestStats]:
        stats = IngestStats()
        # The pool bounds memory: reading blocks while every buffer is waiting to be written.
        buffers = BufferPool(self.max_inflight)
        failed: list[BaseException] = []

        def release(buf: bytearray) -> Callable[[Future[_Stored]], None]:
            def done(fut: Future[_Stored]) -> None:
                buffers.give(buf)
                if not fut.cancelled() and fut.exception() is not None:
                    failed.append(fut.exception())  # type: ignore[arg-type]

            return done

        # Per file: its layout, whether its tensor map stays inline, its chunks' futures, when
        # its reading started, and the entry it already had when it was not read at all.
        pending: list[tuple[SourceFile, Layout | None, bool, list[Future[_Stored]], int,
                            FileEntry | None]] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="modelkeep-put") as pool:
            try:
                for src in sources:
                    found = self._unchanged(src)
                    if found is not None:
                        pending.append((src, None, False, [], 0, found))
                        if progress is not None:
                            progress(src.size)
                        continue
                    started_ns = time.time_ns()
                    futures: list[Future[_Stored]] = []
                    digests: dict[str, str] = {}
                    with src.open() as f:
                        layout, chunks = _chunks(f, src, buffers.take)
                        # A map that stays in the header has no ids of packed tensors either.
                        inline = layout is not None and layout.count <= INLINE_TENSORS
                        shared = packs(layout) if layout is not None and inline else {}
                        offset = 0
                        for buf, data, (dtype, key) in chunks:
                            if failed:  # stop reading as soon as a write has failed
                                raise failed[0]
                            # Tensors sharing a chunk get ids of their own (a few small ones).
                            for t in shared.get(offset, ()):
                                digests[t.name] = self.db.object_id(
                                    data[t.start - offset : t.end - offset])
                            offset += len(data)
                            fut = pool.submit(self._store_chunk, data, buf, dtype, key)
                            fut.add_done_callback(release(buf))
                            futures.append(fut)
                            if progress is not None:
                                progress(len(data))
                    if layout is not None and digests:
                        layout = layout.with_tensors(tuple(
                            t._replace(digest=digests[t.name]) if t.name in digests else t
                            for t in layout.tensors))
                    pending.append((src, layout, inline, futures, started_ns, None))
                entries = []
                for src, layout, inline, futures, started_ns, known_entry in pending:
                    if known_entry is not None:
                        entries.append(known_entry)
                        stats.files += 1
                        stats.files_unread += 1
                        stats.bytes_total += src.size
                        stats.chunks_total += len(known_entry.chunks)
                        continue
                    chunk_list = []
                    for fut in futures:
                        cid, n, stored = fut.result()
                        chunk_list.append((cid, n))
                        stats.chunks_total += 1
                        if stored:
                            stats.chunks_added += 1
                            stats.bytes_added += n
                            stats.bytes_stored += stored
                    if sum(n for _cid, n in chunk_list) != src.size:
                        raise SourceError(
                            f"{src.relpath!r} changed while being read: its size went from "
                            f"{src.size} to {sum(n for _cid, n in chunk_list)} bytes",
                            hint="register it again once it is no longer being written",
                        )
                    entries.append(
                        FileEntry(
                            path=src.relpath,
                            size=src.size,
                            mode=src.mode,
                            digest=file_digest(chunk_list),
                            chunks=tuple(chunk_list),
                            tensors=layout.tensors if layout is not None and inline else None,
                            header_end=layout.header_end if layout is not None else None,
                        )
                    )
                    self._remember(src, entries[-1], started_ns)
                    stats.files += 1
                    stats.bytes_total += src.size
            except BaseException:
                # Chunks already written stay (they are harmless and the retry reuses them);
                # queued ones are dropped so the error surfaces now.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            finally:
                if self.known is not None:
                    self.known.flush()
        return tuple(entries), stats


_Tag = tuple[str | None, ChunkKey | None]
_Chunk = tuple[bytearray, memoryview, _Tag]  # buffer, the chunk's bytes, what they hold


def _chunks(f: BinaryIO, src: SourceFile, take: Take) -> tuple[Layout | None, Iterator[_Chunk]]:
    """The layout (safetensors only) and the chunks of *src*, read sequentially from *f*, each
    with the dtype and key of the tensor data it holds (None for anything else)."""
    if not src.relpath.endswith(".safetensors"):
        return None, _renamed(cdc_chunks(f, take), src, itertools.repeat((None, None)))
    with paused_collection():  # a header may make 100,000 tensors and their chunk keys
        plan = plan_safetensors(f, src.size)
        if plan is None:
            return None, _renamed(cdc_chunks(f, take), src, itertools.repeat((None, None)))
        layout, cuts = plan
        tags = chunk_tags(layout, cuts)
    return layout, _renamed(read_cuts(f, cuts, take), src, iter(tags))


def _entry_tags(entry: FileEntry, db: ObjectDB) -> list[tuple[str, _Tag]]:
    """``(chunk id, (dtype, key))`` of each chunk of a stored safetensors file (whose map *db*
    holds, when it is the file's header)."""
    layout = stored_layout(db, entry)
    if layout is None:
        return []
    ends = [off + n for off, (_cid, n) in zip(entry.chunk_offsets(), entry.chunks, strict=True)]
    return [(cid, tag) for (cid, _n), tag in zip(entry.chunks, chunk_tags(layout, ends),
                                                 strict=True)]


def chunk_list(path: Path, relpath: str,
               id_of: Callable[[memoryview], str] | None = None) -> list[tuple[str, int]]:
    """``(id, size)`` of each chunk a register would cut the file *path* into (stored as
    *relpath*), hashed with *id_of* (a store's ids; default the plain content id), with nothing
    stored: how a workspace file is compared with a stored one without storing it."""
    from modelkeep.store.hashing import content_id

    hash_of = id_of or content_id
    src = _local_file(relpath, path, path.stat())
    buffers = BufferPool(2)
    out = []
    with src.open() as f:
        _layout, chunks = _chunks(f, src, buffers.take)
        for buf, data, _tag in chunks:
            try:
                out.append((hash_of(data), len(data)))
            finally:
                buffers.give(buf)
    return out


def rewrite_chunks(db: ObjectDB, sources: list[SourceFile], wanted: set[str]) -> set[str]:
    """Cut *sources* as a register would and store each chunk whose id is in *wanted* (a
    damaged chunk's verified replacement: its bytes hash to its id); returns the ids written."""
    done: set[str] = set()
    buffers = BufferPool(2)
    for src in sources:
        with src.open() as f:
            _layout, chunks = _chunks(f, src, buffers.take)
            for buf, data, (dtype, _key) in chunks:
                try:
                    cid = db.object_id(data)
                    if cid in wanted and cid not in done:
                        db.put(Kind.CHUNK, cid, data, dtype=dtype)
                        done.add(cid)
                finally:
                    buffers.give(buf)
    return done


class ParentBases(Mapping[ChunkKey, str]):
    """{chunk key: chunk id} of the tensor chunks of a parent version: what a new version's
    chunks of the same parts of the same tensors may be stored as deltas of.

    Worked out on first use, by whichever worker first stores a new tensor chunk: a version
    whose chunks are all stored already never needs it, and a parent whose tensor map is its
    header would have that header fetched and parsed for nothing.
    """

    def __init__(self, parent: Snapshot | None, db: ObjectDB) -> None:
        self._parent = parent
        self._db = db
        self._map: dict[ChunkKey, str] | None = None if parent is not None else {}
        self._lock = threading.Lock()

    def _bases(self) -> dict[ChunkKey, str]:
        with self._lock:
            if self._map is None:
                out: dict[ChunkKey, str] = {}
                assert self._parent is not None
                for entry in self._parent.files:
                    for cid, (_dtype, key) in _entry_tags(entry, self._db):
                        if key is not None:
                            out.setdefault(key, cid)
                self._map = out
            return self._map

    def __getitem__(self, key: ChunkKey) -> str:
        if self._parent is None:  # spares hashing the key: its names' id is worked out then
            raise KeyError(key)
        return self._bases()[key]

    def __iter__(self) -> Iterator[ChunkKey]:
        return iter(self._bases())

    def __len__(self) -> int:
        return len(self._bases())


def chunk_dtypes(entry: FileEntry, db: ObjectDB) -> dict[str, str]:
    """{chunk id: dtype} of the chunks of *entry* that hold tensor data of one dtype (*db*
    holds the file's map when it is the file's header)."""
    return {cid: dtype for cid, (dtype, _key) in _entry_tags(entry, db) if dtype is not None}


def _renamed(
    chunks: Iterator[tuple[bytearray, memoryview]], src: SourceFile, tags: Iterator[_Tag],
) -> Iterator[_Chunk]:
    """Pair each chunk with what it holds, and turn a size change noticed while cutting into an
    error that names the file."""
    try:
        for (buf, view), tag in zip(chunks, tags, strict=False):
            yield buf, view, tag
    except FileChangedError as exc:
        raise SourceError(
            f"{src.relpath!r} changed while being read: {exc}",
            hint="register it again once it is no longer being written",
        ) from None
