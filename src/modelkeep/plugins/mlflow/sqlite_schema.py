"""Creating a new MLflow SQLite registry file without MLflow.

Letting MLflow's client create a file costs 2-3 s (``import mlflow``, every alembic migration from
an empty database, the Default experiment), the first thing a new project waits for. When the
installed MLflow's newest schema revision (its alembic head, read from the text of its migration
scripts without importing it) is one modelkeep ships a schema script for (``schemas/REV.sql``:
the tables, indexes and rows MLflow leaves in a new file at that revision, generated from a file
MLflow made by ``python -m tests.mlflow_schema``), the file is built here with :mod:`sqlite3` in
milliseconds: in a temporary file beside it, then linked into place without replacing anything,
under the same folder lock MLflow's creation takes, so no reader sees a half-made file and two
creators never clobber each other. Anything else (no MLflow installed, a head without a script,
MLflow workspaces or a server's artifact root in the environment, Windows) is left to MLflow.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelkeep.errors import RegistryError

SCHEMAS = Path(__file__).with_name("schemas")

# What MLflow's SqlAlchemyStore writes for the Default experiment (experiment 0) when it opens a
# new file: its artifact location is the tracking store's default artifact root ("./mlruns",
# resolved against the working folder, mlflow/utils/uri.py resolve_uri_if_local) + "/0", and
# both times are the moment of creation. The script holds the row; these are filled in here.
_DEFAULT_EXPERIMENT_ID = 0
_DEFAULT_ARTIFACT_ROOT = "mlruns"
# Environment that changes what MLflow writes into a new file: workspaces (another store class,
# another default experiment) and a server's artifact root. MLflow creates the file then.
_MLFLOW_SETTINGS = ("MLFLOW_WORKSPACE", "_MLFLOW_SERVER_ARTIFACT_ROOT")
_WORKSPACES = "MLFLOW_ENABLE_WORKSPACES"  # a boolean: "true"/"1" turn workspaces on

_REVISION = re.compile(r"^revision\s*(?::[^=\n]*)?=\s*['\"]([0-9A-Za-z_]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=\n]*)?=(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"['\"]([0-9A-Za-z_]+)['\"]")


def migrations_head(versions: Path) -> str | None:
    """The one alembic head of the migration scripts in *versions* (the revision no other
    script names as its ``down_revision``), or None when there is not exactly one."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        scripts = list(versions.glob("*.py"))
    except OSError:
        return None
    for script in scripts:
        try:
            text = script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        found = _REVISION.search(text)
        if found is None:
            continue
        revisions.add(found.group(1))
        down = _DOWN_REVISION.search(text)
        if down is not None:
            parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


@functools.cache
def mlflow_head() -> str | None:
    """The schema revision the installed MLflow migrates a database to, without importing
    MLflow (``find_spec`` only locates the package), or None when MLflow is not installed."""
    try:
        spec = importlib.util.find_spec("mlflow")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        versions = Path(location) / "store" / "db_migrations" / "versions"
        if versions.is_dir():
            return migrations_head(versions)
    return None


def schema_script(revision: str) -> str | None:
    """The shipped script that creates MLflow's database at *revision*, if there is one."""
    if not re.fullmatch(r"[0-9A-Za-z_]+", revision):
        return None
    try:
        return (SCHEMAS / f"{revision}.sql").read_text(encoding="utf-8")
    except OSError:
        return None


def native_script() -> str | None:
    """The schema script to create a new file with here, or None when MLflow must create it."""
    if (os.name == "nt" or any(os.environ.get(name) for name in _MLFLOW_SETTINGS)
            or os.environ.get(_WORKSPACES, "").strip().lower() in ("true", "1")):
        return None
    revision = mlflow_head()
    return schema_script(revision) if revision is not None else None


def build(path: Path, script: str) -> None:
    """Write a new database at *path* (which must not exist) from *script*, with the Default
    experiment's artifact location and times as MLflow's store would write them now."""
    root = (Path.cwd() / _DEFAULT_ARTIFACT_ROOT).as_posix()
    now = int(time.time() * 1000)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(f"BEGIN;\n{script}")
        conn.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                     "last_update_time = ? WHERE experiment_id = ?",
                     (f"{root}/{_DEFAULT_EXPERIMENT_ID}", now, now, _DEFAULT_EXPERIMENT_ID))
        conn.execute("COMMIT")
    finally:
        conn.close()


def create(path: Path) -> bool:
    """Create the registry file *path* from the shipped schema script, unless it exists.

    True when *path* exists afterwards (made here, or by another process meanwhile); False when
    there is no script for the installed MLflow and its client must create the file."""
    script = native_script()
    if script is None:
        return False
    try:
        _create(path, script)
    except (OSError, sqlite3.Error) as exc:
        raise RegistryError(f"registry {path} cannot be created: {exc}",
                            hint="check that its folder exists or can be made, and is "
                            "writable") from None
    return True


def _create(path: Path, script: str) -> None:
    with folder_lock(path.parent):
        # Under the lock no other creator is building: a temp file here is a killed one's.
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
            stale.unlink(missing_ok=True)
        if path.exists():
            return  # another writer made it while this one waited for the lock
        temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            build(temp, script)
            try:
                # No replace: a file MLflow itself (which does not take this lock) made
                # meanwhile is kept, not clobbered.
                os.link(temp, path)
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: the lock is all there is
                if not path.exists():
                    os.rename(temp, path)
        finally:
            for leftover in (temp, temp.with_name(temp.name + "-journal")):
                leftover.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on *folder* while a registry file is created there: concurrent first
    writers would otherwise race inside MLflow's set-up (its migrations are not concurrent-safe)
    or build the file twice. The lock is on the folder itself, so nothing is left beside the
    registry file."""
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
