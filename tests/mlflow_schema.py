"""The schema scripts modelkeep ships for creating a new MLflow SQLite file
(``src/modelkeep/plugins/mlflow/schemas/REV.sql``, used by
:mod:`modelkeep.plugins.mlflow.sqlite_schema`): made from a file the installed MLflow created,
and compared with one.

Regenerate the script for the installed MLflow's schema revision (after an MLflow upgrade that
migrates the schema, once the new revision's registry tables are checked; see
``TESTED_REVISIONS`` in modelkeep.plugins.mlflow.sqlite)::

    PYTHONPATH=src .venv/bin/python -m tests.mlflow_schema [--python OTHER_VENV/bin/python]

``--python`` makes the file with another interpreter's MLflow (a venv with, say, the
``mlflow-skinny`` release a client-only install resolves to, and sqlalchemy and alembic), for a
revision the MLflow installed here is not at.

A file is "what MLflow creates" up to what MLflow itself does not repeat from one creation to the
next: the order of the constraints in a table that a migration rebuilt, the order of the indexes
and the names SQLite gives the indexes behind them, and the Default experiment's times.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# Columns MLflow fills with the moment of creation, and the script leaves to be filled in.
TIMES = {"experiments": ("creation_time", "last_update_time")}
# Columns the script leaves to be filled in when a file is made (sqlite_schema.build).
FILLED_IN = {"experiments": ("artifact_location", *TIMES["experiments"])}

# What modelkeep's MlflowRegistry does to a new file: MLflow's client on it, its first question.
_MAKE = (
    "import sys\n"
    "import mlflow\n"
    "from mlflow import MlflowClient\n"
    "MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1]).search_registered_models()\n"
    "print(mlflow.__version__)\n"
)


def mlflow_env() -> dict[str, str]:
    """This environment without the settings that change what MLflow writes into a new file."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_WORKSPACES",
                        "MLFLOW_WORKSPACE", "_MLFLOW_SERVER_ARTIFACT_ROOT")}
    env["PYTHONPATH"] = str(SRC)
    env["MLFLOW_ENABLE_TELEMETRY"] = "false"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def mlflow_created(db: Path, cwd: Path, python: str = sys.executable) -> str:
    """Create the new file *db* with MLflow's client (as modelkeep's fallback creates one), in a
    fresh interpreter (*python*) working in *cwd* (the Default experiment's artifact root is
    relative to it); MLflow's version."""
    db.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([python, "-c", _MAKE, f"sqlite:///{db}"], cwd=cwd, env=mlflow_env(),
                          check=True, capture_output=True, text=True, timeout=300)
    return done.stdout.split()[-1]


def revision_of(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


def _objects(conn: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    # Tables, then what is built on them; by name, not in the order MLflow happened to make
    # them (which varies), so a regenerated script differs only where the schema does.
    return conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY "
        "CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, name"
    ).fetchall()


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [n for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")')]


def script_from(db: Path, mlflow_version: str) -> str:
    """The schema script for what MLflow left in *db*: every table, index, view and trigger
    statement as SQLite keeps it, then every row, the Default experiment's location and times
    left NULL to be filled in when a file is made."""
    revision = revision_of(db)
    lines = [
        f"-- MLflow's tracking database at schema revision {revision} (mlflow {mlflow_version}),",
        "-- as MLflow's client leaves a new SQLite file. Generated from such a file by",
        "-- `python -m tests.mlflow_schema`; do not edit. Used by modelkeep.plugins.mlflow",
        "-- .sqlite_schema, which fills in the Default experiment's artifact location and times.",
        "",
    ]
    with sqlite3.connect(db) as conn:
        for _type, name, _table, sql in _objects(conn):
            if sql is None or name.startswith("sqlite_"):
                continue  # SQLite makes these itself (constraint indexes, sqlite_sequence)
            lines.append(f"{sql};")
        lines.append("")
        for table in _tables(conn):
            columns = _columns(conn, table)
            blank = set(FILLED_IN.get(table, ()))
            picks = ", ".join("'NULL'" if c in blank else f'quote("{c}")' for c in columns)
            names = ", ".join(columns)
            for row in conn.execute(f'SELECT {picks} FROM "{table}" ORDER BY 1'):
                lines.append(f'INSERT INTO {table} ({names}) VALUES ({", ".join(row)});')
    return "\n".join(lines) + "\n"


def _split_top(body: str) -> list[str]:
    """*body* split at the commas outside parentheses and quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(body):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return [" ".join(item.split()) for item in items]


_CONSTRAINT = re.compile(r"^(CONSTRAINT|PRIMARY KEY|UNIQUE|CHECK|FOREIGN KEY)\b", re.IGNORECASE)


def _normalized(sql: str) -> Any:
    """A statement with its whitespace collapsed; a table's columns in order and its table
    constraints as a set (a table a migration rebuilt gets them in an order that varies)."""
    if not re.match(r"\s*CREATE\s+TABLE", sql, re.IGNORECASE):
        return " ".join(sql.split())
    head, _, rest = sql.partition("(")
    body, _, tail = rest.rpartition(")")
    items = _split_top(body)
    columns = [i for i in items if not _CONSTRAINT.match(i)]
    constraints = sorted(i for i in items if _CONSTRAINT.match(i))
    return (" ".join(head.split()), tuple(columns), tuple(constraints), " ".join(tail.split()))


def snapshot(db: Path) -> dict[str, Any]:
    """What a new file holds, in a form two creations of the same schema compare equal in:
    every schema object's statement, SQLite's own indexes counted per table, every row (the
    creation times blanked), and the file's settings."""
    with sqlite3.connect(db) as conn:
        objects: dict[tuple[str, str], Any] = {}
        implicit: Counter[tuple[str, str]] = Counter()
        for kind, name, table, sql in _objects(conn):
            if sql is None:
                implicit[(kind, table)] += 1
            else:
                objects[(kind, name)] = _normalized(sql)
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table in _tables(conn):
            columns = _columns(conn, table)
            blank = set(TIMES.get(table, ()))
            picks = ", ".join("NULL" if c in blank else f'"{c}"' for c in columns)
            rows[table] = sorted(conn.execute(f'SELECT {picks} FROM "{table}"').fetchall(),
                                 key=repr)
        settings = {p: conn.execute(f"PRAGMA {p}").fetchone()[0] for p in (
            "user_version", "application_id", "page_size", "auto_vacuum", "encoding",
            "journal_mode")}
    return {"objects": objects, "implicit": dict(implicit), "rows": rows, "settings": settings}


def main(argv: list[str] | None = None) -> int:
    from modelkeep.plugins.mlflow.sqlite_schema import SCHEMAS, build

    parser = argparse.ArgumentParser(description="Write the schema script for the revision an "
                                     "MLflow creates a new SQLite file at.")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter whose MLflow makes the file (default: this one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        made = Path(tmp) / "mlflow" / "mlflow.db"
        version = mlflow_created(made, Path(tmp), args.python)
        script = script_from(made, version)
        # The script must make what MLflow made, here and now, before it is shipped.
        cwd = Path.cwd()
        try:
            os.chdir(tmp)
            build(Path(tmp) / "native.db", script)
        finally:
            os.chdir(cwd)
        if snapshot(Path(tmp) / "native.db") != snapshot(made):
            print("error: the script does not make what MLflow made (see tests.mlflow_schema)",
                  file=sys.stderr)
            return 1
        out = SCHEMAS / f"{revision_of(made)}.sql"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(script, encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)} (mlflow {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
