"""A local cache of files already stored, so registering an unchanged folder reads nothing.

Registering again what was registered (a pipeline re-run, a ``post-checkout`` hook, a training
script that registers its output folder each epoch) would otherwise read and hash every byte: a
second per GiB on a quiet machine. Like git's index and DVC's state database, the cache remembers,
per store, a file's identity on disk (device, inode, size, modification and change times in
nanoseconds) with the entry its bytes became (chunk ids, digest, tensor map); a file whose
identity matches is not read, provided the store still holds every chunk (the same existence
check a read chunk gets, so a collection since is noticed) and none is known damaged.

Why this is safe enough to be on by default: the change time (``st_ctime``) is set by the kernel
on every write and cannot be set by a program, so a file rewritten in place with its old
modification time restored still misses. An entry is recorded only for a file whose times are
older than the moment its reading started by more than :data:`RACY_SECONDS`, and whose identity
did not change while it was read, so a write landing within the filesystem's timestamp
granularity of the read is never cached (git's "racily clean" rule). ``MODELKEEP_FILE_STATES=off``
turns it off; so does anything that makes the cache unusable (read-only home, a damaged file).

It lives beside the known-chunk cache, ``file-states.sqlite`` in ``$MODELKEEP_CACHE_DIR``
(docs/format.md §11): not part of the format, consulted by no reader, deleting it costs one
read of each file. Entries are keyed by the store (its cache key and id scheme, so an encrypted
store's keyed ids never mix with another's) and the file's real path.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from modelkeep.store.cache import cache_dir, open_cache_db

RACY_SECONDS = 2.0
ENV = "MODELKEEP_FILE_STATES"


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("off", "0", "false", "no")


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What tells a file's content has not changed without reading it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result, read_started_ns: int) -> bool:
    """True if no write can have landed within the timestamps' granularity of the read."""
    limit = read_started_ns - int(RACY_SECONDS * 1e9)
    return st.st_mtime_ns < limit and st.st_ctime_ns < limit


class FileStates:
    """Stored files of one store, by real path and identity on disk."""

    def __init__(self, store_key: str, path: Path | None = None) -> None:
        self.store_key = store_key
        self.path = path or cache_dir() / "file-states.sqlite"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._broken = False

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._broken:
            self._conn = open_cache_db(
                self.path, "CREATE TABLE IF NOT EXISTS files (store TEXT NOT NULL, "
                "path TEXT NOT NULL, identity TEXT NOT NULL, entry TEXT NOT NULL, "
                "recorded REAL NOT NULL, PRIMARY KEY (store, path)) WITHOUT ROWID")
            # An unusable cache is not asked again: every file is read instead.
            self._broken = self._conn is None
        return self._conn

    def lookup(self, path: str, st: os.stat_result) -> dict[str, Any] | None:
        """The entry recorded for the file at *path* if its identity is still *st*'s."""
        with self._lock:
            db = self._db()
            if db is None:
                return None
            try:
                row = db.execute("SELECT identity, entry FROM files WHERE store = ? AND path = ?",
                                 (self.store_key, path)).fetchone()
            except sqlite3.Error:
                return None
        if row is None or row[0] != json.dumps(identity(st)):
            return None
        try:
            entry = json.loads(row[1])
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def record(self, path: str, st: os.stat_result, entry: dict[str, Any]) -> None:
        """Remember that the file at *path*, with identity *st*, is stored as *entry*."""
        with self._lock:
            db = self._db()
            if db is None:
                return
            try:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                           (self.store_key, path, json.dumps(identity(st)),
                            json.dumps(entry, separators=(",", ":")), time.time()))
                db.commit()
            except sqlite3.Error:
                pass  # a full or locked cache costs the next register a read, nothing else

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
