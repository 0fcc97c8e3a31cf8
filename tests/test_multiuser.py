"""Several users, one MLflow server: modelkeep against ``mlflow server`` processes backed by SQLite,
PostgreSQL and MariaDB, and a server with basic-auth whose refusals become clear errors.

The servers are session fixtures; the module runs on one xdist worker (``--dist loadgroup``), so
a test session starts each of them once.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.server.auth.client import AuthServiceClient

import modelkeep
from modelkeep import aliases as history
from modelkeep.cli.main import main
from modelkeep.errors import RegistryAuthError, RegistryPermissionError
from modelkeep.hooks import make_plugin_manager
from tests.backends import unique_name
from tests.helpers import tensors, write_model
from tests.test_mlflow_artifacts import MODEL_CODE

pytestmark = pytest.mark.xdist_group("mlflow-servers")


# Session-scoped, so pytest groups the tests by backend and starts each server once.
@pytest.fixture(scope="session",
                params=["mlflow_server", "mlflow_postgres_server", "mlflow_mariadb_server"],
                ids=["sqlite", "postgresql", "mariadb"])
def server(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def pyfunc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pyfunc model saved from code once; requirements given, which spares MLflow inferring
    them in a subprocess."""
    folder = tmp_path_factory.mktemp("pyfunc") / "model"
    code = folder.parent / "doubler.py"
    code.write_text(MODEL_CODE)
    mlflow.pyfunc.save_model(str(folder), python_model=str(code), pip_requirements=["mlflow"])
    return folder


def test_register_load_and_roll_back_through_the_server(
    server, pyfunc_model: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=server.url,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    v1 = keep.register(name, pyfunc_model, aliases=["champion"])
    v2 = keep.register(name, pyfunc_model, force=True)
    keep.set_alias(v2.ref, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert list(model.predict(pd.DataFrame({"x": [1, 4]}))) == [2, 8]
    assert keep.rollback(name, "champion").version == v1.version
    assert mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version == "1"

    # The server reads the version's files through the plugin.
    query = urllib.parse.urlencode({"name": name, "version": "1", "path": "MLmodel"})
    with urllib.request.urlopen(f"{server.url}/model-versions/get-artifact?{query}",
                                timeout=60) as resp:
        assert resp.read() == (pyfunc_model / "MLmodel").read_bytes()

    # A history at the size limit fits the registered-model tag column of this database.
    events = [history.AliasEvent("champion", 1 + i % 2, "2026-01-01T00:00:00Z", "u" * 40, "set")
              for i in range(300)]
    text = history.encode(events)
    assert len(text) > history.MAX_HISTORY_CHARS - 100
    keep.registry.set_model_tag(name, history.HISTORY_TAG + "champion", text)
    assert keep.registry.get_model(name).tags[history.HISTORY_TAG + "champion"] == text
    assert keep.rollback(name, "champion").version == 2


def test_concurrent_registrations_get_distinct_versions(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = unique_name()
    sources = [write_model(tmp_path / f"m{i}", tensors(seed=20 + i, n=2), extra=False)
               for i in range(4)]
    pm = make_plugin_manager(entry_points=False)

    def register(path: Path) -> tuple[int, str]:
        keep = modelkeep.open(store=str(tmp_path / "store"), registry=server.url, plugins=pm)
        v = keep.register(name, path)
        return v.version, v.snapshot_id

    with ThreadPoolExecutor(4) as pool:
        done = sorted(pool.map(register, sources))
    assert [v for v, _sid in done] == [1, 2, 3, 4]
    assert len({sid for _v, sid in done}) == 4


# -- basic-auth -----------------------------------------------------------------------------------


def _login(monkeypatch: pytest.MonkeyPatch, user: str | None, password: str | None) -> None:
    for var, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


def test_basic_auth_permissions_become_clear_errors(
    mlflow_auth_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = mlflow_auth_server.url
    alice, bob = unique_name("alice"), unique_name("bob")
    _login(monkeypatch, *mlflow_auth_server.admin)
    admin = AuthServiceClient(url)
    admin.create_user(alice, "alice-password-1234")
    admin.create_user(bob, "bob-password-1234")
    pm = make_plugin_manager(entry_points=False)
    store = str(tmp_path / "store")

    def keep():  # type: ignore[no-untyped-def]
        return modelkeep.open(store=store, registry=url, plugins=pm)

    _login(monkeypatch, alice, "alice-password-1234")
    name = unique_name()
    v = keep().register(name, write_model(tmp_path / "a", tensors(n=2), extra=False),
                        aliases=["champion"])
    assert keep().get(f"{name}@champion").version == v.version

    # Bob may read (the server's default permission) but not change Alice's model.
    _login(monkeypatch, bob, "bob-password-1234")
    assert keep().get(f"{name}@champion").snapshot_id == v.snapshot_id
    with pytest.raises(RegistryPermissionError, match=f"permission denied for user '{bob}'"):
        keep().set_alias(v.ref, "production")
    with pytest.raises(RegistryPermissionError) as info:
        keep().register(name, write_model(tmp_path / "b", tensors(seed=3, n=2), extra=False))
    assert isinstance(info.value, PermissionError) and "EDIT" in info.value.hint
    capsys.readouterr()
    assert main(["--store", store, "--registry", url, "alias", v.ref, "production"]) == 6
    err = capsys.readouterr().err
    assert err.startswith(f"error: registry {url} refused") and "permission denied" in err
    assert err.count("\n") == 1

    # Wrong or missing credentials: a login problem, not a permission problem.
    _login(monkeypatch, bob, "wrong-password")
    with pytest.raises(RegistryAuthError, match="not logged in"):
        keep().get(v.ref)
    _login(monkeypatch, None, None)
    with pytest.raises(RegistryAuthError) as missing:
        keep().models()
    assert "MLFLOW_TRACKING_USERNAME" in str(missing.value)
