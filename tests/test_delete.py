"""``modelkeep delete``: one version or a whole model, on the SQLite default and on an ``mlflow
server``; then ``gc`` reclaims their unique bytes and every other version pulls byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelkeep
from modelkeep.cli.main import main
from modelkeep.store import Store
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model

pytestmark = pytest.mark.xdist_group("mlflow-servers")


@pytest.fixture(params=["sqlite", "server"])
def project(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    if request.param == "sqlite":
        registry = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        registry = str(request.getfixturevalue("mlflow_server").url)
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELKEEP_AUTHOR", "ana@lab")
    assert main(["init", "--registry", registry, "--no-gitignore"]) == 0
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> dict:
    capsys.readouterr()
    assert main(["--json", *args]) == code, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(out) if out else {}


def stored(project: Path) -> int:
    return Store.open(str(project / ".modelkeep" / "store")).stored_bytes()


def collect(capsys: pytest.CaptureFixture[str]) -> int:
    """Two collections with no grace period: the first hides, the second deletes."""
    first = run(capsys, "gc", "--grace", "0s")
    second = run(capsys, "gc", "--grace", "0s")
    assert first["bytes_reclaimed"] == 0
    return int(second["bytes_reclaimed"])


def test_delete_a_version_then_a_model(project: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    name, other = unique_name("del"), unique_name("keep")
    ts = tensors(n=10)
    folders: dict[str, Path] = {}

    def register(model: str, version: int, *extra: str) -> None:
        src = write_model(project / "src" / f"{model}-{version}", ts)
        folders[f"{model}@{version}"] = src
        assert run(capsys, "register", model, str(src), *extra)["version"] == version

    register(name, 1)
    change_fraction(ts, 0.3, seed=2)
    register(name, 2, "--parent", f"{name}@1")
    change_fraction(ts, 0.3, seed=3)
    register(name, 3, "--parent", f"{name}@2", "--alias", "champion")
    register(other, 1)  # the same tensors as name@3: shares most of its chunks
    before = stored(project)

    # An aliased version of an immutable model is refused, and --all deletes nothing then.
    run(capsys, "delete", f"{name}@champion", "--yes", code=9)
    run(capsys, "delete", name, "--all", "--yes", code=9)
    assert [v["version"] for v in run(capsys, "list", name)["versions"]] == [1, 2, 3]

    # No terminal: no question asked.
    gone = run(capsys, "delete", f"{name}@2")
    [d] = gone["deleted"]
    assert (d["ref"], d["snapshot_deleted"], d["author"]) == (f"{name}@2", True, "ana@lab")
    assert gone["reclaimable_bytes"] > 0
    assert [v["version"] for v in run(capsys, "list", name)["versions"]] == [1, 3]
    assert collect(capsys) == gone["reclaimable_bytes"]
    assert stored(project) == before - gone["reclaimable_bytes"]
    log = run(capsys, "log", name)
    assert [(e["version"], e["author"]) for e in log["deletions"]] == [(2, "ana@lab")]
    assert log["deletions"][0]["snapshot_id"] == d["snapshot_id"]

    assert main(["alias", "--delete", name, "champion"]) == 0
    whole = run(capsys, "delete", name, "--all", "--yes")
    assert [x["version"] for x in whole["deleted"]] == [1, 3]
    # name@3's chunks are name@1's chunks too where other@1 shares them: only the rest goes.
    assert 0 < whole["reclaimable_bytes"] < stored(project)
    assert collect(capsys) == whole["reclaimable_bytes"]
    assert run(capsys, "list", name)["versions"] == []
    log = run(capsys, "log", name)
    assert [e["version"] for e in log["deletions"]] == [3, 1, 2]  # newest first
    assert log["versions"] == []

    # What is left pulls byte-identical, from the store alone.
    run(capsys, "pull", f"{other}@1", str(project / "out"), "--no-cache")
    assert tree_digest(project / "out") == tree_digest(folders[f"{other}@1"])
    assert run(capsys, "verify")["ok"] is True

    capsys.readouterr()
    assert main(["log", name]) == 0
    text = capsys.readouterr().out
    assert f"deleted {name}@2" in text and "ana@lab" in text
    # A model with no versions left is said in words, not shown as an empty table.
    assert main(["list", name]) == 0
    assert capsys.readouterr().out.strip() == (
        f"model {name!r} has no versions (3 deleted: `modelkeep log {name}`)")
    assert main(["list"]) == 0
    assert any(name in line and "none" in line for line in capsys.readouterr().out.splitlines())


def test_delete_answers(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("del")
    src = write_model(project / "m", tensors(n=2), extra=False)
    run(capsys, "register", name, str(src))
    capsys.readouterr()
    assert main(["delete", f"{name}@1", "--all"]) == 2
    assert "takes a model name" in capsys.readouterr().err
    assert main(["delete", f"{name}@7"]) == 3
    assert main(["delete", unique_name("nope"), "--all"]) == 3
    # A refused confirmation deletes nothing; the confirmation is asked with what would go.
    keep = modelkeep.open()
    asked: list[list[str]] = []
    report = keep.delete(name, all_versions=True, confirm=lambda refs: asked.append(
        list(refs)) is not None)
    assert report.cancelled and report.versions == () and asked == [[f"{name}@1"]]
    assert keep.get(f"{name}@1").version == 1
    assert main(["delete", f"{name}@1", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {name}@1" in out and "modelkeep gc` will reclaim" in out
