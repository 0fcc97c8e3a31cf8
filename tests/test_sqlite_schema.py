"""A new MLflow SQLite file made without MLflow (:mod:`modelkeep.plugins.mlflow.sqlite_schema`):
the shipped schema script is what the installed MLflow creates, the installed MLflow's schema
revision is read without importing it, and anything the script does not cover is left to MLflow.
The registry-level checks (a register into a new file, MLflow using that file, the fallback, eight
concurrent first registers) are in tests/test_fast_registry.py.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.store.db.utils import _get_latest_schema_revision

from modelkeep.errors import RegistryError
from modelkeep.plugins.mlflow import sqlite_schema
from modelkeep.plugins.mlflow.sqlite import TESTED_REVISIONS, SqliteRegistry
from tests.mlflow_schema import mlflow_created, mlflow_env, script_from, snapshot


def _versions_dir() -> Path:
    import mlflow.store.db_migrations

    return Path(mlflow.store.db_migrations.__file__).parent / "versions"


def test_the_shipped_script_is_what_mlflow_creates(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    head = _get_latest_schema_revision()
    assert sqlite_schema.schema_script(head) is not None, (
        f"no schema script for the installed MLflow's revision {head}: check its registry "
        "tables, then run `PYTHONPATH=src python -m tests.mlflow_schema`")
    theirs = tmp_path / "mlflow" / "mlflow.db"
    version = mlflow_created(theirs, cwd=tmp_path)
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifact root is relative to it
    for name in ("MLFLOW_ENABLE_WORKSPACES", "MLFLOW_WORKSPACE", "_MLFLOW_SERVER_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    before = int(time.time() * 1000)
    ours = tmp_path / "native" / "mlflow.db"
    assert sqlite_schema.create(ours)
    mine, made = snapshot(ours), snapshot(theirs)
    assert mine["settings"] == made["settings"]
    assert mine["implicit"] == made["implicit"]
    assert sorted(mine["objects"]) == sorted(made["objects"])
    for key, statement in made["objects"].items():
        assert mine["objects"][key] == statement, key
    assert mine["rows"] == made["rows"]
    with sqlite3.connect(ours) as conn:
        created, updated, location = conn.execute(
            "SELECT creation_time, last_update_time, artifact_location FROM experiments "
            "WHERE experiment_id = 0").fetchone()
    assert before <= created == updated <= int(time.time() * 1000)
    assert location == f"{tmp_path.as_posix()}/mlruns/0"
    # And regenerating from MLflow's file gives a script that makes the same file.
    again = tmp_path / "again.db"
    sqlite_schema.build(again, script_from(theirs, version))
    assert snapshot(again) == made


def test_every_shipped_script_is_for_a_tested_revision() -> None:
    scripts = sorted(sqlite_schema.SCHEMAS.glob("*.sql"))
    assert scripts
    for script in scripts:
        assert script.stem in TESTED_REVISIONS, script.name
        assert f"INSERT INTO alembic_version (version_num) VALUES ('{script.stem}');" in (
            script.read_text())


@pytest.mark.parametrize("script", sorted(sqlite_schema.SCHEMAS.glob("*.sql")),
                         ids=lambda p: p.stem)
def test_every_shipped_schema_takes_modelkeeps_writes(tmp_path: Path, script: Path) -> None:
    """A file built from each script (the installed MLflow's or another release's) takes
    every write modelkeep makes on it with SQL and reads them back."""
    db = tmp_path / "mlflow.db"
    sqlite_schema.build(db, script.read_text())
    reg = SqliteRegistry(f"sqlite:///{db}", db)
    assert reg._fast()
    for i in (1, 2, 3):
        reg.create_version("m", f"modelkeep://file/s/@{i:064x}", tags={"k": str(i)},
                           description="d", run_id="", user_id="ana")
    reg.set_alias("m", "prod", 2)
    reg.set_tag("m", 1, "note", "x")
    reg.set_model_tag("m", "team", "nlp")
    reg.set_description("m", None, "the model")
    reg.delete_version("m", 3)
    assert [(v.version, v.tags, v.aliases) for v in reg.versions("m")] == [
        (1, {"k": "1", "note": "x"}, ()), (2, {"k": "2"}, ("prod",))]
    model = reg.get_model("m")
    assert (model.description, model.tags, model.aliases) == ("the model", {"team": "nlp"},
                                                               {"prod": 2})
    reg.close()


def test_the_head_is_read_without_importing_mlflow() -> None:
    code = (
        "import sys, time\n"
        "from modelkeep.plugins.mlflow import sqlite_schema\n"
        "started = time.perf_counter()\n"
        "head = sqlite_schema.mlflow_head()\n"
        "print(head, 'mlflow' in sys.modules, time.perf_counter() - started)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=mlflow_env(), check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out[:2] == [_get_latest_schema_revision(), "False"]
    assert float(out[2]) < 1.0  # a few milliseconds on a quiet machine


def test_the_head_follows_the_migration_chain(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    shutil.copytree(_versions_dir(), versions, ignore=shutil.ignore_patterns("__pycache__"))
    head = _get_latest_schema_revision()
    assert sqlite_schema.migrations_head(versions) == head
    (versions / "f00000000000_next.py").write_text(
        f'"""A later migration."""\nrevision = "f00000000000"\ndown_revision = "{head}"\n')
    assert sqlite_schema.migrations_head(versions) == "f00000000000"
    (versions / "f11111111111_branch.py").write_text(
        f'revision: str = "f11111111111"\ndown_revision: str | None = "{head}"\n')
    assert sqlite_schema.migrations_head(versions) is None  # two heads: MLflow's to sort out
    (versions / "f22222222222_merge.py").write_text(
        'revision = "f22222222222"\ndown_revision = ("f00000000000", "f11111111111")\n')
    assert sqlite_schema.migrations_head(versions) == "f22222222222"
    assert sqlite_schema.migrations_head(tmp_path / "none") is None
    assert sqlite_schema.schema_script("f22222222222") is None
    assert sqlite_schema.schema_script("../x") is None


def test_settings_that_change_mlflows_new_file_leave_it_to_mlflow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("MLFLOW_ENABLE_WORKSPACES", "true"), ("MLFLOW_WORKSPACE", "team"),
                        ("_MLFLOW_SERVER_ARTIFACT_ROOT", "s3://bucket/root")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert not sqlite_schema.create(tmp_path / "reg" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "false")  # MLflow's default, said aloud
    assert sqlite_schema.create(tmp_path / "other" / "mlflow.db")
    assert not (tmp_path / "reg" / "mlflow.db").exists()


def test_an_existing_file_is_kept(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database")
    assert sqlite_schema.create(db)
    assert db.read_bytes() == b"not a database"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def test_a_folder_that_cannot_be_made_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RegistryError, match=r"cannot be created") as error:
        sqlite_schema.create(blocker / "reg" / "mlflow.db")
    assert "writable" in str(error.value.hint)


def test_a_killed_creators_temp_files_are_removed_by_the_next(tmp_path: Path) -> None:
    """A creator killed while building leaves its temp file (and journal) beside the registry;
    the next one, holding the folder's lock, removes them, and nothing else beside."""
    db = tmp_path / "mlflow.db"
    (tmp_path / ".mlflow.db.4242-0a1b2c3d.tmp").write_bytes(b"half built")
    (tmp_path / ".mlflow.db.4242-0a1b2c3d.tmp-journal").write_bytes(b"journal")
    (tmp_path / "notes.txt").write_text("kept")
    assert sqlite_schema.create(db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "notes.txt"]
    assert sqlite3.connect(db).execute("SELECT count(*) FROM registered_models").fetchone() == (0,)
