"""Turning a folder (or one file) into stored chunks and the file entries of a snapshot.

Pipeline: the calling thread reads each file sequentially, cuts it (see :mod:`chunking`) and feeds
the whole-file hasher; a thread pool hashes each chunk, skips it if the store already has it, and
writes it otherwise. A semaphore bounds the chunks in flight, so memory stays at
``max_inflight x 4 MiB`` whatever the model size. Only chunks are written here: the snapshot and
the registry entry come later, in that order, so an interrupted ingest leaves only unreferenced
chunks, which the next attempt reuses.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelkeep.errors import SourceError, UnsafePathError
from modelkeep.store.buffers import BufferPool
from modelkeep.store.cache import KnownChunks
from modelkeep.store.chunking import (
    FileChangedError,
    cdc_chunks,
    plan_safetensors,
    read_cuts,
)
from modelkeep.store.codec import Kind
from modelkeep.store.hashing import content_id, new_hasher
from modelkeep.store.objects import ObjectDB
from modelkeep.store.safetensors import Layout
from modelkeep.store.snapshot import FileEntry

Progress = Callable[[int], None]
_Stored = tuple[str, int, bool]  # chunk id, length, created by this call


@dataclass(frozen=True)
class SourceFile:
    """A file to store: its path inside the version, size, mode and how to open it."""

    relpath: str
    size: int
    mode: int
    open: Callable[[], BinaryIO]


@dataclass
class IngestStats:
    files: int = 0
    bytes_total: int = 0
    bytes_added: int = 0  # raw bytes of chunks this ingest created
    chunks_total: int = 0
    chunks_added: int = 0

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

    return SourceFile(rel, st.st_size, mode, opener)


class _Slot:
    """One chunk on its way through the pipeline. Its buffer is shared by the worker that stores
    the chunk and by the whole-file digest, and goes back to the pool when both are done."""

    __slots__ = ("_lock", "_pool", "_refs", "buf", "ready", "view")

    def __init__(self, pool: BufferPool, buf: bytearray, view: memoryview, filled: bool) -> None:
        self.buf = buf
        self.view = view
        self.ready = threading.Event()  # set once the bytes are in the buffer
        if filled:
            self.ready.set()
        self._pool = pool
        self._refs = 2
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self._pool.give(self.buf)


def _fileno(f: BinaryIO) -> int | None:
    """The descriptor of *f* if it is a regular local file that workers can read by offset."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _pread_exact(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            raise FileChangedError(
                f"it shrank while being read ({len(view) - got} bytes short)"
            )
        got += n


class Ingestor:
    """Stores the chunks of source files in an :class:`ObjectDB`.

    The calling thread plans each file's cuts and computes its whole-file digest; a thread pool
    stores the chunks. When a file is a local safetensors file its cuts are known from the header
    alone, so the workers also read their own chunks (``pread``) and reading, hashing and writing
    run side by side on every core; the digest then trails the workers by a bounded window.
    Anything else (FastCDC files, streams) is read sequentially by the calling thread.
    """

    def __init__(
        self,
        db: ObjectDB,
        *,
        known: KnownChunks | None = None,
        workers: int | None = None,
        max_inflight: int | None = None,
    ) -> None:
        self.db = db
        self.known = known
        self.workers = workers or (4 if db.location.is_local else 16)
        self.max_inflight = max(2, max_inflight or self.workers * 2)
        self._seen: set[str] = set()
        self._seen_lock = threading.Lock()

    def _store_chunk(self, data: memoryview) -> _Stored:
        cid = content_id(data)
        with self._seen_lock:
            if cid in self._seen:
                return cid, len(data), False
            self._seen.add(cid)
        if self.known is not None and self.known.contains(cid):
            return cid, len(data), False
        if not self.db.location.is_local and self.db.exists(Kind.CHUNK, cid):
            created = False
        else:
            created = self.db.put(Kind.CHUNK, cid, data)
        if self.known is not None:
            self.known.add(cid)
        return cid, len(data), created

    def _read_and_store(self, fd: int, offset: int, slot: _Slot) -> _Stored:
        try:
            _pread_exact(fd, slot.view, offset)
        finally:
            slot.ready.set()  # even on failure: the digest must never wait forever
        return self._store_chunk(slot.view)

    def ingest(
        self, sources: list[SourceFile], progress: Progress | None = None
    ) -> tuple[tuple[FileEntry, ...], IngestStats]:
        stats = IngestStats()
        # The pool bounds memory: planning blocks while every buffer is in flight. The digest
        # window stays below the pool size, so a buffer held by a store always frees one.
        buffers = BufferPool(self.max_inflight)
        window_max = self.max_inflight - 1
        failed: list[BaseException] = []

        def stored(slot: _Slot) -> Callable[[Future[_Stored]], None]:
            def done(fut: Future[_Stored]) -> None:
                slot.release()
                if not fut.cancelled() and fut.exception() is not None:
                    failed.append(fut.exception())  # type: ignore[arg-type]

            return done

        pending: list[tuple[SourceFile, str, Layout | None, list[Future[_Stored]]]] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="modelkeep-put") as pool:
            try:
                for src in sources:
                    digest, layout, futures = self._ingest_file(
                        src, pool, buffers, window_max, stored, failed, progress
                    )
                    pending.append((src, digest, layout, futures))
                entries = []
                for src, digest, layout, futures in pending:
                    chunk_list = []
                    for fut in futures:
                        cid, n, created = fut.result()
                        chunk_list.append((cid, n))
                        stats.chunks_total += 1
                        if created:
                            stats.chunks_added += 1
                            stats.bytes_added += n
                    entries.append(
                        FileEntry(
                            path=src.relpath,
                            size=src.size,
                            mode=src.mode,
                            digest=digest,
                            chunks=tuple(chunk_list),
                            tensors=layout.tensors if layout is not None else None,
                            header_end=layout.header_end if layout is not None else None,
                        )
                    )
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

    def _ingest_file(
        self,
        src: SourceFile,
        pool: ThreadPoolExecutor,
        buffers: BufferPool,
        window_max: int,
        stored: Callable[[_Slot], Callable[[Future[_Stored]], None]],
        failed: list[BaseException],
        progress: Progress | None,
    ) -> tuple[str, Layout | None, list[Future[_Stored]]]:
        """Submit every chunk of *src* and return its whole-file digest, layout and the futures of
        its chunks, in file order."""
        hasher = new_hasher()
        futures: list[Future[_Stored]] = []
        window: deque[_Slot] = deque()
        hashed = 0

        def digest_oldest() -> None:
            nonlocal hashed
            slot = window.popleft()
            slot.ready.wait()
            if failed:
                raise failed[0]
            hasher.update(slot.view)
            hashed += len(slot.view)
            slot.release()
            if progress is not None:
                progress(len(slot.view))

        def submit(slot: _Slot, fn: Callable[..., _Stored], *args: object) -> None:
            fut = pool.submit(fn, *args)
            fut.add_done_callback(stored(slot))
            window.append(slot)
            futures.append(fut)

        def make_room() -> None:
            while len(window) >= window_max:
                digest_oldest()
            if failed:  # stop as soon as a write has failed
                raise failed[0]

        f = src.open()
        try:
            plan = plan_safetensors(f, src.size) if src.relpath.endswith(".safetensors") else None
            layout = plan[0] if plan is not None else None
            fd = _fileno(f) if plan is not None else None
            if plan is not None and fd is not None:
                prev = 0
                for cut in plan[1]:
                    make_room()
                    buf = buffers.take()
                    slot = _Slot(buffers, buf, memoryview(buf)[: cut - prev], filled=False)
                    submit(slot, self._read_and_store, fd, prev, slot)
                    prev = cut
            else:
                chunks = (
                    read_cuts(f, plan[1], buffers.take)
                    if plan is not None
                    else cdc_chunks(f, buffers.take)
                )
                while True:
                    make_room()
                    item = next(chunks, None)
                    if item is None:
                        break
                    slot = _Slot(buffers, item[0], item[1], filled=True)
                    submit(slot, self._store_chunk, slot.view)
            while window:
                digest_oldest()
            size_now = os.fstat(fd).st_size if fd is not None else hashed
            if hashed != src.size or size_now != src.size:
                raise FileChangedError(f"its size went from {src.size} to {size_now} bytes")
        except BaseException as exc:
            # Workers may still be reading this file by offset: let them finish before it closes,
            # so a descriptor number reused by a later open is never read in its place.
            for fut in futures:
                fut.cancel()
            wait(futures)
            if isinstance(exc, FileChangedError):
                raise SourceError(
                    f"{src.relpath!r} changed while being read: {exc}",
                    hint="register it again once it is no longer being written",
                ) from None
            raise
        finally:
            f.close()
        return hasher.hexdigest(), layout, futures
