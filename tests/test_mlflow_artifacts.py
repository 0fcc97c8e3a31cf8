"""MLflow reads modelkeep versions through the ``modelkeep`` artifact repository: ``models:/``
URIs in the client, and an ``mlflow server`` process serving a version's files."""

from __future__ import annotations

import tempfile
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

import modelkeep
from modelkeep.store import Kind, Store
from modelkeep.store.readcache import ReadCache
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model

MODEL_CODE = textwrap.dedent(
    """
    import mlflow
    from mlflow.pyfunc import PythonModel


    class Doubler(PythonModel):
        def predict(self, context, model_input, params=None):
            return [2 * x for x in model_input["x"]]


    mlflow.models.set_model(Doubler())
    """
)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A read cache and a temporary folder of the test's own, to see what lands in each."""
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


@pytest.fixture
def registry_uri(mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_sqlite_uri)
    return mlflow_sqlite_uri


def _pyfunc_model(folder: Path) -> Path:
    """A pyfunc model saved "from code": the model is a Python file, nothing is pickled."""
    code = folder.parent / "doubler.py"
    code.write_text(MODEL_CODE)
    mlflow.pyfunc.save_model(str(folder), python_model=str(code))
    return folder


def test_pyfunc_model_loads_by_alias_and_predicts(tmp_path: Path, registry_uri: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry_uri)
    name = unique_name()
    keep.register(name, _pyfunc_model(tmp_path / "pyfunc"), aliases=["champion"])
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert list(model.predict(pd.DataFrame({"x": [1, 2, 5]}))) == [2, 4, 10]


def test_loading_a_version_twice_downloads_it_once(tmp_path: Path, registry_uri: str,
                                                   private_dirs: Path) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry_uri)
    name = unique_name()
    keep.register(name, _pyfunc_model(tmp_path / "pyfunc"), aliases=["champion"])
    first = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    cached = ReadCache().entries()
    assert len(cached) == 1
    # Every chunk out of reach: a second load can only come from the cache.
    chunks = tmp_path / "store" / "chunks"
    chunks.rename(tmp_path / "store" / "chunks-away")
    try:
        second = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        assert list(second.predict(pd.DataFrame({"x": [3]}))) == [6]
        out = mlflow.artifacts.download_artifacts(f"models:/{name}@champion",
                                                  dst_path=str(tmp_path / "o"))
        assert (Path(out) / "MLmodel").stat().st_ino == (cached[0].path / "MLmodel").stat().st_ino
    finally:
        (tmp_path / "store" / "chunks-away").rename(chunks)
    assert list(first.predict(pd.DataFrame({"x": [1]}))) == [2]
    assert [e.path for e in ReadCache().entries()] == [cached[0].path]


def test_plain_weights_folder_by_reference(tmp_path: Path, registry_uri: str,
                                           private_dirs: Path) -> None:
    """A folder of weights is not an MLflow model: download_artifacts gives its read-only
    folder, and load_model says what is missing, leaving nothing in the temporary folder."""
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry_uri)
    name = unique_name()
    src = write_model(tmp_path / "m", tensors(n=3))
    keep.register(name, src, aliases=["champion"])
    out = mlflow.artifacts.download_artifacts(f"models:/{name}@champion")
    assert Path(out) == keep.fetch(f"{name}@champion")
    assert tree_digest(Path(out)) == tree_digest(src)
    with pytest.raises(MlflowException, match="MLmodel"):
        mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert list(private_dirs.iterdir()) == []


def test_download_artifacts_of_a_version(tmp_path: Path, registry_uri: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry_uri)
    name = unique_name()
    src = write_model(tmp_path / "m", tensors(n=3))
    keep.register(name, src)
    keep.register(name, write_model(tmp_path / "m2", tensors(seed=9, n=3)))
    out = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "o"))
    assert tree_digest(Path(out)) == tree_digest(src)
    one = mlflow.artifacts.download_artifacts(
        f"models:/{name}/1/tokenizer/vocab.txt", dst_path=str(tmp_path / "one"))
    assert Path(one).read_bytes() == (src / "tokenizer" / "vocab.txt").read_bytes()


def test_repository_lists_folders_and_refuses_writes(tmp_path: Path, registry_uri: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry_uri)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    repo = get_artifact_repository(v.uri)
    top = {(i.path, i.is_dir) for i in repo.list_artifacts()}
    assert top == {("config.json", False), ("model.safetensors", False), ("run.sh", False),
                   ("tokenizer", True)}
    assert [i.path for i in repo.list_artifacts("tokenizer")] == [
        "tokenizer/empty.txt", "tokenizer/vocab.txt"]
    sub = get_artifact_repository(f"{v.uri}/tokenizer")
    assert [i.path for i in sub.list_artifacts()] == ["empty.txt", "vocab.txt"]
    with pytest.raises(MlflowException, match="never changes"):
        repo.log_artifact(str(tmp_path / "m" / "config.json"))


def test_corrupt_chunk_fails_download_without_leaving_a_file(
    tmp_path: Path, registry_uri: str
) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry_uri)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2), extra=False))
    cid = v.files[0].chunks[-1][0]
    path = Path(keep.store.db.path(Kind.CHUNK, cid))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(MlflowException, match="corrupt"):
        get_artifact_repository(v.uri).download_artifacts("model.safetensors", str(dst))
    assert not (dst / "model.safetensors").exists()


def test_mlflow_server_serves_version_files(tmp_path: Path, mlflow_server) -> None:  # type: ignore[no-untyped-def]
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_server.url)
    src = write_model(tmp_path / "m", tensors(n=3))
    name = unique_name()
    keep.register(name, src)
    for rel in ("config.json", "model.safetensors", "tokenizer/vocab.txt"):
        query = urllib.parse.urlencode({"name": name, "version": "1", "path": rel})
        with urllib.request.urlopen(
            f"{mlflow_server.url}/model-versions/get-artifact?{query}", timeout=60
        ) as resp:
            assert resp.read() == (src / rel).read_bytes(), rel
    query = urllib.parse.urlencode({"name": name, "version": "1", "path": "nope.bin"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{mlflow_server.url}/model-versions/get-artifact?{query}",
                               timeout=60)


def _run_store_experiment(tmp_path: Path) -> tuple[Store, str]:
    store = Store.open(str(tmp_path / "store"))
    experiment = mlflow.create_experiment(unique_name(), artifact_location=store.runs_uri("exp"))
    return store, experiment


def test_run_checkpoints_share_unchanged_bytes(tmp_path: Path, registry_uri: str) -> None:
    store, experiment = _run_store_experiment(tmp_path)
    ts = tensors(n=20)
    ckpt = tmp_path / "ckpt"
    with mlflow.start_run(experiment_id=experiment) as run:
        for epoch in range(3):
            if epoch:
                change_fraction(ts, 0.1, seed=epoch)
            write_model(ckpt, ts, extra=False)
            mlflow.log_artifact(str(ckpt / "model.safetensors"), artifact_path=f"epoch-{epoch}")
        mlflow.log_artifact(str(ckpt / "model.safetensors"), artifact_path="epoch-2")  # again
    one = (ckpt / "model.safetensors").stat().st_size
    # Three checkpoints, each 10% different from the one before: about 1.2 checkpoints stored.
    assert store.stored_bytes(Kind.CHUNK) < 1.4 * one
    run_id = run.info.run_id
    assert [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id)] == [
        "epoch-0", "epoch-1", "epoch-2"]
    out = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="epoch-2", dst_path=str(tmp_path / "dl"))
    assert (Path(out) / "model.safetensors").read_bytes() == (
        ckpt / "model.safetensors").read_bytes()


def test_logged_pyfunc_model_loads_from_a_run(tmp_path: Path, registry_uri: str) -> None:
    store, experiment = _run_store_experiment(tmp_path)
    code = tmp_path / "doubler.py"
    code.write_text(MODEL_CODE)
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code))
    assert store.stored_bytes(Kind.CHUNK) > 0
    for uri in (info.model_uri, f"runs:/{run.info.run_id}/model"):
        model = mlflow.pyfunc.load_model(uri)
        assert list(model.predict(pd.DataFrame({"x": [3]}))) == [6]


def test_run_artifact_paths_cannot_escape(tmp_path: Path, registry_uri: str) -> None:
    _store, experiment = _run_store_experiment(tmp_path)
    src = tmp_path / "f.txt"
    src.write_text("x")
    with mlflow.start_run(experiment_id=experiment), pytest.raises(MlflowException):
        mlflow.log_artifact(str(src), artifact_path="../../outside")
    assert not list(tmp_path.rglob("outside"))


def test_server_proxies_run_artifacts_into_the_store(
    tmp_path: Path, mlflow_server, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    store = Store.open(str(mlflow_server.store))
    ts = tensors(n=20, seed=5)
    ckpt = tmp_path / "ckpt"
    experiment = mlflow.create_experiment(unique_name())
    stored = [store.stored_bytes(Kind.CHUNK) if mlflow_server.store.exists() else 0]
    with mlflow.start_run(experiment_id=experiment) as run:
        for epoch in range(2):
            if epoch:
                change_fraction(ts, 0.1, seed=epoch)
            write_model(ckpt, ts, extra=False)
            mlflow.log_artifact(str(ckpt / "model.safetensors"), artifact_path=f"epoch-{epoch}")
            stored.append(store.stored_bytes(Kind.CHUNK))
    first, second = stored[1] - stored[0], stored[2] - stored[1]
    assert first > 0
    assert second < 0.3 * first  # the second checkpoint added only its changed tensors
    out = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="epoch-1", dst_path=str(tmp_path / "dl"))
    assert (Path(out) / "model.safetensors").read_bytes() == (
        ckpt / "model.safetensors").read_bytes()
