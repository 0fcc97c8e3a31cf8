"""The shared read cache: verified files by content, versions as folders of hard links.

One cache per machine, in ``$MODELKEEP_CACHE_DIR/read`` (default ``~/.cache/modelkeep/read``),
shared by every process and every store::

    read/
      files/ab/<digest>[-x]   each file once, by its file digest (docs/format.md §5.3), 0444
      versions/<tree>/...     a version: hard links to files/, named by its tree digest (§5.5)
      tmp/<pid>-<random>      work in progress, never trusted

Why it can be trusted without locks:

- A file reaches ``files/`` only after every chunk was fetched and verified against its id, and
  then by ``link(2)`` from ``tmp/``, which never replaces: when two processes finish the same
  file, the second finds the first's and uses it, so the cache holds one copy.
- A version folder is built in ``tmp/`` and renamed into ``versions/`` when complete; a rename onto
  a folder another process already placed fails, and the loser uses the winner's. A folder under
  ``versions/`` is therefore always complete, and read-only (folders 0555, files 0444) so that an
  edit through a link cannot change the bytes everyone else loads.
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
import dataclasses
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelkeep.store.cache import cache_dir
from modelkeep.store.objects import ObjectDB
from modelkeep.store.snapshot import FileEntry, Snapshot, check_relpath

Progress = Callable[[int], None]


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
        """Fetch, verify and add to ``files/`` every file of *snapshot* the cache lacks; the
        raw bytes fetched."""
        from modelkeep.store.materialize import write_files

        missing: dict[str, FileEntry] = {}
        for entry in snapshot.files:
            if self.cached_file(entry) is None:
                missing.setdefault(file_key(entry), entry)
        if not missing:
            return 0
        scratch = self._scratch()
        scratch.mkdir()
        try:
            # Written under their keys, flat, by the same parallel, verifying writer as a pull.
            entries = tuple(dataclasses.replace(e, path=key) for key, e in missing.items())
            workers = 4 if db.location.is_local else 16
            write_files(db, entries, scratch, workers, progress)
            for key, entry in missing.items():
                src = scratch / key
                os.chmod(src, 0o555 if entry.mode & 0o111 else 0o444)
                final = self.file_path(entry)
                final.parent.mkdir(exist_ok=True)
                # Another process may have cached the same bytes first: theirs is used.
                with contextlib.suppress(FileExistsError):
                    os.link(src, final)
        finally:
            remove_tree(scratch)
        return sum(e.size for e in missing.values())

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
