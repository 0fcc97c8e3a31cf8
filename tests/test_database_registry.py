"""A registry that is a database server (PostgreSQL, MariaDB) named by its SQLAlchemy URL, read
and written through MLflow's client: a database that cannot be used is one line within seconds,
not MLflow's 100 s of retries and their warnings; one that can is used as before.

Against the machine's real PostgreSQL and MariaDB (tests/servers.py), each test in a database of
its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelkeep.errors import NotFoundError, RegistryError
from tests.backends import unique_name
from tests.helpers import tensors, write_model
from tests.servers import MARIADB, POSTGRES, Database, create_database

SRC = Path(__file__).resolve().parents[1] / "src"
KINDS = ["postgresql", "mysql"]


def _modelkeep(tmp_path: Path, registry: str, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                  float]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "modelkeep", "--store", str(tmp_path / "store"), "--registry",
         registry, *args], cwd=tmp_path, env={**env, "PYTHONPATH": str(SRC)},
        capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once this socket is closed


def _url(kind: str, user: str, database: str, port: int | None = None) -> str:
    where = POSTGRES if kind == "postgresql" else MARIADB
    driver = "postgresql+psycopg2" if kind == "postgresql" else "mysql+pymysql"
    return f"{driver}://{user}@{where['host']}:{port or where['port']}/{database}"


@pytest.fixture(params=KINDS)
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    db = create_database(request.param)
    try:
        yield db
    finally:
        db.drop()


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_database_is_one_line_within_seconds(kind: str, tmp_path: Path) -> None:
    uri = _url(kind, "ops:pw-not-shown", "mlflow", port=_closed_port())
    proc, elapsed = _modelkeep(tmp_path, uri, "list")
    assert proc.returncode == RegistryError.exit_code, proc.stderr
    shown = uri.replace("pw-not-shown", "***")
    assert proc.stderr.splitlines() == [
        f"error: registry {shown} is unreachable (check the registry URI and that the server "
        "runs)"], proc.stderr
    assert elapsed < 10


@pytest.mark.parametrize("kind", KINDS)
def test_a_database_that_does_not_exist_is_named(kind: str, tmp_path: Path) -> None:
    user = POSTGRES["user"] if kind == "postgresql" else MARIADB["user"]
    proc, _elapsed = _modelkeep(tmp_path, _url(kind, user, "mk_no_such_database"), "--json",
                                "list")
    assert proc.returncode == NotFoundError.exit_code, proc.stderr
    error = json.loads(proc.stderr)["error"]
    assert error["message"].endswith(": the server has no database 'mk_no_such_database'")
    assert "create it" in error["hint"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_database_login_is_one_line(kind: str, tmp_path: Path) -> None:
    # PostgreSQL here trusts every local login it knows, so its refusal is of an unknown role;
    # MariaDB refuses root with a password it does not have.
    user = "mk_nobody" if kind == "postgresql" else f"{MARIADB['user']}:pw-not-shown"
    proc, _elapsed = _modelkeep(tmp_path, _url(kind, user, "mysql"), "list")
    assert proc.returncode == RegistryError.exit_code, proc.stderr
    [line] = proc.stderr.splitlines()
    name = user.split(":")[0]
    assert f"refused the database login of user {name!r}" in line, line
    assert line.endswith("(check the user and password in the registry URI)")
    assert "pw-not-shown" not in line


def test_a_database_that_answers_is_used_as_before(database: Database, tmp_path: Path) -> None:
    """The check connects and lets go; MLflow's client makes its tables in the new database,
    and what modelkeep registers there MLflow reads back."""
    name = unique_name()
    folder = write_model(tmp_path / "m", tensors(n=2))
    proc, _elapsed = _modelkeep(tmp_path, database.uri, "--json", "register", name, str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr
    proc, _elapsed = _modelkeep(tmp_path, database.uri, "--json", "list")
    assert proc.returncode == 0, proc.stderr
    assert [m["name"] for m in json.loads(proc.stdout)] == [name]
    # MLflow's own client, in a process of its own: its connections end with it, and the
    # database can be dropped.
    read = subprocess.run(
        [sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
         "c = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1]); "
         "print(c.get_model_version(sys.argv[2], '1').source)", database.uri, name],
        capture_output=True, text=True, timeout=300, check=True)
    assert read.stdout.strip().startswith("modelkeep://"), read.stdout
