"""The shared read cache: verified files by content, versions as folders of hard links.

One cache per machine, in ``$MODELKEEP_CACHE_DIR/read`` (default ``~/.cache/modelkeep/read``),
shared by every process and every store::

    read/
      files/ab/<digest>[-x]   each file once, by its file digest (docs/format.md §5.3), 0444
      versions/<tree>/...     a version: hard links to files/, named by its tree digest (§5.5)
      chunks.sqlite           where each cached file's chunks are (a hint, always re-verified)
      tmp/<pid>-<random>      work in progress, never trusted

Why it can be trusted without locks:

- A file reaches ``files/`` only after every chunk was fetched and verified against its id, and
  then by ``link(2)`` from ``tmp/``, which never replaces: when two processes finish the same
  file, the second finds the first's and uses it, so the cache holds one copy.
- A version folder is built in ``tmp/`` and renamed into ``versions/`` when complete; a rename onto
  a folder another process already placed fails, and the loser uses the winner's. A folder under
  ``versions/`` is therefore always complete, and read-only (folders 0555, files 0444) so that an
  edit through a link cannot change the bytes everyone else loads.
- A file the cache lacks is assembled from chunks of cached files first (the unchanged tensors
  of a fine-tune's cached parent), each read checked against its chunk id; only the rest is
  downloaded.
- A process killed mid-fetch leaves only ``tmp/<pid>-…``, which the next fetch removes once that
  process is gone. Nothing under ``tmp/`` is ever read.

The cache holds plaintext, also of encrypted stores: ``read/`` is created 0700 (and tightened to
0700 when an encrypted store's version enters it). Reading without the cache is always possible
(:func:`modelkeep.fetch` with ``cache=False``, the store option ``read_cache = false``).

A file's key is its file digest, which in an encrypted store is keyed (docs/encryption.md): equal
bytes from two stores with different keys are cached twice, never confused. The executable bit is
part of the key, because hard links share one mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from modelkeep.store.cache import cache_dir
from modelkeep.store.objects import ObjectDB, pwrite_all
from modelkeep.store.snapshot import FileEntry, Snapshot, check_relpath

Progress = Callable[[int], None]
_FILES_AT_ONCE = 32


def read_cache_dir() -> Path:
    """Where the shared read cache lives (``$MODELKEEP_CACHE_DIR/read``)."""
    return cache_dir() / "read"


@dataclass(frozen=True)
class Fetched:
    """A version's folder in the cache, and what getting it cost."""

    path: Path
    downloaded_bytes: int  # raw bytes of the files fetched from the store for this call
    linked_bytes: int  # bytes of the version's files that were already in the cache


def file_key(entry: FileEntry) -> str:
    return entry.digest + ("-x" if entry.mode & 0o111 else "")


def _make_read_only(root: Path) -> None:
    """Folders 0555, bottom up (files are already 0444)."""
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o555)
    os.chmod(root, 0o555)


def remove_tree(path: Path) -> None:
    """Remove a folder of the cache, read-only folders included."""
    if not path.exists() and not path.is_symlink():
        return
    for dirpath, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReadCache:
    """The shared read cache at *root* (default :func:`read_cache_dir`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or read_cache_dir()
        self.files = self.root / "files"
        self.versions = self.root / "versions"
        self.tmp = self.root / "tmp"

    # -- layout ---------------------------------------------------------------------------------

    def ensure(self, *, private: bool = True) -> None:
        """Create the cache's folders; ``read/`` is 0700, and made 0700 again if *private*
        (an encrypted store's plaintext is about to enter it)."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            self.root.mkdir(mode=0o700)
        if private and stat.S_IMODE(self.root.stat().st_mode) & 0o077:
            os.chmod(self.root, 0o700)
        for sub in (self.files, self.versions, self.tmp):
            sub.mkdir(exist_ok=True)

    def file_path(self, entry: FileEntry) -> Path:
        key = file_key(entry)
        return self.files / key[:2] / key

    def cached_file(self, entry: FileEntry) -> Path | None:
        path = self.file_path(entry)
        return path if path.is_file() else None

    def version_path(self, snapshot: Snapshot) -> Path:
        return self.versions / snapshot.tree

    def cached_version(self, snapshot: Snapshot) -> Path | None:
        path = self.version_path(snapshot)
        if path.is_dir():
            with contextlib.suppress(OSError):
                os.utime(path)  # last use, for pruning least recently used first
            return path
        return None

    def _scratch(self) -> Path:
        return self.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def clean_stale(self) -> None:
        """Remove what killed fetches left in ``tmp/`` (their process is gone)."""
        try:
            entries = list(self.tmp.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and (int(pid_text) == os.getpid()
                                       or _pid_alive(int(pid_text))):
                continue
            remove_tree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)

    # -- fetching -------------------------------------------------------------------------------

    def fetch(
        self,
        db: ObjectDB,
        snapshot: Snapshot,
        *,
        private: bool = False,
        progress: Progress | None = None,
    ) -> Fetched:
        """The version's read-only folder in the cache, built from the store what is missing."""
        total = snapshot.size
        found = self.cached_version(snapshot)
        if found is not None:
            return Fetched(found, 0, total)
        self.ensure(private=private)
        self.clean_stale()
        downloaded = self._fill_files(db, snapshot, progress)
        return Fetched(self._place_version(snapshot), downloaded, total - downloaded)

    def _fill_files(self, db: ObjectDB, snapshot: Snapshot, progress: Progress | None) -> int:
        """Add to ``files/`` every file of *snapshot* the cache lacks, each chunk verified: read
        from a cached file that holds it (the unchanged tensors of a cached parent), else
        fetched from the store. The bytes fetched from the store."""
        missing: dict[str, FileEntry] = {}
        for entry in snapshot.files:
            if self.cached_file(entry) is None:
                missing.setdefault(file_key(entry), entry)
        if not missing:
            return 0
        scratch = self._scratch()
        scratch.mkdir()
        index = ChunkIndex(self.root / "chunks.sqlite")
        fetched = 0
        try:
            workers = 4 if db.location.is_local else 16
            items = list(missing.items())
            with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-fetch") as pool:
                # A bounded number of files open at once, each written by every worker.
                for start in range(0, len(items), _FILES_AT_ONCE):
                    batch = items[start:start + _FILES_AT_ONCE]
                    fetched += self._write_batch(db, index, batch, scratch, pool, progress)
            for key, entry in missing.items():
                src = scratch / key
                os.chmod(src, 0o555 if entry.mode & 0o111 else 0o444)
                final = self.file_path(entry)
                final.parent.mkdir(exist_ok=True)
                # Another process may have cached the same bytes first: theirs is used.
                with contextlib.suppress(FileExistsError):
                    os.link(src, final)
                index.add(key, entry)
        finally:
            index.close()
            remove_tree(scratch)
        return fetched

    def _write_batch(
        self,
        db: ObjectDB,
        index: ChunkIndex,
        batch: list[tuple[str, FileEntry]],
        scratch: Path,
        pool: ThreadPoolExecutor,
        progress: Progress | None,
    ) -> int:
        fds: list[int] = []
        futures: list[Future[int]] = []
        try:
            for key, entry in batch:
                fd = os.open(scratch / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                fds.append(fd)
                if entry.size:
                    os.ftruncate(fd, entry.size)
                for i, offset in enumerate(entry.chunk_offsets()):
                    cid, n = entry.chunks[i]
                    local = [(self.files / k[:2] / k, at) for k, at in index.where(cid, n)]
                    futures.append(pool.submit(_write_chunk, db, entry, i, offset, fd, local))
            fetched = 0
            for fut in futures:
                n = fut.result()
                fetched += n
                if progress is not None:
                    progress(n)
            return fetched
        except BaseException:
            for fut in futures:
                fut.cancel()
            wait(futures)
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def _place_version(self, snapshot: Snapshot) -> Path:
        final = self.version_path(snapshot)
        scratch = self._scratch()
        scratch.mkdir()
        try:
            for entry in snapshot.files:
                check_relpath(entry.path)
                target = scratch.joinpath(*entry.path.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(self.file_path(entry), target)
            _make_read_only(scratch)
            try:
                os.rename(scratch, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                    raise
                remove_tree(scratch)  # another process placed the same version first
        except BaseException:
            remove_tree(scratch)
            raise
        return final


def _write_chunk(
    db: ObjectDB, entry: FileEntry, index: int, offset: int, fd: int,
    local: list[tuple[Path, int]],
) -> int:
    """Chunk *index* of *entry* at *offset* of *fd*: from the first cached file whose bytes at
    the recorded offset hash to the chunk's id, else from the store. The bytes fetched."""
    from modelkeep.store.materialize import _fetch_into

    cid, n = entry.chunks[index]
    for path, at in local:
        try:
            with path.open("rb") as f:
                f.seek(at)
                data = f.read(n)
        except OSError:
            continue  # pruned meanwhile
        if len(data) == n and db.object_id(data) == cid:
            pwrite_all(fd, data, offset)
            return 0
    return _fetch_into(db, entry, index, offset, fd)


class ChunkIndex:
    """Where the chunks of cached files are: chunk id -> (file key, offset). Only a hint: every
    read through it is verified against the chunk's id, so a stale or damaged entry costs a
    download, never a wrong byte. Shared by processes (SQLite, WAL)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None
        try:
            self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS chunks (id TEXT NOT NULL, length INTEGER NOT NULL, "
                "file TEXT NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY (id, file)) "
                "WITHOUT ROWID")
            self._conn.commit()
        except sqlite3.Error:
            self._conn = None  # an unusable index only costs downloads

    def where(self, chunk_id: str, length: int) -> list[tuple[str, int]]:
        with self._lock:
            if self._conn is None:
                return []
            try:
                rows = self._conn.execute(
                    "SELECT file, offset FROM chunks WHERE id = ? AND length = ? LIMIT 4",
                    (chunk_id, length)).fetchall()
            except sqlite3.Error:
                return []
            return [(str(f), int(o)) for f, o in rows]

    def add(self, key: str, entry: FileEntry) -> None:
        rows = [(cid, n, key, at) for (cid, n), at in zip(entry.chunks, entry.chunk_offsets(),
                                                           strict=True)]
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)", rows)
                self._conn.commit()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link *src* at *dest*, or copy it where they are on different filesystems (the copy
    keeps *src*'s read-only mode). True if linked."""
    try:
        os.link(src, dest)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    shutil.copyfile(src, dest)
    os.chmod(dest, stat.S_IMODE(src.stat().st_mode))
    return False
