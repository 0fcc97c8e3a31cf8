"""The SQLite registry (MLflow's embedded default): reads from MLflow's own tables, writes through
MLflow's client.

Opening MLflow's client costs about 3 s of CPU (``import mlflow``, then its SQLAlchemy store
checking the schema), while the same question asked of the file with :mod:`sqlite3` takes
milliseconds. So every read here is a plain query on MLflow's tables, in one read transaction,
filtered exactly as MLflow's store filters them (the default workspace; versions not marked
``Deleted_Internal``). The queries are only trusted on a schema revision they were tested against
(``alembic_version``, :data:`TESTED_REVISIONS`); on any other revision, or with an MLflow
workspace selected, reads go through MLflow's client as before.

Writes always go through MLflow's client (:class:`~modelkeep.plugins.mlflow.registry.
MlflowRegistry`), which keeps MLflow's invariants: version numbers, timestamps, run links. The
first write to a file that does not exist yet creates MLflow's schema under an exclusive lock on
the folder, so concurrent first registers do not race inside MLflow's schema set-up.

A read never creates a registry: on a missing file, lookups say there is no registry there,
``models()`` is empty and ``latest()`` None (what a register asks before it creates the first
version), and :attr:`SqliteRegistry.exists` is False so ``modelkeep list`` can say so.
See docs/mlflow.md for the measurements behind this design.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from modelkeep.errors import NotFoundError, RegistryError
from modelkeep.plugins.mlflow._errors import not_found
from modelkeep.registry import RegistryModel, RegistryVersion

if TYPE_CHECKING:
    from modelkeep.plugins.mlflow.registry import MlflowRegistry

# Schema revisions of MLflow's tracking database whose registry tables these queries were tested
# against (tests/test_fast_registry.py compares every read with MlflowClient's). A new MLflow
# release that migrates the schema falls back to MLflow's client until it is added here.
TESTED_REVISIONS = frozenset({
    "dc11669786a5",  # mlflow 3.17 (workspace columns)
})
_DEFAULT_WORKSPACE = "default"
_DELETED = "Deleted_Internal"  # MLflow's mark on a deleted version (model_version_stages.py)


def sqlite_path(uri: str) -> Path | None:
    """The file a ``sqlite:///`` URI names, or None for an in-memory database."""
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if not rest.startswith("/") or rest == "/" or rest == "/:memory:":
        return None
    return Path(unquote(rest[1:]))


class SqliteRegistry:
    """A :class:`~modelkeep.registry.Registry` on an MLflow SQLite file."""

    def __init__(self, uri: str, path: Path) -> None:
        self.uri = uri
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._tested: bool | None = None
        self._writer: MlflowRegistry | None = None
        # One connection, one transaction at a time: callers read from thread pools (gc).
        self._lock = threading.RLock()

    # -- plumbing ------------------------------------------------------------------------------

    def _mlflow(self) -> MlflowRegistry:
        """MLflow's client on the same file, for writes and for schemas not tested here."""
        if self._writer is None:
            from modelkeep.plugins.mlflow.registry import MlflowRegistry

            if self._schema_revision() is None:
                with _folder_lock(self.path.parent):
                    writer = MlflowRegistry(self.uri)
                    # MLflow opens its store (creating the schema) on first use: use it here.
                    writer.models()
                    self._writer = writer
            else:
                self._writer = MlflowRegistry(self.uri)
        return self._writer

    @property
    def _client(self) -> Any:
        """MLflow's own ``MlflowClient`` on this file, as :class:`MlflowRegistry` has it, for
        what only MLflow does (tests use it to change the registry behind modelkeep's back)."""
        return self._mlflow()._client

    def _connect(self) -> sqlite3.Connection | None:
        """A read-only connection, or None when the file does not exist (nothing is created)."""
        with self._lock:
            return self._open()

    def _open(self) -> sqlite3.Connection | None:
        if self._conn is None:
            if not self.path.is_file():
                return None
            try:
                # mode=ro: a read must never create or change the file; autocommit so each read
                # runs in the one transaction _reading() opens.
                self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                             timeout=30, isolation_level=None,
                                             check_same_thread=False)
            except sqlite3.Error as exc:
                raise RegistryError(f"registry {self.uri} cannot be read: {exc}") from None
        return self._conn

    def _schema_revision(self) -> str | None:
        with self._lock:
            conn = self._open()
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            except sqlite3.DatabaseError:
                return None  # an empty file, or not MLflow's: MLflow's client decides
        return str(row[0]) if row else None

    def _fast(self) -> bool:
        """Whether reads may use the tables directly (the file exists, on a tested revision)."""
        if self._tested is None:
            if not self.path.is_file():
                return True  # nothing to read: the missing-registry answers below
            workspace = os.environ.get("MLFLOW_WORKSPACE")
            self._tested = (self._schema_revision() in TESTED_REVISIONS
                            and workspace in (None, "", _DEFAULT_WORKSPACE))
        return self._tested

    def _missing(self) -> bool:
        return self._writer is None and not self.path.is_file()

    def _no_registry(self) -> NotFoundError:
        return NotFoundError(f"there is no registry at {self.path} (no such file)",
                             hint="check --registry / MLFLOW_TRACKING_URI; the first "
                             "`modelkeep register` creates it")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connect()
            if conn is None:
                raise self._no_registry()
            try:
                # One read transaction: versions, tags and aliases from the same moment.
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise RegistryError(f"registry error reading {self.uri}: {exc}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- queries -------------------------------------------------------------------------------

    _VERSION_COLUMNS = "name, version, source, creation_time, description, run_id"

    def _versions(self, conn: sqlite3.Connection, name: str, where: str = "",
                  args: tuple[Any, ...] = ()) -> list[RegistryVersion]:
        rows = conn.execute(
            f"SELECT {self._VERSION_COLUMNS} FROM model_versions WHERE workspace = ? AND name = ? "
            f"AND (current_stage IS NULL OR current_stage != ?) {where} ORDER BY version",
            (_DEFAULT_WORKSPACE, name, _DELETED, *args)).fetchall()
        if not rows:
            return []
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in conn.execute(
                "SELECT version, key, value FROM model_version_tags "
                "WHERE workspace = ? AND name = ?",
                (_DEFAULT_WORKSPACE, name)):
            tags.setdefault(int(version), {})[key] = value if value is not None else ""
        aliases: dict[int, list[str]] = {}
        for version, alias in conn.execute(
                "SELECT version, alias FROM registered_model_aliases "
                "WHERE workspace = ? AND name = ?",
                (_DEFAULT_WORKSPACE, name)):
            aliases.setdefault(int(version), []).append(alias)
        return [
            RegistryVersion(
                name=row[0], version=int(row[1]), source=row[2] or "",
                tags=tags.get(int(row[1]), {}),
                aliases=tuple(sorted(aliases.get(int(row[1]), ()))),
                created_ms=int(row[3] or 0), description=row[4] or "", run_id=row[5] or None,
            )
            for row in rows
        ]

    @staticmethod
    def _model_exists(conn: sqlite3.Connection, name: str) -> bool:
        return conn.execute("SELECT 1 FROM registered_models WHERE workspace = ? AND name = ?",
                            (_DEFAULT_WORKSPACE, name)).fetchone() is not None

    # -- Registry protocol: reads --------------------------------------------------------------

    def get_version(self, name: str, version: int) -> RegistryVersion:
        if not self._fast():
            return self._mlflow().get_version(name, version)
        with self._reading() as conn:
            found = self._versions(conn, name, "AND version = ?", (int(version),))
        if not found:
            raise not_found(self.uri, f"version {name}@{version}")
        return found[0]

    def get_by_alias(self, name: str, alias: str) -> RegistryVersion:
        if not self._fast():
            return self._mlflow().get_by_alias(name, alias)
        with self._reading() as conn:
            row = conn.execute(
                "SELECT version FROM registered_model_aliases WHERE workspace = ? AND name = ? "
                "AND alias = ?", (_DEFAULT_WORKSPACE, name, alias)).fetchone()
            found = self._versions(conn, name, "AND version = ?", (int(row[0]),)) if row else []
        if not found:
            raise not_found(self.uri, f"alias {name}@{alias}")
        return found[0]

    def latest(self, name: str) -> RegistryVersion | None:
        if self._missing():
            return None
        if not self._fast():
            return self._mlflow().latest(name)
        with self._reading() as conn:
            row = conn.execute(
                "SELECT MAX(version) FROM model_versions WHERE workspace = ? AND name = ? "
                "AND (current_stage IS NULL OR current_stage != ?)",
                (_DEFAULT_WORKSPACE, name, _DELETED)).fetchone()
            if row is None or row[0] is None:
                return None
            found = self._versions(conn, name, "AND version = ?", (int(row[0]),))
        return found[0] if found else None

    def versions(self, name: str) -> list[RegistryVersion]:
        if not self._fast():
            return self._mlflow().versions(name)
        with self._reading() as conn:
            if not self._model_exists(conn, name):
                raise not_found(self.uri, f"model {name!r}")
            return self._versions(conn, name)

    @property
    def exists(self) -> bool:
        """Whether the registry file exists: an empty answer from a missing file means there
        is no registry there, not that it holds no models."""
        return not self._missing()

    def models(self) -> list[str]:
        if self._missing():
            return []
        if not self._fast():
            return self._mlflow().models()
        with self._reading() as conn:
            rows = conn.execute("SELECT name FROM registered_models WHERE workspace = ?",
                                (_DEFAULT_WORKSPACE,)).fetchall()
        return sorted(str(r[0]) for r in rows)

    def models_tagged(self, key: str, value: str) -> set[str]:
        """Names of the models with a version tagged *key* = *value*."""
        if not self._fast():
            return self._mlflow().models_tagged(key, value)
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT DISTINCT t.name FROM model_version_tags t JOIN model_versions v "
                "ON v.workspace = t.workspace AND v.name = t.name AND v.version = t.version "
                "WHERE t.workspace = ? AND t.key = ? AND t.value = ? "
                "AND (v.current_stage IS NULL OR v.current_stage != ?)",
                (_DEFAULT_WORKSPACE, key, value, _DELETED)).fetchall()
        return {str(r[0]) for r in rows}

    def get_model(self, name: str) -> RegistryModel:
        if not self._fast():
            return self._mlflow().get_model(name)
        with self._reading() as conn:
            row = conn.execute(
                "SELECT name, description FROM registered_models WHERE workspace = ? AND name = ?",
                (_DEFAULT_WORKSPACE, name)).fetchone()
            if row is None:
                raise not_found(self.uri, f"model {name!r}")
            tags = {k: v if v is not None else "" for k, v in conn.execute(
                "SELECT key, value FROM registered_model_tags WHERE workspace = ? AND name = ?",
                (_DEFAULT_WORKSPACE, name))}
            aliases = {a: int(v) for a, v in conn.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE workspace = ? "
                "AND name = ?", (_DEFAULT_WORKSPACE, name))}
        return RegistryModel(name=row[0], description=row[1] or "", tags=tags, aliases=aliases)

    # -- Registry protocol: writes, through MLflow's client -----------------------------------

    def create_version(
        self,
        name: str,
        source: str,
        *,
        tags: Mapping[str, str],
        description: str | None = None,
        run_id: str | None = None,
    ) -> RegistryVersion:
        return self._mlflow().create_version(name, source, tags=tags, description=description,
                                             run_id=run_id)

    def create_model(self, name: str) -> None:
        self._mlflow().create_model(name)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._mlflow().set_alias(name, alias, version)

    def delete_version(self, name: str, version: int) -> None:
        self._mlflow().delete_version(name, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self._mlflow().delete_alias(name, alias)

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._mlflow().set_tag(name, version, key, value)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._mlflow().set_model_tag(name, key, value)

    def set_description(self, name: str, version: int | None, text: str) -> None:
        self._mlflow().set_description(name, version, text)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on *folder* while MLflow creates its schema there: concurrent first
    writers would otherwise race inside MLflow's set-up (its migrations are not concurrent-safe).
    The lock is on the folder itself, so nothing is left beside the registry file."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; MLflow's own set-up as before
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
