"""A local cache of chunk ids known to exist in a remote store.

Dedup on an object store would otherwise cost one HEAD request per chunk per version. The cache
lives in ``$MODELKEEP_CACHE_DIR`` (default ``~/.cache/modelkeep``), is shared by every process on
the machine (SQLite in WAL mode) and only ever records ids that a store confirmed. It is an
optimisation, never a source of truth: a cold or deleted cache only costs requests. Entries are
keyed by the store's garbage-collection epoch (docs/format.md §13), so a collection that hides
chunks makes every machine's entries for that store unused, and writers re-check.
Local stores do not use it; a ``stat`` is as cheap as a cache lookup.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("MODELKEEP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "modelkeep"


def open_cache_db(path: Path, schema: str) -> sqlite3.Connection | None:
    """A cache file shared by the machine's processes (WAL mode), with *schema* created; None
    when it cannot be opened: a cache that cannot be written must never stop a command."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(schema)
        conn.commit()
    except (sqlite3.Error, OSError):
        return None
    return conn


class KnownChunks:
    """Chunk ids confirmed present in one store (keyed by the store's locator)."""

    def __init__(self, store_key: str, path: Path | None = None) -> None:
        self.store_key = store_key
        self.path = path or cache_dir() / "known-chunks.sqlite"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[str, str]] = []

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None:
            self._conn = open_cache_db(
                self.path, "CREATE TABLE IF NOT EXISTS known (store TEXT NOT NULL, "
                "id TEXT NOT NULL, PRIMARY KEY (store, id)) WITHOUT ROWID")
        return self._conn

    def contains(self, oid: str) -> bool:
        with self._lock:
            db = self._db()
            if db is None:
                return False
            row = db.execute(
                "SELECT 1 FROM known WHERE store = ? AND id = ?", (self.store_key, oid)
            ).fetchone()
            return row is not None

    def add(self, oid: str) -> None:
        with self._lock:
            self._pending.append((self.store_key, oid))
            if len(self._pending) >= 512:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        db = self._db()
        if db is not None:
            try:
                db.executemany("INSERT OR IGNORE INTO known VALUES (?, ?)", self._pending)
                db.commit()
            except sqlite3.Error:
                pass
        self._pending.clear()

    def forget_store(self) -> None:
        """Drop every id of this store (after a garbage collection, or when in doubt)."""
        with self._lock:
            self._pending.clear()
            db = self._db()
            if db is not None:
                db.execute("DELETE FROM known WHERE store = ?", (self.store_key,))
                db.commit()

    def retire_others(self, prefix: str) -> None:
        """Drop the ids of every key starting with *prefix* except this one: the entries a
        store's earlier garbage-collection epochs recorded."""
        with self._lock:
            db = self._db()
            if db is not None:
                try:
                    db.execute("DELETE FROM known WHERE store >= ? AND store < ? AND store != ?",
                               (prefix, prefix + "\uffff", self.store_key))
                    db.commit()
                except sqlite3.Error:
                    pass

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
