"""The SQLite registry (MLflow's embedded default), spoken to through MLflow's own tables.

Opening MLflow's client costs about 3 s of CPU (``import mlflow``, then its SQLAlchemy store
checking the schema), while the same question asked of the file with :mod:`sqlite3` takes
milliseconds. So every read here is a plain query on MLflow's tables, in one read transaction,
filtered exactly as MLflow's store filters them (the default workspace; versions not marked
``Deleted_Internal``). The queries are only trusted on a schema revision they were tested against
(``alembic_version``, :data:`TESTED_REVISIONS`); on any other revision, or with an MLflow
workspace selected, reads go through MLflow's client as before.

Every write of the protocol (``create_version``, ``create_model``, ``set_alias``, ``set_tag``,
``set_model_tag``, ``set_description``, ``delete_version``, ``delete_alias``) is the rows MLflow's
``SqlAlchemyStore`` writes, checked by MLflow's rules first, in one ``BEGIN IMMEDIATE``
transaction: the write lock is taken before the next version number is read, so concurrent
registers queue instead of racing. A new version's ``user_id`` (MLflow's "Created by") is its
author, which MLflow's own store never fills. A deleted version is marked and redacted as MLflow
marks it, and the aliases on it go with it. Every write on an untested revision goes through
MLflow's client (:class:`~modelkeep.plugins.mlflow.registry.MlflowRegistry`). A file that does
not exist yet is created from the schema script shipped for the installed MLflow's schema
revision (:mod:`modelkeep.plugins.mlflow.sqlite_schema`), or where there is none by MLflow's
client (its schema, its migrations); either under an exclusive lock on the folder, so concurrent
first registers neither race inside MLflow's schema set-up nor build the file twice.

A read never creates a registry: on a missing file, lookups say there is no registry there,
``models()`` is empty and ``latest()`` None (what a register asks before it creates the first
version), and :attr:`SqliteRegistry.exists` is False so ``modelkeep list`` can say so.
See docs/mlflow.md for the measurements behind this design.
"""

from __future__ import annotations

import os
import posixpath
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from modelkeep.errors import REGISTRY, Hint, NotFoundError, RegistryError
from modelkeep.plugins.mlflow._errors import active_run_id, not_found
from modelkeep.plugins.mlflow.sqlite_schema import create as create_natively
from modelkeep.plugins.mlflow.sqlite_schema import folder_lock
from modelkeep.registry import RegistryModel, RegistryVersion

if TYPE_CHECKING:
    from modelkeep.plugins.mlflow.registry import MlflowRegistry

# Schema revisions of MLflow's tracking database whose registry tables these queries were tested
# against (tests/test_fast_registry.py compares every read with MlflowClient's). A new MLflow
# release that migrates the schema falls back to MLflow's client until it is added here.
# Later revisions are added only when their migrations leave the registry tables untouched
# (read in mlflow/store/db_migrations/versions/).
TESTED_REVISIONS = frozenset({
    "dc11669786a5",  # mlflow 3.17 (workspace columns)
    # mlflow-skinny 3.18, which a client-only install resolves to: skill tables (e7d1f4b2a9c6),
    # issue columns (8b6ad64cb8f5), MCP version keys (f4a9b2c7d1e6); no registry table changes.
    "e7d1f4b2a9c6", "8b6ad64cb8f5", "f4a9b2c7d1e6",
})
_DEFAULT_WORKSPACE = "default"
_DELETED = "Deleted_Internal"  # MLflow's mark on a deleted version (model_version_stages.py)
# What SqlAlchemyStore.delete_model_version writes over a deleted version's fields.
_REDACTED_SOURCE = "REDACTED-SOURCE-PATH"
_REDACTED_RUN_ID = "REDACTED-RUN-ID"
_REDACTED_RUN_LINK = "REDACTED-RUN-LINK"
_PROMPT_TAG = "mlflow.prompt.is_prompt"  # mlflow/prompt/constants.py IS_PROMPT_TAG_KEY


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
        self._wconn: sqlite3.Connection | None = None
        # One connection, one transaction at a time: callers read from thread pools (gc).
        self._lock = threading.RLock()

    # -- plumbing ------------------------------------------------------------------------------

    def _mlflow(self) -> MlflowRegistry:
        """MLflow's client on the same file, for writes and for schemas not tested here."""
        if self._writer is None:
            from modelkeep.plugins.mlflow.registry import MlflowRegistry

            if self._schema_revision() is None:
                with folder_lock(self.path.parent):
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
            revision = self._schema_revision()
            if revision is None:
                return False  # empty, being created, or not MLflow's: MLflow decides, this time
            workspace = os.environ.get("MLFLOW_WORKSPACE")
            self._tested = (revision in TESTED_REVISIONS
                            and workspace in (None, "", _DEFAULT_WORKSPACE))
        return self._tested

    def _missing(self) -> bool:
        return self._writer is None and not self.path.is_file()

    def _no_registry(self) -> NotFoundError:
        return NotFoundError(f"there is no registry at {self.uri}",
                             hint=Hint("check {registry} / MLFLOW_TRACKING_URI; the first "
                                       "`modelkeep register` creates it", registry=REGISTRY))

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
        for conn in (self._conn, self._wconn):
            if conn is not None:
                conn.close()
        self._conn = self._wconn = None

    # -- queries -------------------------------------------------------------------------------

    _VERSION_COLUMNS = "name, version, source, creation_time, description, run_id"

    def _versions(self, conn: sqlite3.Connection, name: str, where: str = "",
                  args: tuple[Any, ...] = (), *, aliases: bool = True) -> list[RegistryVersion]:
        rows = conn.execute(
            f"SELECT {self._VERSION_COLUMNS} FROM model_versions WHERE workspace = ? AND name = ? "
            f"AND (current_stage IS NULL OR current_stage != ?) {where} ORDER BY version",
            (_DEFAULT_WORKSPACE, name, _DELETED, *args)).fetchall()
        if not rows:
            return []
        # *where* names only `version`, which the tag and alias tables have too: one version's
        # look-up reads its own tags, not the model's thousands.
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in conn.execute(
                "SELECT version, key, value FROM model_version_tags "
                f"WHERE workspace = ? AND name = ? {where}",
                (_DEFAULT_WORKSPACE, name, *args)):
            tags.setdefault(int(version), {})[key] = value if value is not None else ""
        by_version: dict[int, list[str]] = {}
        for version, alias in conn.execute(
                "SELECT version, alias FROM registered_model_aliases "
                f"WHERE workspace = ? AND name = ? {where}",
                (_DEFAULT_WORKSPACE, name, *args)) if aliases else ():
            by_version.setdefault(int(version), []).append(alias)
        return [
            RegistryVersion(
                name=row[0], version=int(row[1]), source=row[2] or "",
                tags=tags.get(int(row[1]), {}),
                aliases=tuple(sorted(by_version.get(int(row[1]), ()))),
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
        return self._latest(name, aliases=True)

    def latest_without_aliases(self, name: str) -> RegistryVersion | None:
        """:meth:`latest` without reading its aliases: a query fewer."""
        return self._latest(name, aliases=False)

    def _latest(self, name: str, *, aliases: bool) -> RegistryVersion | None:
        if self._missing():
            return None
        if not self._fast():
            writer = self._mlflow()
            return writer.latest(name) if aliases else writer.latest_without_aliases(name)
        with self._reading() as conn:
            row = conn.execute(
                "SELECT MAX(version) FROM model_versions WHERE workspace = ? AND name = ? "
                "AND (current_stage IS NULL OR current_stage != ?)",
                (_DEFAULT_WORKSPACE, name, _DELETED)).fetchone()
            if row is None or row[0] is None:
                return None
            found = self._versions(conn, name, "AND version = ?", (int(row[0]),),
                                   aliases=aliases)
        return found[0] if found else None

    def versions(self, name: str) -> list[RegistryVersion]:
        if not self._fast():
            return self._mlflow().versions(name)
        with self._reading() as conn:
            if not self._model_exists(conn, name):
                raise not_found(self.uri, f"model {name!r}")
            return self._versions(conn, name)

    def versions_by_snapshot(self, name: str, prefix: str) -> list[RegistryVersion]:
        """The versions of *name* whose source has ``/@`` then *prefix* in it, with their tags
        and aliases, found by one LIKE on the versions' sources (SQLite's LIKE ignores ASCII
        case: the caller checks each source)."""
        if not self._fast():
            return self._mlflow().versions_by_snapshot(name, prefix)
        pattern = "%/@" + re.sub(r"([\\%_])", r"\\\1", prefix) + "%"
        with self._reading() as conn:
            if not self._model_exists(conn, name):
                raise not_found(self.uri, f"model {name!r}")
            # *where* names only `version` (see _versions): the sources are matched in a
            # sub-query, which the tag and alias look-ups share.
            return self._versions(
                conn, name, "AND version IN (SELECT version FROM model_versions WHERE "
                "workspace = ? AND name = ? AND source LIKE ? ESCAPE '\\')",
                (_DEFAULT_WORKSPACE, name, pattern))

    def newest_versions(self, name: str, limit: int) -> tuple[list[RegistryVersion], bool]:
        """The *limit* highest-numbered versions of *name*, oldest first, and whether older
        ones exist: the first version left out is found on the primary key, and only the
        versions above it (with their tags and aliases) are read."""
        if not self._fast():
            return self._mlflow().newest_versions(name, limit)
        with self._reading() as conn:
            if not self._model_exists(conn, name):
                raise not_found(self.uri, f"model {name!r}")
            cut = conn.execute(
                "SELECT version FROM model_versions WHERE workspace = ? AND name = ? "
                "AND (current_stage IS NULL OR current_stage != ?) "
                "ORDER BY version DESC LIMIT 1 OFFSET ?",
                (_DEFAULT_WORKSPACE, name, _DELETED, int(limit))).fetchone()
            if cut is None:
                return self._versions(conn, name), False
            return self._versions(conn, name, "AND version > ?", (int(cut[0]),)), True

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

    def search_versions(self, name: str | None, tags: Mapping[str, str]) -> list[RegistryVersion]:
        """Versions of *name* (every model when None) tagged with *tags*, read in one
        transaction: the models holding a matching version found by SQL, their versions read
        as :meth:`versions` reads them."""
        if self._missing():
            return []
        if not self._fast():
            return self._mlflow().search_versions(name, tags)
        with self._reading() as conn:
            if tags:
                key, value = next(iter(sorted(tags.items())))
                models = {str(r[0]) for r in conn.execute(
                    "SELECT DISTINCT name FROM model_version_tags WHERE workspace = ? "
                    "AND key = ? AND value = ?", (_DEFAULT_WORKSPACE, key, value))}
            else:
                models = {str(r[0]) for r in conn.execute(
                    "SELECT name FROM registered_models WHERE workspace = ?",
                    (_DEFAULT_WORKSPACE,))}
            if name is not None:
                models &= {name}
            found = [rv for m in sorted(models) for rv in self._versions(conn, m)]
        return [rv for rv in found if all(rv.tags.get(k) == v for k, v in tags.items())]

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

    # -- Registry protocol: writes ------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection | None]:
        """A write transaction on MLflow's tables, or None when MLflow's client must write
        (no schema yet, or a revision not tested here).

        ``BEGIN IMMEDIATE`` takes SQLite's write lock before anything is read, so the version
        number read inside is still free when it is inserted: concurrent registers from several
        processes queue on the lock (``timeout``) instead of racing."""
        if self._schema_revision() is None:
            # A new file from the schema script shipped for the installed MLflow, if there is
            # one; otherwise (or a file MLflow itself is still making) MLflow's client creates
            # the schema under the folder lock, or waits for it.
            made = not self.path.exists() and create_natively(self.path)
            if not made or self._schema_revision() is None:
                self._mlflow()
        if not self._fast():
            yield None
            return
        with self._lock:
            if self._wconn is None:
                try:
                    self._wconn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw",
                                                  uri=True, timeout=60, isolation_level=None,
                                                  check_same_thread=False)
                except sqlite3.Error as exc:
                    raise RegistryError(f"registry {self.uri} cannot be written: {exc}") from None
            conn = self._wconn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise RegistryError(f"registry error writing {self.uri}: {exc}",
                                    hint="another process holds the registry's write lock; "
                                    "try again") from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise RegistryError(f"registry error writing {self.uri}: {exc}") from None

    @staticmethod
    def _live_version(conn: sqlite3.Connection, name: str, version: int) -> bool:
        return conn.execute(
            "SELECT 1 FROM model_versions WHERE workspace = ? AND name = ? AND version = ? "
            "AND (current_stage IS NULL OR current_stage != ?)",
            (_DEFAULT_WORKSPACE, name, int(version), _DELETED)).fetchone() is not None

    def create_version(
        self,
        name: str,
        source: str,
        *,
        tags: Mapping[str, str],
        description: str | None = None,
        run_id: str | None = None,
        user_id: str | None = None,
    ) -> RegistryVersion:
        what = f"creating a version of {name!r}"
        _check_name(what, name)
        for key in tags:
            _check_tag_key(what, key)
        if run_id is None:
            run_id = active_run_id()
        with self._writing() as conn:
            if conn is None:
                return self._mlflow().create_version(name, source, tags=tags,
                                                     description=description, run_id=run_id,
                                                     user_id=user_id)
            # What MLflow's SqlAlchemyStore.create_registered_model and create_model_version
            # write, in one transaction: the model if new (its last_updated_time otherwise),
            # the next number after every version ever made (deleted ones included), READY.
            # And the author in user_id (MLflow's "Created by"), which MLflow's own store
            # leaves empty: the column is VARCHAR(256).
            now = _now_ms()
            if self._model_exists(conn, name):
                conn.execute("UPDATE registered_models SET last_updated_time = ? "
                             "WHERE workspace = ? AND name = ?", (now, _DEFAULT_WORKSPACE, name))
            else:
                conn.execute("INSERT INTO registered_models (name, creation_time, "
                             "last_updated_time, description, workspace) VALUES (?, ?, ?, NULL, ?)",
                             (name, now, now, _DEFAULT_WORKSPACE))
            top = conn.execute("SELECT MAX(version) FROM model_versions WHERE workspace = ? "
                               "AND name = ?", (_DEFAULT_WORKSPACE, name)).fetchone()[0]
            version = int(top or 0) + 1
            conn.execute(
                "INSERT INTO model_versions (name, version, creation_time, last_updated_time, "
                "description, user_id, current_stage, source, run_id, status, status_message, "
                "run_link, storage_location, workspace) "
                "VALUES (?, ?, ?, ?, ?, ?, 'None', ?, ?, 'READY', NULL, NULL, ?, ?)",
                (name, version, now, now, description, (user_id or "")[:256] or None, source,
                 run_id or None, source, _DEFAULT_WORKSPACE))
            conn.executemany(
                "INSERT INTO model_version_tags (key, value, name, version, workspace) "
                "VALUES (?, ?, ?, ?, ?)",
                [(k, str(v), name, version, _DEFAULT_WORKSPACE) for k, v in tags.items()])
            aliases = tuple(sorted(a for (a,) in conn.execute(
                "SELECT alias FROM registered_model_aliases WHERE workspace = ? AND name = ? "
                "AND version = ?", (_DEFAULT_WORKSPACE, name, version))))
        return RegistryVersion(name=name, version=version, source=source,
                               tags={k: str(v) for k, v in tags.items()}, aliases=aliases,
                               created_ms=now, description=description or "",
                               run_id=run_id or None)

    def create_model(self, name: str) -> None:
        _check_name(f"creating model {name!r}", name)
        with self._writing() as conn:
            if conn is None:
                self._mlflow().create_model(name)
                return
            now = _now_ms()
            conn.execute("INSERT INTO registered_models (name, creation_time, last_updated_time, "
                         "description, workspace) VALUES (?, ?, ?, NULL, ?) "
                         "ON CONFLICT DO NOTHING", (name, now, now, _DEFAULT_WORKSPACE))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        what = f"alias {alias!r} of {name!r}"
        if not _ALIAS.match(alias) or _RESERVED_ALIAS.match(alias):
            raise RegistryError(f"registry error on {what}: invalid alias name {alias!r}")
        with self._writing() as conn:
            if conn is None:
                self._mlflow().set_alias(name, alias, version)
                return
            if not self._live_version(conn, name, version):
                raise not_found(self.uri, what)
            conn.execute(
                "INSERT INTO registered_model_aliases (alias, version, name, workspace) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (workspace, name, alias) "
                "DO UPDATE SET version = excluded.version",
                (alias, int(version), name, _DEFAULT_WORKSPACE))

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        what = f"tag {key!r} of {name}@{version}"
        _check_tag_key(what, key)
        with self._writing() as conn:
            if conn is None:
                self._mlflow().set_tag(name, version, key, value)
                return
            if not self._live_version(conn, name, version):
                raise not_found(self.uri, what)
            conn.execute(
                "INSERT INTO model_version_tags (key, value, name, version, workspace) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (workspace, key, name, version) "
                "DO UPDATE SET value = excluded.value",
                (key, value, name, int(version), _DEFAULT_WORKSPACE))

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        what = f"tag {key!r} of model {name!r}"
        _check_tag_key(what, key)
        if len(value) > _MAX_MODEL_TAG_VALUE:
            raise RegistryError(f"registry error on {what}: the value is longer than "
                                f"{_MAX_MODEL_TAG_VALUE} characters")
        with self._writing() as conn:
            if conn is None:
                self._mlflow().set_model_tag(name, key, value)
                return
            if not self._model_exists(conn, name):
                raise not_found(self.uri, what)
            conn.execute(
                "INSERT INTO registered_model_tags (key, value, name, workspace) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (workspace, key, name) "
                "DO UPDATE SET value = excluded.value",
                (key, value, name, _DEFAULT_WORKSPACE))

    def set_description(self, name: str, version: int | None, text: str) -> None:
        # What SqlAlchemyStore.update_registered_model / update_model_version write: the
        # description and the row's last_updated_time. Every alias change rewrites a few
        # descriptions (ops/summary.py), so this is on the fast path too.
        what = f"model {name!r}" if version is None else f"version {name}@{version}"
        with self._writing() as conn:
            if conn is None:
                self._mlflow().set_description(name, version, text)
                return
            if version is None:
                done = conn.execute(
                    "UPDATE registered_models SET description = ?, last_updated_time = ? "
                    "WHERE workspace = ? AND name = ?", (text, _now_ms(), _DEFAULT_WORKSPACE, name))
            else:
                done = conn.execute(
                    "UPDATE model_versions SET description = ?, last_updated_time = ? "
                    "WHERE workspace = ? AND name = ? AND version = ? "
                    "AND (current_stage IS NULL OR current_stage != ?)",
                    (text, _now_ms(), _DEFAULT_WORKSPACE, name, int(version), _DELETED))
            if done.rowcount == 0:
                raise not_found(self.uri, what)

    def delete_version(self, name: str, version: int) -> None:
        # What SqlAlchemyStore.delete_model_version does: the row stays, marked Deleted_Internal
        # with its source, run and description redacted (its tags and storage_location kept,
        # its number never reused); the aliases on it are deleted; the model's
        # last_updated_time moves.
        what = f"version {name}@{version}"
        _check_name(what, name)
        with self._writing() as conn:
            if conn is None:
                self._mlflow().delete_version(name, version)
                return
            self._check_not_prompt(conn, name, what)
            if not self._live_version(conn, name, version):
                raise not_found(self.uri, what)
            now = _now_ms()
            conn.execute("UPDATE registered_models SET last_updated_time = ? "
                         "WHERE workspace = ? AND name = ?", (now, _DEFAULT_WORKSPACE, name))
            conn.execute("DELETE FROM registered_model_aliases WHERE workspace = ? AND name = ? "
                         "AND version = ?", (_DEFAULT_WORKSPACE, name, int(version)))
            conn.execute(
                "UPDATE model_versions SET current_stage = ?, last_updated_time = ?, "
                "description = NULL, user_id = NULL, source = ?, run_id = ?, run_link = ?, "
                "status_message = NULL WHERE workspace = ? AND name = ? AND version = ?",
                (_DELETED, now, _REDACTED_SOURCE, _REDACTED_RUN_ID, _REDACTED_RUN_LINK,
                 _DEFAULT_WORKSPACE, name, int(version)))

    def delete_alias(self, name: str, alias: str) -> None:
        # What SqlAlchemyStore.delete_registered_model_alias does: the alias row goes, nothing
        # else changes. MLflow deletes a missing alias silently; the protocol promises
        # NotFoundError, worded as MlflowRegistry words it.
        what = f"alias {name}@{alias}"
        _check_name(what, name)
        if not alias or not _ALIAS.match(alias):
            raise RegistryError(f"registry error on {what}: invalid alias name {alias!r}")
        with self._writing() as conn:
            if conn is None:
                self._mlflow().delete_alias(name, alias)
                return
            self._check_not_prompt(conn, name, what)
            done = conn.execute(
                "DELETE FROM registered_model_aliases WHERE workspace = ? AND name = ? "
                "AND alias = ?", (_DEFAULT_WORKSPACE, name, alias))
            if done.rowcount == 0:
                raise not_found(self.uri, what)

    def _check_not_prompt(self, conn: sqlite3.Connection, name: str, what: str) -> None:
        """MlflowClient refuses to delete from a prompt (a registered model tagged
        ``mlflow.prompt.is_prompt``) as if the model did not exist: so does this."""
        if conn.execute("SELECT 1 FROM registered_model_tags WHERE workspace = ? AND name = ? "
                        "AND key = ?", (_DEFAULT_WORKSPACE, name, _PROMPT_TAG)).fetchone():
            raise not_found(self.uri, what)


# MLflow's rules for what it stores (mlflow/utils/validation.py), checked before writing so the
# tables only ever hold what MLflow's own client would have written.
_ALIAS = re.compile(r"^[\w\-]*$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
_TAG_KEY = re.compile(r"^[/\w.\- :]*$")
_MAX_TAG_KEY = 250
_MAX_MODEL_TAG_VALUE = 100_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_unique_path(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def _check_name(what: str, name: str) -> None:
    if not name or not name.strip() or "/" in name or ":" in name or _not_unique_path(name):
        raise RegistryError(f"registry error on {what}: invalid model name {name!r}")


def _check_tag_key(what: str, key: str) -> None:
    if (not key or len(key) > _MAX_TAG_KEY or not _TAG_KEY.match(key)
            or _not_unique_path(key)):
        raise RegistryError(f"registry error on {what}: invalid tag key {key!r}",
                            hint="use up to 250 letters, digits, '_', '-', '.', ' ', ':' or '/'")
