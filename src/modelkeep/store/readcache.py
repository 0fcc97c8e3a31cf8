"""The shared read cache: verified files by content, versions as folders of hard links.

One cache per machine, in ``$MODELKEEP_CACHE_DIR/read`` (default ``~/.cache/modelkeep/read``),
shared by every process and every store::

    read/
      files/ab/<digest>[-x]   each file once, by its file digest (docs/format.md §5.3), 0444
      versions/<tree>/...     a version: hard links to files/, named by its tree digest (§5.5)
      index.sqlite            where cached files' chunks are (a hint, re-verified), names seen
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
from typing import TYPE_CHECKING

from modelkeep.store.cache import cache_dir
from modelkeep.store.objects import pwrite_all
from modelkeep.store.snapshot import check_relpath

if TYPE_CHECKING:
    from modelkeep.store.objects import ObjectDB
    from modelkeep.store.snapshot import FileEntry, Snapshot

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


@dataclass(frozen=True)
class CachedVersion:
    """One version folder in the cache."""

    tree: str
    path: Path
    refs: tuple[str, ...]  # NAME@VERSION under which it was fetched
    files: int
    size: int
    last_used: float  # seconds since the epoch

    def to_json(self) -> dict[str, object]:
        from datetime import UTC, datetime

        used = datetime.fromtimestamp(self.last_used, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"tree": self.tree, "path": str(self.path), "refs": list(self.refs),
                "files": self.files, "size": self.size, "last_used": used}


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[CachedVersion, ...]
    files_removed: int
    bytes_freed: int

    def to_json(self) -> dict[str, object]:
        return {"removed": [v.to_json() for v in self.removed],
                "files_removed": self.files_removed, "bytes_freed": self.bytes_freed}


@dataclass(frozen=True)
class VerifyCacheReport:
    checked: int
    skipped: int  # files of encrypted stores: their keyed ids need the store's key
    bad: tuple[str, ...]  # file keys dropped
    versions_dropped: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "checked": self.checked, "skipped": self.skipped,
                "bad": list(self.bad), "versions_dropped": list(self.versions_dropped)}


# Folders a fetch returned in this process: a prune here never removes them from under the caller.
_returned: set[Path] = set()


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
        ref: str | None = None,
    ) -> Fetched:
        """The version's read-only folder in the cache, built from the store what is missing;
        *ref* (``NAME@VERSION``) is remembered for ``cache ls``."""
        total = snapshot.size
        found = self.cached_version(snapshot)
        if found is not None:
            _returned.add(found)
            return Fetched(found, 0, total)
        self.ensure(private=private)
        self.clean_stale()
        downloaded = 0
        for attempt in range(3):
            downloaded += self._fill_files(db, snapshot, progress)
            try:
                folder = self._place_version(snapshot)
                break
            except FileNotFoundError:
                # A prune removed a cached file between filling and linking: fill again.
                if attempt == 2:
                    raise
        if ref is not None:
            index = ChunkIndex(self.root / "index.sqlite")
            index.add_ref(snapshot.tree, ref)
            index.close()
        _returned.add(folder)
        return Fetched(folder, downloaded, max(0, total - downloaded))

    # -- housekeeping ---------------------------------------------------------------------------

    def entries(self) -> list[CachedVersion]:
        """Every version folder held, least recently used first."""
        if not self.versions.is_dir():
            return []
        index = ChunkIndex(self.root / "index.sqlite")
        refs = index.refs()
        index.close()
        out = []
        for folder in self.versions.iterdir():
            try:
                files = [p for p in folder.rglob("*") if p.is_file()]
                size = sum(p.stat().st_size for p in files)
                used = folder.stat().st_mtime
            except OSError:
                continue  # removed meanwhile
            out.append(CachedVersion(folder.name, folder, tuple(refs.get(folder.name, ())),
                                     len(files), size, used))
        return sorted(out, key=lambda v: v.last_used)

    def size(self) -> int:
        """Bytes held in ``files/`` (each file once)."""
        if not self.files.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.files.rglob("*") if p.is_file())

    def prune(
        self, *, max_size: int | None = None, older_than: float | None = None,
        everything: bool = False, now: float | None = None,
    ) -> PruneReport:
        """Remove version folders, least recently used first: all (*everything*), those unused
        for *older_than* seconds, then more until ``files/`` holds at most *max_size* bytes;
        then every file no folder links. A folder a fetch returned in this process is kept."""
        import time

        now = time.time() if now is None else now
        removed: list[CachedVersion] = []
        for version in self.entries():
            if version.path in _returned:
                continue
            due = everything or (older_than is not None and now - version.last_used > older_than)
            if not due and max_size is not None:
                due = self.size() > max_size
            if not due:
                continue
            # Out of versions/ in one rename, so a fetch sees the folder whole or not at all.
            aside = self._scratch()
            self.tmp.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(version.path, aside)
            except OSError:
                continue
            remove_tree(aside)
            removed.append(version)
        freed, keys = self._drop_unlinked()
        index = ChunkIndex(self.root / "index.sqlite")
        index.forget(keys, [v.tree for v in removed])
        index.close()
        return PruneReport(tuple(removed), len(keys), freed)

    def _drop_unlinked(self) -> tuple[int, list[str]]:
        freed, keys = 0, []
        if not self.files.is_dir():
            return 0, []
        for path in self.files.rglob("*"):
            try:
                st = path.lstat()
            except OSError:
                continue
            # Linked by no version folder (nor a linked pull): nothing uses these bytes.
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                path.unlink(missing_ok=True)
                freed += st.st_size
                keys.append(path.name)
        return freed, keys

    def verify(self) -> VerifyCacheReport:
        """Re-hash every cached file against its chunk ids; drop a bad file and every version
        folder that links it. Files of encrypted stores (keyed ids) are skipped."""
        if not self.files.is_dir():
            return VerifyCacheReport(0, 0, (), ())
        from modelkeep.store.hashing import content_id

        index = ChunkIndex(self.root / "index.sqlite")
        checked, skipped, bad = 0, 0, []
        try:
            for path in sorted(p for p in self.files.rglob("*") if p.is_file()):
                known = index.chunks_of(path.name)
                if known is None or not known[0]:
                    skipped += 1
                    continue
                checked += 1
                ok = sum(n for _i, _o, n in known[1]) == path.stat().st_size
                with path.open("rb") as f:
                    for cid, offset, n in known[1]:
                        if not ok:
                            break
                        f.seek(offset)
                        ok = content_id(f.read(n)) == cid
                if not ok:
                    bad.append(path)
            dropped = self._drop_versions_linking({p.stat().st_ino for p in bad})
            for path in bad:
                path.chmod(0o644)
                path.unlink(missing_ok=True)
            index.forget([p.name for p in bad], list(dropped))
        finally:
            index.close()
        return VerifyCacheReport(checked, skipped, tuple(p.name for p in bad), tuple(dropped))

    def _drop_versions_linking(self, inodes: set[int]) -> list[str]:
        dropped: list[str] = []
        if not inodes or not self.versions.is_dir():
            return dropped
        for folder in list(self.versions.iterdir()):
            if any(p.stat().st_ino in inodes for p in folder.rglob("*") if p.is_file()):
                aside = self._scratch()
                os.rename(folder, aside)
                remove_tree(aside)
                dropped.append(folder.name)
        return dropped

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
        index = ChunkIndex(self.root / "index.sqlite")
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
                index.add(key, entry, plain=db.cipher is None)
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
                # A copy where the filesystem has no hard links (some network and FUSE mounts).
                link_or_copy(self.file_path(entry), target)
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
            self._conn.execute("CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, "
                               "plain INTEGER NOT NULL) WITHOUT ROWID")
            self._conn.execute("CREATE TABLE IF NOT EXISTS refs (tree TEXT NOT NULL, "
                               "ref TEXT NOT NULL, PRIMARY KEY (tree, ref)) WITHOUT ROWID")
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

    def add(self, key: str, entry: FileEntry, *, plain: bool) -> None:
        rows = [(cid, n, key, at) for (cid, n), at in zip(entry.chunks, entry.chunk_offsets(),
                                                           strict=True)]
        self._run(lambda c: (
            c.executemany("INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)", rows),
            c.execute("INSERT OR IGNORE INTO files VALUES (?, ?)", (key, int(plain)))))

    def add_ref(self, tree: str, ref: str) -> None:
        self._run(lambda c: c.execute("INSERT OR IGNORE INTO refs VALUES (?, ?)", (tree, ref)))

    def forget(self, keys: list[str], trees: list[str]) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM chunks WHERE file = ?", [(k,) for k in keys])
            c.executemany("DELETE FROM files WHERE key = ?", [(k,) for k in keys])
            c.executemany("DELETE FROM refs WHERE tree = ?", [(t,) for t in trees])
        self._run(run)

    def refs(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    for tree, ref in self._conn.execute("SELECT tree, ref FROM refs ORDER BY ref"):
                        out.setdefault(str(tree), []).append(str(ref))
        return out

    def chunks_of(self, key: str) -> tuple[bool, list[tuple[str, int, int]]] | None:
        """Whether *key*'s chunk ids are plain BLAKE3, and its (id, offset, length) in order;
        None if the index does not know the file."""
        with self._lock:
            if self._conn is None:
                return None
            try:
                row = self._conn.execute("SELECT plain FROM files WHERE key = ?",
                                         (key,)).fetchone()
                rows = self._conn.execute(
                    "SELECT id, offset, length FROM chunks WHERE file = ? ORDER BY offset",
                    (key,)).fetchall()
            except sqlite3.Error:
                return None
        if row is None:
            return None
        return bool(row[0]), [(str(i), int(o), int(n)) for i, o, n in rows]

    def _run(self, work: Callable[[sqlite3.Connection], object]) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                work(self._conn)
                self._conn.commit()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link *src* at *dest*, or copy it where they are on different filesystems (the copy,
    a reflink where it can be, keeps *src*'s read-only mode). True if linked."""
    try:
        os.link(src, dest)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    clone_or_copy(src, dest)
    os.chmod(dest, stat.S_IMODE(src.stat().st_mode))
    return False


def clone_or_copy(src: Path, dest: Path) -> bool:
    """A file of its own at *dest* with *src*'s bytes: a reflink (a copy-on-write clone, made
    in a fraction of a millisecond whatever the size, sharing the blocks until either is
    written) where the filesystem offers them (btrfs, XFS, APFS, ReFS), else a byte copy. True
    if cloned. ``reflink-copy`` does the cloning on each system (bench/clones.py measured it);
    the mode is not copied."""
    try:
        from reflink_copy import reflink
    except ImportError:  # an install without it: copies, as before
        pass
    else:
        try:
            reflink(src, dest)
            return True
        except OSError:
            # Not offered here (ext4, tmpfs, across filesystems): a clone that failed may have
            # left an empty file, which the copy replaces. A missing *src* fails the copy too.
            pass
    shutil.copyfile(src, dest)
    return False
