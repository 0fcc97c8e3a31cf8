"""Reading versions back: whole folders (pull) and lazy, seekable single files.

A pull writes into a private sibling folder of the destination and renames it into place only when
every chunk of every file has been fetched and verified, so a failed pull (integrity error, lost
connection, full disk) leaves nothing at the destination. Paths come from a snapshot that has been
validated (:func:`snapshot.check_relpath`); they are still checked against the folder they land in,
as defence in depth.

Every chunk is verified against its id before the pull succeeds. From a local store without
encryption a chunk streams into its file through a small buffer that is hashed on the way
(:meth:`ObjectDB.copy_chunk_into`); otherwise the object is fetched, checked and written out.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import io
import os
import shutil
import socket
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from modelkeep.errors import DestinationExistsError, Hint, IntegrityError, Option, UnsafePathError
from modelkeep.store.codec import Kind
from modelkeep.store.objects import local_workers, preallocate, pwrite_all
from modelkeep.store.snapshot import FileEntry, check_relpath

if TYPE_CHECKING:
    from modelkeep.store.objects import ObjectDB
    from modelkeep.store.snapshot import Snapshot

Progress = Callable[[int], None]
Place = Callable[[FileEntry, Path], bool]
_MAX_OPEN_FILES = 32


# Chunks of a file asked for ahead of the one being fetched (a local store only), so that two
# workers keep the disk as busy as four did: pulling 0.5 GiB of bf16 from a store that was not
# in the page cache took 0.64-0.95 s with it, 0.90-1.22 s without and 0.76-0.93 s with four
# workers (three runs each, on a loaded machine).
_PREFETCH = 4


def _fetch_into(db: ObjectDB, entry: FileEntry, index: int, offset: int, fd: int) -> int:
    """Fetch and verify chunk *index* of *entry* and write it at *offset* of *fd*."""
    # Workers take chunks in order: the first asks for the next few, each later one for the
    # chunk that many after it, which keeps reads that far ahead of the workers.
    ahead = range(1, _PREFETCH + 1) if index == 0 else [index + _PREFETCH]
    for later in ahead:
        if later < len(entry.chunks):
            db.prefetch(Kind.CHUNK, entry.chunks[later][0])
    cid, n = entry.chunks[index]
    what = f"chunk {index} ({cid[:12]}) of {entry.path}"
    if db.copy_chunk_into(cid, n, fd, offset, what):  # a local, plain store
        return n
    # Written out before this thread fetches again, so a reused decryption buffer is safe.
    data = db.get(Kind.CHUNK, cid, what, transient=True)
    if len(data) != n:
        raise IntegrityError(
            f"chunk {index} of {entry.path} has {len(data)} bytes, its snapshot says {n}"
        )
    pwrite_all(fd, data, offset)
    return n


def _target(root: Path, relpath: str) -> Path:
    check_relpath(relpath)
    target = root.joinpath(*relpath.split("/"))
    # Defence in depth: even a validated path must resolve inside the folder being written.
    if not target.resolve().is_relative_to(root.resolve()):
        raise UnsafePathError(f"path {relpath!r} would be written outside {str(root)!r}")
    return target


def safe_join(root: Path, relpath: str) -> Path:
    """*root*/*relpath* for writing into a folder that already holds files, refused when a
    folder on the way is a symbolic link: writing through it could land anywhere on the
    machine. (The last component may be a link: files are replaced, never written through.)"""
    check_relpath(relpath)
    parts = relpath.split("/")
    current = root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(
                f"cannot write {relpath!r}: {str(current)!r} is a symbolic link",
                hint="modelkeep never writes through links; remove it or use another folder")
    return current / parts[-1]


def materialize(
    db: ObjectDB,
    snapshot: Snapshot,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    place: Place | None = None,
) -> Path:
    """Write every file of *snapshot* under *dest*, atomically as a folder. *place*, when
    given, may put a file there itself (from a local copy of its bytes) and return True."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink():
            raise DestinationExistsError(
                f"destination {str(dest)!r} exists and is not a folder",
                hint="choose another destination",
            )
        if any(dest.iterdir()) and not overwrite:
            raise DestinationExistsError(
                f"destination {str(dest)!r} is not empty",
                hint=Hint("choose an empty or new folder, or pass {overwrite} to replace it",
                          overwrite=Option(api="overwrite=True", cli="--force")),
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dest)
    staging = dest.parent / (f".{dest.name}{PARTIAL}{socket.gethostname()}-{os.getpid()}-"
                             f"{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    workers = workers or (local_workers() if db.location.is_local else 16)
    try:
        write_files(db, snapshot.files, staging, workers, progress, place)
        if dest.exists():
            retired = dest.parent / f".{dest.name}.modelkeep-old-{uuid.uuid4().hex[:8]}"
            dest.rename(retired)
            staging.rename(dest)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


PARTIAL = ".modelkeep-partial-"


def remove_stale_staging(dest: Path) -> list[Path]:
    """Remove the staging folders a killed pull to *dest* left beside it
    (``.<dest>.modelkeep-partial-<host>-<pid>-<random>``): those of this host whose process is
    gone. A pull still running, or one from another machine sharing the folder, is left alone.
    Returns what was removed."""
    host = socket.gethostname()
    removed: list[Path] = []
    try:
        siblings = list(dest.parent.glob(f".{glob.escape(dest.name)}{PARTIAL}*"))
    except OSError:
        return removed
    for path in siblings:
        rest = path.name[len(f".{dest.name}{PARTIAL}"):]
        owner, _, tail = rest.rpartition("-")  # <host>-<pid>, <random>
        owner_host, _, pid = owner.rpartition("-")
        if owner_host != host or not pid.isdigit() or not tail or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def write_files(
    db: ObjectDB,
    files: Sequence[FileEntry],
    root: Path,
    workers: int,
    progress: Progress | None,
    place: Place | None = None,
) -> None:
    """Write every file of *files* under *root* (but those *place* puts there itself). Each
    worker fetches, verifies and writes its own chunk at its offset, so fetching, hashing and
    writing run on every core; a bounded number of files is open at once."""
    open_files: deque[tuple[FileEntry, Path, int, list[Future[int]]]] = deque()

    def finish_oldest() -> None:
        entry, target, fd, futures = open_files[0]
        for fut in futures:
            n = fut.result()
            if progress is not None:
                progress(n)
        open_files.popleft()
        os.close(fd)
        os.chmod(target, entry.mode)

    with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-get") as pool:
        try:
            for entry in files:
                target = _target(root, entry.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                if place is not None and place(entry, target):
                    if progress is not None:
                        progress(entry.size)
                    continue
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                # Sized once up front (allocated, where the filesystem can): workers then
                # write inside the file, out of order, instead of each write past the end
                # growing it under the inode lock.
                if entry.size and not preallocate(fd, entry.size):
                    os.ftruncate(fd, entry.size)
                futures: list[Future[int]] = []
                open_files.append((entry, target, fd, futures))
                for index, offset in enumerate(entry.chunk_offsets()):
                    futures.append(pool.submit(_fetch_into, db, entry, index, offset, fd))
                while len(open_files) > _MAX_OPEN_FILES:
                    finish_oldest()
            while open_files:
                finish_oldest()
        except BaseException:
            # Stop queued fetches and let running ones finish before their files close, so no
            # worker ever writes to a descriptor number that a later open has reused.
            pending = [fut for _e, _t, _fd, futs in open_files for fut in futs]
            for fut in pending:
                fut.cancel()
            wait(pending)
            for _entry, _target_path, fd, _futures in open_files:
                os.close(fd)
            raise


class SnapshotFile(io.RawIOBase):
    """A read-only, seekable view of one file of a version that fetches only the chunks it reads.

    Recently read chunks are kept (a handful, bounded) so sequential small reads do not refetch.
    """

    def __init__(self, db: ObjectDB, entry: FileEntry, cache_chunks: int = 4) -> None:
        super().__init__()
        self._db = db
        self.entry = entry
        self.name = entry.path
        self._offsets = entry.chunk_offsets()
        self._pos = 0
        self._cache: OrderedDict[int, memoryview] = OrderedDict()
        self._cache_size = max(1, cache_chunks)
        self.chunks_fetched = 0
        self.bytes_fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.entry.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _chunk(self, index: int) -> memoryview:
        data = self._cache.get(index)
        if data is not None:
            self._cache.move_to_end(index)
            return data
        cid, n = self.entry.chunks[index]
        data = self._db.get(Kind.CHUNK, cid, f"chunk {index} ({cid[:12]}) of {self.entry.path}")
        if len(data) != n:
            raise IntegrityError(f"chunk {index} of {self.entry.path} has {len(data)} bytes, "
                                 f"its snapshot says {n}")
        self.chunks_fetched += 1
        self.bytes_fetched += len(data)
        self._cache[index] = data
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed file")
        out = memoryview(buffer).cast("B")
        want = min(len(out), max(0, self.entry.size - self._pos))
        done = 0
        while done < want:
            index = bisect.bisect_right(self._offsets, self._pos) - 1
            data = self._chunk(index)
            start = self._pos - self._offsets[index]
            n = min(want - done, len(data) - start)
            out[done : done + n] = data[start : start + n]
            done += n
            self._pos += n
        return done

    def readall(self) -> bytes:
        parts = []
        while True:
            block = self.read(8 << 20)
            if not block:
                break
            parts.append(block)
        return b"".join(parts)

    def close(self) -> None:
        self._cache.clear()
        with contextlib.suppress(Exception):
            super().close()
