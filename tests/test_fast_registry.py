"""The registry adapters that spare read commands MLflow's start-up
(:mod:`modelkeep.plugins.mlflow.sqlite`, :mod:`modelkeep.plugins.mlflow.rest`).

MLflow stays the catalogue of record, so everything written through the new paths is read back
with MLflow's own ``MlflowClient``, and everything the new paths read is compared with what
modelkeep's MLflow-client adapter reads, on a SQLite file and on an ``mlflow server``. Read
commands run in subprocesses that report whether ``mlflow`` was imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import modelkeep
from modelkeep.errors import NotFoundError, RegistryError
from modelkeep.hooks import make_plugin_manager
from modelkeep.plugins.mlflow.hooks import registry_for
from modelkeep.plugins.mlflow.registry import MlflowRegistry
from modelkeep.plugins.mlflow.rest import RestRegistry
from modelkeep.plugins.mlflow.sqlite import SqliteRegistry
from modelkeep.registry import Registry
from tests.backends import unique_name
from tests.helpers import imports_of, sqlite_project, tensors, write_model

pytestmark = pytest.mark.xdist_group("mlflow-servers")

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(params=["sqlite", "server"])
def registry_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return str(request.getfixturevalue("mlflow_server").url)


def _write_through(reg: Registry, name: str) -> None:
    """Every kind of write the protocol has, through *reg*."""
    for i in range(1, 5):
        reg.create_version(name, f"modelkeep://file/tmp/s/@{i:064x}",
                           tags={"modelkeep.snapshot": f"{i:064x}", "step": str(i)},
                           description=f"version {i}\nsecond line", run_id="",
                           user_id="ana@lab")
    reg.set_alias(name, "prod", 2)
    reg.set_alias(name, "canary", 3)
    reg.set_alias(name, "gone", 4)
    reg.delete_alias(name, "gone")
    reg.set_tag(name, 3, "note", "x" * 5000)
    reg.set_model_tag(name, "modelkeep.alias_history.prod", "[[2,\"t\",\"u\",\"set\"]]")
    reg.set_description(name, None, "the model")
    reg.set_description(name, 2, "promoted")
    reg.delete_version(name, 4)
    reg.create_model(name)  # exists already: nothing happens


def test_mlflow_reads_back_what_the_new_paths_write(registry_uri: str) -> None:
    reg = registry_for(registry_uri)
    assert isinstance(reg, RestRegistry if registry_uri.startswith("http") else SqliteRegistry)
    name = unique_name()
    _write_through(reg, name)

    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    model = client.get_registered_model(name)
    assert model.description == "the model"
    assert model.tags == {"modelkeep.alias_history.prod": "[[2,\"t\",\"u\",\"set\"]]"}
    assert {a: int(v) for a, v in model.aliases.items()} == {"prod": 2, "canary": 3}
    found = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version))
    assert [int(m.version) for m in found] == [1, 2, 3]
    for mv in found:
        i = int(mv.version)
        full = client.get_model_version(name, mv.version)
        assert full.source == f"modelkeep://file/tmp/s/@{i:064x}"
        expected_tags = {"modelkeep.snapshot": f"{i:064x}", "step": str(i)}
        if i == 3:
            expected_tags["note"] = "x" * 5000
        assert full.tags == expected_tags
        assert full.description == ("promoted" if i == 2 else f"version {i}\nsecond line")
        assert sorted(full.aliases) == {1: [], 2: ["prod"], 3: ["canary"]}[i]
        assert not full.run_id
        # MLflow's "Created by": written into the file; a server has no way to be told it.
        assert (full.user_id or None) == (None if registry_uri.startswith("http") else "ana@lab")
    assert int(client.get_model_version_by_alias(name, "canary").version) == 3
    with pytest.raises(NotFoundError):
        reg.set_description(name, 4, "a deleted version")


def test_new_reads_equal_mlflow_client_reads(registry_uri: str) -> None:
    fast = registry_for(registry_uri)
    name = unique_name()
    _write_through(fast, name)
    slow = MlflowRegistry(registry_uri)
    assert fast.versions(name) == slow.versions(name)
    assert fast.get_model(name) == slow.get_model(name)
    assert fast.latest(name) == slow.latest(name)
    assert fast.get_version(name, 2) == slow.get_version(name, 2)
    assert fast.get_by_alias(name, "canary") == slow.get_by_alias(name, "canary")
    assert name in fast.models() and fast.models() == slow.models()
    assert fast.models_tagged("step", "3") == slow.models_tagged("step", "3")  # type: ignore[attr-defined]
    assert name not in fast.models_tagged("step", "4")  # type: ignore[attr-defined]  # deleted
    other = unique_name()
    assert fast.latest(other) is None
    for ask in (lambda r: r.get_version(name, 4), lambda r: r.get_version(name, 9),
                lambda r: r.get_by_alias(name, "gone"), lambda r: r.versions(other),
                lambda r: r.get_model(other), lambda r: r.delete_alias(name, "gone")):
        with pytest.raises(NotFoundError) as fast_error:
            ask(fast)
        with pytest.raises(NotFoundError) as slow_error:
            ask(slow)
        assert str(fast_error.value) == str(slow_error.value)


def test_an_untested_schema_revision_reads_through_mlflow(tmp_path: Path) -> None:
    import sqlite3

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reg = registry_for(uri)
    name = unique_name()
    reg.create_version(name, "modelkeep://file/tmp/s/@" + "0" * 64, tags={"a": "1"}, run_id="")
    # MLflow's tracking store refuses a file at any revision but its head when it opens it; it
    # keeps its store per URI, so opened before the revision changes it reads on, as an MLflow
    # whose head the changed revision is would.
    MlflowRegistry(uri).models()
    with sqlite3.connect(tmp_path / "mlflow.db") as conn:
        real = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        conn.execute("UPDATE alembic_version SET version_num = 'f00000000000'")
    try:
        other = registry_for(uri)
        assert isinstance(other, SqliteRegistry) and not other._fast()
        assert other.versions(name)[0].tags == {"a": "1"}
        assert other._writer is not None  # the answer came from MLflow's client
        # Deletes on an untested revision are MLflow's client's too.
        other.create_version(name, "modelkeep://file/tmp/s/@" + "1" * 64, tags={}, run_id="")
        other.set_alias(name, "prod", 2)
        other.delete_alias(name, "prod")
        with pytest.raises(NotFoundError):
            other.delete_alias(name, "prod")
        other.delete_version(name, 2)
        assert [v.version for v in other.versions(name)] == [1]
        assert [v.version for v in other.versions_by_snapshot(name, "0" * 8)] == [1]
        latest = other.latest_without_aliases(name)
        assert latest is not None and latest.version == 1 and latest.tags == {"a": "1"}
    finally:
        with sqlite3.connect(tmp_path / "mlflow.db") as conn:
            conn.execute("UPDATE alembic_version SET version_num = ?", (real,))
    assert registry_for(uri).versions(name)[0].tags == {"a": "1"}


# -- whole commands, in subprocesses -----------------------------------------------------------

def _run(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None,
         timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``modelkeep ARGS`` in a fresh interpreter; also say whether it imported mlflow."""
    proc, loaded = imports_of(args, cwd, ("mlflow",), env_extra, timeout)
    return proc, "?" if loaded is None else "mlflow" if loaded else "clean"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project on the SQLite default holding two versions of one model, and the model name."""
    root = tmp_path_factory.mktemp("project")
    keep = sqlite_project(root)
    name = unique_name()
    model = write_model(root / "model", tensors(seed=1, n=4, rows=16, cols=16))
    keep.register(name, model, aliases=["prod"], message="first")
    write_model(model, tensors(seed=2, n=4, rows=16, cols=16))
    keep.register(name, model, parents=[f"{name}@1"], message="second")
    return root, name


READ_COMMANDS = [
    ["list"], ["list", "{n}"], ["show", "{n}@1"], ["show", "{n}@prod"], ["show", "{n}@latest"],
    ["log", "{n}"], ["lineage", "{n}@2"], ["status"],
    ["--json", "list"], ["--json", "list", "{n}"], ["--json", "show", "{n}@2"],
    ["--json", "log", "{n}"],
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda a: " ".join(a))
def test_read_commands_do_not_import_mlflow(project: tuple[Path, str], args: list[str]) -> None:
    root, name = project
    proc, imported = _run([a.format(n=name) for a in args], root)
    assert proc.returncode == 0, proc.stderr
    assert imported == "clean", f"{args} imported mlflow"
    if args[0] == "--json":
        assert name in proc.stdout


def test_bad_references_are_refused_without_mlflow(project: tuple[Path, str]) -> None:
    root, name = project
    for args, message in ((["show", f"{name}@"], "invalid"), (["show", f"{name}@7"], "not found"),
                          (["log", "no/such"], "invalid")):
        proc, imported = _run(args, root)
        assert proc.returncode != 0 and message in proc.stderr.lower(), proc.stderr
        assert imported == "clean"


def test_read_commands_against_a_server_do_not_import_mlflow(mlflow_server, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             ) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_server.url,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    keep.register(name, write_model(tmp_path / "m", tensors(seed=3, n=2, rows=8, cols=8)),
                  aliases=["prod"])
    base = ["--store", str(tmp_path / "store"), "--registry", mlflow_server.url]
    for args in (["--json", "list"], ["list", name], ["show", f"{name}@prod"],
                 ["--json", "log", name]):
        proc, imported = _run(base + args, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert imported == "clean"


def test_a_read_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "no" / "such" / "mlflow.db"
    for args in (["list"], ["--json", "list"], ["show", "m@1"], ["list", "m"]):
        proc, imported = _run(["--store", str(tmp_path / "store"),
                               "--registry", f"sqlite:///{db}", *args], tmp_path)
        assert proc.returncode == NotFoundError.exit_code, proc.stderr
        assert "no registry at" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert imported == "clean"
    assert not (tmp_path / "no").exists()


def test_an_unreachable_server_is_one_line_within_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    proc, imported = _run(["--store", str(tmp_path / "store"), "--registry",
                           "http://127.0.0.1:1", "list"], tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == RegistryError.exit_code
    assert proc.stderr.strip().splitlines() == [
        "error: registry http://127.0.0.1:1 is unreachable "
        "(check the registry URI and that the server runs)"]
    assert elapsed < 10 and imported == "clean"


def test_concurrent_first_registers_on_a_missing_sqlite_file(tmp_path: Path) -> None:
    """Eight processes register versions of one model into a registry file that does not exist
    yet: every one succeeds and the numbers are 1..8, none lost or repeated."""
    db = tmp_path / "reg" / "mlflow.db"
    name = unique_name()
    procs = []
    for i in range(8):
        folder = write_model(tmp_path / f"m{i}", tensors(seed=10 + i, n=2, rows=8, cols=8))
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "modelkeep", "--json", "--store", str(tmp_path / "store"),
             "--registry", f"sqlite:///{db}", "register", name, str(folder)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outs]
    numbers = sorted(json.loads(out)["version"] for out, _ in outs)
    assert numbers == list(range(1, 9))
    versions = registry_for(f"sqlite:///{db}").versions(name)
    assert [v.version for v in versions] == list(range(1, 9))
    # The file was built once, beside nothing: no temporary file or journal is left.
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db"]


def test_a_first_register_creates_the_file_natively_and_mlflow_uses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A register into a file that does not exist builds it from the shipped schema script
    without importing MLflow; MLflow's client, its store, a run and ``mlflow server`` all take
    the file as their own."""
    import mlflow
    from mlflow.store.db.utils import _get_latest_schema_revision, _verify_schema
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from modelkeep.plugins.mlflow.sqlite_schema import mlflow_head
    from tests.servers import serving, start_mlflow_server

    db = tmp_path / "reg" / "mlflow.db"
    uri = f"sqlite:///{db}"
    name = unique_name()
    folder = write_model(tmp_path / "m", tensors(seed=4, n=2, rows=8, cols=8))
    proc, imported = _run(["--json", "--store", str(tmp_path / "store"), "--registry", uri,
                           "register", name, str(folder), "--alias", "prod"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert imported == "clean"
    assert mlflow_head() == _get_latest_schema_revision()
    made = json.loads(proc.stdout)

    store = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))
    _verify_schema(store.engine)  # raises on any revision but MLflow's head
    assert store.get_experiment("0").name == "Default"
    store.engine.dispose()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(name, "prod")
    assert int(mv.version) == made["version"] == 1 and mv.source == made["uri"]
    assert client.get_experiment("0").artifact_location == f"{tmp_path.as_posix()}/mlruns/0"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    assert [m.name for m in mlflow.search_registered_models()] == [name]
    experiment = mlflow.create_experiment("runs")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("loss", 0.5)
        mlflow.log_param("lr", "0.1")
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}

    workdir = tmp_path / "server"
    workdir.mkdir()
    with serving(lambda: start_mlflow_server(workdir, uri), "mlflow server") as server:
        served = registry_for(server.url)
        assert [v.version for v in served.versions(name)] == [1]
        assert served.get_by_alias(name, "prod").source == made["uri"]
    proc, imported = _run(["--store", str(tmp_path / "store"), "--registry", uri, "register",
                           name, str(write_model(folder, tensors(seed=5, n=2, rows=8, cols=8)))],
                          tmp_path)
    assert proc.returncode == 0 and imported == "clean", proc.stderr
    assert [int(m.version) for m in client.search_model_versions(f"name = '{name}'")] == [2, 1]


def test_a_first_register_without_a_shipped_schema_lets_mlflow_create_the_file(
        tmp_path: Path) -> None:
    """When the installed MLflow's head revision has no schema script here (no scripts at all,
    in this interpreter), MLflow's client creates the file as before."""
    db = tmp_path / "reg" / "mlflow.db"
    empty = tmp_path / "no-schemas"
    empty.mkdir()
    folder = write_model(tmp_path / "m", tensors(seed=6, n=2, rows=8, cols=8))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelkeep.plugins.mlflow import sqlite_schema\n"
        "sqlite_schema.SCHEMAS = Path(sys.argv[1])\n"
        "from modelkeep.cli.main import main\n"
        "rc = main(sys.argv[2:])\n"
        "print('mlflow' in sys.modules, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(empty), "--json", "--store", str(tmp_path / "store"),
         "--registry", f"sqlite:///{db}", "register", "m", str(folder)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "True"  # MLflow made the file
    uri = f"sqlite:///{db}"
    assert [int(m.version) for m in MlflowClient(tracking_uri=uri, registry_uri=uri)
            .search_model_versions("name = 'm'")] == [1]


def test_register_on_an_existing_sqlite_registry_does_not_import_mlflow(
        project: tuple[Path, str]) -> None:
    root, name = project
    folder = write_model(root / "model-new", tensors(seed=7, n=2, rows=8, cols=8))
    proc, imported = _run(["--json", "register", name, str(folder), "--alias", "canary",
                           "--tag", "team=nlp"], root)
    assert proc.returncode == 0, proc.stderr
    assert imported == "clean"
    made = json.loads(proc.stdout)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(name,
                                                                                    "canary")
    assert int(mv.version) == made["version"] and mv.tags["team"] == "nlp"
    assert mv.status == "READY" and mv.current_stage == "None"
    assert mv.source == made["uri"]


def test_sqlite_writes_do_not_import_mlflow_and_mlflow_reads_them_back(tmp_path: Path) -> None:
    """Every writing command on an existing SQLite registry, each in a fresh interpreter that
    must not import mlflow; then MLflow's own client reads back what they left."""
    root = tmp_path
    uri = f"sqlite:///{root / 'mlflow.db'}"
    name = unique_name()
    keep = sqlite_project(root)
    folder = write_model(root / "model", tensors(seed=1, n=3, rows=16, cols=16))
    keep.register(name, folder, message="first")  # creates the file
    steps = [
        # a new version, with alias, tag and message
        (["register", name, "{folder}", "--alias", "prod", "--tag", "team=nlp", "-m", "second"],
         "new"),
        # the same content again: nothing new, the alias moved, the tag and message applied
        (["register", name, "{folder}", "--alias", "canary", "--tag", "team=cv", "-m", "again"],
         None),
        (["alias", f"{name}@1", "old"], None),
        (["alias", f"{name}@2", "gone"], None),
        (["alias", name, "gone", "--delete"], None),
        (["describe", f"{name}@1", "-m", "the first"], None),
        (["describe", name, "-m", "the model"], None),
        (["register", name, "{folder}", "--alias", "stale"], "new"),  # version 3
        (["alias", f"{name}@3", "prod"], None),
        (["rollback", name, "prod"], None),  # back to 2
        (["alias", name, "stale", "--delete"], None),
        (["delete", f"{name}@3", "-y"], None),
    ]
    for i, (args, change) in enumerate(steps):
        if change == "new":
            write_model(folder, tensors(seed=20 + i, n=3, rows=16, cols=16))
        proc, imported = _run([a.format(folder=folder) for a in args], root)
        assert proc.returncode == 0, (args, proc.stderr)
        assert imported == "clean", f"{args} imported mlflow"

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = client.get_registered_model(name)
    assert model.description.startswith("the model\n")  # then modelkeep's generated summary
    assert {a: int(v) for a, v in model.aliases.items()} == {"prod": 2, "canary": 2, "old": 1}
    found = {int(mv.version): client.get_model_version(name, mv.version)
             for mv in client.search_model_versions(f"name = '{name}'")}
    assert sorted(found) == [1, 2]  # 3 deleted
    assert found[2].tags["team"] == "cv" and "team" not in found[1].tags
    assert sorted(found[2].aliases) == ["canary", "prod"] and found[1].aliases == ["old"]
    ours = {rv.version: rv for rv in registry_for(uri).versions(name)}
    for number, mv in found.items():
        assert mv.source == ours[number].source and mv.tags == dict(ours[number].tags)
        assert mv.description == ours[number].description
        assert mv.current_stage == "None" and mv.status == "READY"
    assert (found[1].description or "").startswith("the first")
    assert (found[2].description or "").startswith("again")
    with pytest.raises(Exception, match="not found"):
        client.get_model_version(name, "3")
    with pytest.raises(Exception, match="not found"):
        client.get_model_version_by_alias(name, "stale")
    assert int(client.get_model_version_by_alias(name, "prod").version) == 2


def _rows(db: Path, name: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every registry row of model *name*, its name and times left out (to compare models)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table, skip in (("registered_models", {"name", "creation_time", "last_updated_time"}),
                            ("model_versions", {"name", "creation_time", "last_updated_time"}),
                            ("model_version_tags", {"name"}),
                            ("registered_model_aliases", {"name"}),
                            ("registered_model_tags", {"name"})):
            columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")
                       if c[1] not in skip]
            out[table] = sorted(conn.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE name = ?", (name,)).fetchall(),
                key=repr)
    return out


def test_sql_deletes_leave_the_rows_mlflow_leaves(tmp_path: Path) -> None:
    """The same versions, aliases and tags in two models; the same deletions made through the
    SQL path on one and through MLflow's client on the other: every row left is the same."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    fast = registry_for(uri)
    assert isinstance(fast, SqliteRegistry)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    sql_name, mlflow_name = unique_name(), unique_name()
    for name in (sql_name, mlflow_name):
        for i in range(1, 5):
            fast.create_version(name, f"modelkeep://file/tmp/s/@{i:064x}", tags={"i": str(i)},
                                description=f"v{i}", run_id="", user_id="ana@lab")
        for alias, version in (("a", 2), ("b", 2), ("c", 3), ("d", 4)):
            fast.set_alias(name, alias, version)
    before = {n: fast.get_model(n) for n in (sql_name, mlflow_name)}
    started = int(time.time() * 1000)
    fast.delete_version(sql_name, 2)
    fast.delete_alias(sql_name, "c")
    fast.delete_version(sql_name, 4)
    client.delete_model_version(mlflow_name, "2")
    client.delete_registered_model_alias(mlflow_name, "c")
    client.delete_model_version(mlflow_name, "4")
    assert _rows(db, sql_name) == _rows(db, mlflow_name)
    rows = _rows(db, sql_name)
    assert [r[0] for r in rows["registered_model_aliases"]] == []  # c deleted, a b d with theirs
    assert len(rows["model_version_tags"]) == 4  # a deleted version keeps its tags
    for name in (sql_name, mlflow_name):
        store = client._get_registry_client().store  # type: ignore[no-untyped-call]
        deleted = store._get_sql_model_version_including_deleted(name, 2)
        assert deleted.current_stage == "Deleted_Internal"
        assert deleted.source == "REDACTED-SOURCE-PATH" and deleted.description is None
        assert deleted.last_updated_timestamp >= started
        assert fast.get_model(name).aliases == {}
        assert before[name].aliases == {"a": 2, "b": 2, "c": 3, "d": 4}
        assert client.get_registered_model(name).last_updated_timestamp >= started
    with pytest.raises(NotFoundError):
        fast.delete_version(sql_name, 2)
    with pytest.raises(NotFoundError):
        fast.delete_alias(sql_name, "c")
    # A version number freed by a deletion is not given again (MLflow counts deleted rows).
    assert fast.create_version(sql_name, "modelkeep://file/tmp/s/@" + "5" * 64, tags={},
                               run_id="").version == 5


def test_sql_deletes_refuse_a_prompt_as_mlflow_does(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fast = registry_for(uri)
    name = unique_name()
    fast.create_version(name, "modelkeep://file/tmp/s/@" + "0" * 64, tags={}, run_id="")
    fast.set_alias(name, "prod", 1)
    fast.set_model_tag(name, "mlflow.prompt.is_prompt", "true")
    slow = MlflowRegistry(uri)
    for reg in (fast, slow):
        with pytest.raises(NotFoundError):
            reg.delete_version(name, 1)
        with pytest.raises(NotFoundError):
            reg.delete_alias(name, "prod")
    assert fast.get_by_alias(name, "prod").version == 1


def test_sql_writes_refuse_what_mlflow_refuses(tmp_path: Path) -> None:
    reg = registry_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = unique_name()
    reg.create_version(name, "modelkeep://file/tmp/s/@" + "0" * 64, tags={}, run_id="")
    for bad in ("../up", "/abs", "a\\nb", ""):
        with pytest.raises(RegistryError, match="invalid tag key"):
            reg.set_tag(name, 1, bad, "v")
    with pytest.raises(RegistryError, match="invalid alias"):
        reg.set_alias(name, "v3", 1)
    with pytest.raises(NotFoundError):
        reg.set_alias(name, "prod", 2)
    with pytest.raises(NotFoundError):
        reg.set_model_tag(unique_name(), "k", "v")
    assert registry_for(f"sqlite:///{tmp_path / 'mlflow.db'}").get_version(name, 1).tags == {}


def test_a_model_with_many_versions_lists_as_plain_columns(tmp_path: Path) -> None:
    """Past RICH_TABLE_ROWS rows, `list NAME --all` prints aligned columns (rich renders about a
    millisecond per row); `log --all` prints every version."""
    from modelkeep.cli._output import RICH_TABLE_ROWS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=uri,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    first = keep.register(name, write_model(tmp_path / "m", tensors(seed=4, n=2, rows=8, cols=8)),
                          message="first line\nsecond")
    rv = keep.registry.get_version(name, first.version)
    for _ in range(RICH_TABLE_ROWS + 4):
        keep.registry.create_version(name, rv.source, tags=dict(rv.tags), run_id="")
    base = ["--store", str(tmp_path / "store"), "--registry", uri]
    proc, imported = _run([*base, "list", name, "--all"], tmp_path)
    assert proc.returncode == 0 and imported == "clean", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["version", "created", "size", "added", "aliases", "message"]
    assert len(lines) == RICH_TABLE_ROWS + 6
    assert lines[1].split()[0] == "1" and lines[1].endswith("first line")
    assert lines[-1].split()[0] == str(RICH_TABLE_ROWS + 5)
    proc, imported = _run([*base, "log", name, "--all"], tmp_path)
    assert proc.returncode == 0 and imported == "clean", proc.stderr
    refs = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(name)]
    assert refs == [f"{name}@{v}" for v in range(RICH_TABLE_ROWS + 5, 0, -1)]


def test_a_web_server_that_is_not_mlflow_is_named_as_such(tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        reg = registry_for(f"http://127.0.0.1:{server.server_address[1]}/nothing-here")
        with pytest.raises(RegistryError, match="HTTP 404") as info:
            reg.models()
        assert not isinstance(info.value, NotFoundError)
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_registers_through_a_server(mlflow_server) -> None:  # type: ignore[no-untyped-def]
    """Eight writers creating versions of one new model at once through the REST adapter: the
    server numbers them 1..8, none lost or repeated."""
    from concurrent.futures import ThreadPoolExecutor

    name = unique_name()

    def one(i: int) -> int:
        reg = registry_for(mlflow_server.url)  # each writer its own session, as processes are
        return reg.create_version(name, f"modelkeep://file/tmp/s/@{i:064x}",
                                  tags={"i": str(i)}, run_id="").version

    with ThreadPoolExecutor(8) as pool:
        numbers = sorted(pool.map(one, range(8)))
    assert numbers == list(range(1, 9))
    versions = MlflowRegistry(mlflow_server.url).versions(name)
    assert sorted(v.tags["i"] for v in versions) == [str(i) for i in range(8)]


@pytest.mark.parametrize(("uri", "module", "installed"), [
    ("postgresql://ops:pw-not-shown@127.0.0.1:1/mlflow", "psycopg", "postgresql+psycopg2://"),
    ("mysql://ops:pw-not-shown@127.0.0.1:1/mlflow", "MySQLdb", "mysql+pymysql://"),
])
def test_a_database_uri_without_its_driver_says_what_to_install(
    uri: str, module: str, installed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SQLAlchemy gives ``postgresql://`` and ``mysql://`` drivers other than the ones the
    tested set-up installs (psycopg2, pymysql); the error names the missing one, the package it
    comes in and the URI form of the installed one, without the password."""
    from modelkeep.cli.main import main
    from modelkeep.errors import MissingExtraError

    # None in sys.modules makes its import fail as a package that is not installed does.
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    assert main(["--json", "--registry", uri, "list"]) == MissingExtraError.exit_code
    err = capsys.readouterr().err
    error = json.loads(err)["error"]
    assert error["type"] == "MissingDriverError"
    assert f"needs the Python database driver {module!r}" in error["message"]
    assert installed in error["hint"] and "pip install" in error["hint"]
    assert "pw-not-shown" not in err


def test_an_mlflow_file_store_says_how_to_move_it_or_open_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A registry that is an ``mlruns`` folder: MLflow 3 refuses it unless told otherwise. The
    error says both ways on, and each works as the hint words it."""
    from modelkeep.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = write_model(tmp_path / "m", tensors(n=1))
    store = ["--store", str(tmp_path / "store")]
    assert main([*store, "--json", "--registry", "./mlruns", "list"]) == RegistryError.exit_code
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["message"] == ("registry ./mlruns is an MLflow file store (mlruns), which "
                                "MLflow no longer opens by default")
    assert error["hint"].startswith(
        "move it into a database: mlflow migrate-filestore --source ./mlruns --target "
        "sqlite:///mlflow.db")
    assert error["hint"].endswith(
        "then open that: --registry sqlite:///mlflow.db; or set MLFLOW_ALLOW_FILE_STORE=true")

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main([*store, "--registry", "./mlruns", "register", "kept", str(folder)]) == 0
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    capsys.readouterr()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    subprocess.run([str(mlflow_cli), "migrate-filestore", "--source", "./mlruns", "--target",
                    "sqlite:///mlflow.db", "--no-progress"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    assert main([*store, "--json", "--registry", "sqlite:///mlflow.db", "show", "kept"]) == 0
    assert json.loads(capsys.readouterr().out)["ref"] == "kept@1"


def test_herokus_postgres_scheme_says_how_to_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from modelkeep.cli.main import main

    monkeypatch.chdir(tmp_path)
    uri = "postgres://ops:pw-not-shown@127.0.0.1:1/mlflow"
    assert main(["--json", "--registry", uri, "list"]) == RegistryError.exit_code
    err = capsys.readouterr().err
    error = json.loads(err)["error"]
    assert error["message"].endswith("MLflow does not know the scheme postgres://")
    assert error["hint"] == "write it postgresql+psycopg2://…"
    assert "pw-not-shown" not in err
