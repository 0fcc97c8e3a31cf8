"""Inside an MLflow run: versions are linked to the run, and runs are tagged with the git commit
and the modelkeep store (the ``mlflow.run_context_provider`` entry point)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking.context.registry import _run_context_provider_registry

import modelkeep
from modelkeep.plugins.mlflow.run_context import ModelkeepRunContext, git_commit
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def tracking(mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_sqlite_uri)
    return mlflow_sqlite_uri


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()


def test_version_registered_inside_a_run_is_linked_to_it(tmp_path: Path, tracking: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=tracking)
    name = unique_name()
    with mlflow.start_run() as run:
        inside = keep.register(name, write_model(tmp_path / "a", tensors(seed=1, n=2)))
    outside = keep.register(name, write_model(tmp_path / "b", tensors(seed=2, n=2)))
    assert keep.registry.get_version(name, inside.version).run_id == run.info.run_id
    assert keep.registry.get_version(name, outside.version).run_id is None
    # MLflow shows the link: the version's run is a real run of the tracking store.
    linked = mlflow.MlflowClient().get_model_version(name, str(inside.version))
    assert mlflow.get_run(linked.run_id).info.run_id == run.info.run_id


def test_runs_are_tagged_with_git_commit_and_store(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert any(isinstance(p, ModelkeepRunContext) for p in _run_context_provider_registry)
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print('train')\n")
    (repo / "modelkeep.toml").write_text('store = "s3://team-models/keep"\n')
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "train")
    head = _git(repo, "rev-parse", "HEAD")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MODELKEEP_STORE", raising=False)
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["modelkeep.git.commit"] == head
    assert tags["modelkeep.store"] == "s3://team-models/keep"


def test_outside_git_no_commit_tag_and_no_error(
    tmp_path: Path, tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never see an enclosing repo
    monkeypatch.setenv("MODELKEEP_STORE", "https://user:secret@models.example/keep")
    assert git_commit() is None
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert "modelkeep.git.commit" not in tags
    assert tags["modelkeep.store"] == "https://models.example/keep"  # credentials left out
    # Settings that do not parse leave the store tag out rather than failing the run.
    (plain / "modelkeep.toml").write_text("store = [unclosed\n")
    monkeypatch.delenv("MODELKEEP_STORE")
    assert ModelkeepRunContext().tags() == {}
