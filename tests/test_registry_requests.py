"""How many requests a register and a snapshot-prefix reference make of an ``mlflow server``.

Every request costs a round trip (10-50 ms, more under load), so the number a command makes is
its floor. A counting proxy on loopback (:mod:`tests.faultproxy`, injecting nothing) stands
between modelkeep and a real ``mlflow server``; what MLflow ends up holding is read back with
MLflow's own ``MlflowClient``, straight from the server. The optional registry methods the
requests are saved with (``latest_without_aliases``, ``versions_by_snapshot``) are compared with
what the plain protocol reads, on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.server.auth.client import AuthServiceClient

import modelkeep
from modelkeep.api import Keep
from modelkeep.catalog.summary import user_text
from modelkeep.errors import NotFoundError, RegistryPermissionError
from modelkeep.hooks import make_plugin_manager
from modelkeep.ops._common import snapshot_of
from modelkeep.ops.summary import refresh_version
from modelkeep.plugins.mlflow.hooks import registry_for
from modelkeep.plugins.mlflow.registry import MlflowRegistry
from modelkeep.plugins.mlflow.rest import RestRegistry
from tests.backends import unique_name
from tests.faultproxy import FaultProxy, in_front_of
from tests.helpers import tensors, write_model

pytestmark = pytest.mark.xdist_group("mlflow-servers")

# What a register of a new version of an existing model asks of the server: the permission
# check (create the model: it exists; delete a tag never set), the newest version's source for
# the delta parent, the newest version again after the ingest for the reuse check, and the new
# version with its description.
REGISTER_REQUESTS = 5


@pytest.fixture
def proxy(mlflow_server: Any) -> Iterator[FaultProxy]:
    with in_front_of(mlflow_server.url) as counting:
        yield counting


def _keep(tmp_path: Path, registry: str) -> Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=registry,
                          plugins=make_plugin_manager(entry_points=False))


def _asked(proxy: FaultProxy) -> list[str]:
    """The requests the proxy saw since it was last reset: method and endpoint."""
    return [f"{r.method} {r.target.split('?', 1)[0].removeprefix('/api/2.0/mlflow/')}"
            for r in proxy.log]


def _client(mlflow_server: Any) -> Any:
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


def _assert_as_refreshed(tmp_path: Path, mlflow_server: Any, name: str, version: int) -> None:
    """The version's description is what refreshing its summary from scratch writes, through
    MLflow's client: refreshing changes nothing."""
    keep = modelkeep.open(store=str(tmp_path / "store"),
                          registry=MlflowRegistry(mlflow_server.url),
                          plugins=make_plugin_manager(entry_points=False))
    client = _client(mlflow_server)
    before = client.get_model_version(name, str(version)).description
    refresh_version(keep, name, version)
    after = client.get_model_version(name, str(version))
    assert after.description == before
    assert f"models:/{name}/{version}" in before


def test_a_register_of_a_new_version_makes_few_requests(
        tmp_path: Path, mlflow_server: Any, proxy: FaultProxy) -> None:
    keep = _keep(tmp_path, proxy.url)
    name = unique_name()
    keep.register(name, write_model(tmp_path / "a", tensors(seed=0, n=2)), message="first")

    proxy.set()
    mv = keep.register(name, write_model(tmp_path / "b", tensors(seed=1, n=2)),
                       message="second\nwith a second line", tags={"step": "2"})
    asked = _asked(proxy)
    assert len(asked) <= REGISTER_REQUESTS, asked
    assert asked.count("POST registered-models/create") == 1, asked
    assert asked.count("POST model-versions/create") == 1, asked
    assert not any("update" in a for a in asked), asked  # the summary went in with the version

    client = _client(mlflow_server)
    found = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version))
    assert [int(m.version) for m in found] == [1, 2] and mv.version == 2
    second = client.get_model_version(name, "2")
    assert second.tags == mv.tags and second.tags["step"] == "2"
    assert second.tags["modelkeep.snapshot"] == mv.snapshot_id
    assert second.source == mv.uri and not second.aliases
    assert user_text(second.description) == "second\nwith a second line"
    _assert_as_refreshed(tmp_path, mlflow_server, name, 2)

    # With an alias: the alias adds its own requests (where it points now, for the plugins
    # asked before anything is stored; the model before and after the move; the alias; its
    # history tag; the model's alias table; the version's summary with the alias in it).
    proxy.set()
    third = keep.register(name, write_model(tmp_path / "c", tensors(seed=2, n=2)),
                          aliases=["prod"])
    asked = _asked(proxy)
    assert len(asked) <= REGISTER_REQUESTS + 7, asked
    assert asked.count("GET registered-models/get") == 2, asked
    assert third.version == 3 and third.aliases == ("prod",)
    assert client.get_model_version_by_alias(name, "prod").version == "3"
    assert "prod" in client.get_model_version(name, "3").description
    _assert_as_refreshed(tmp_path, mlflow_server, name, 3)

    # Identical content: the reuse check reads the version with its aliases, nothing is made;
    # nothing is uploaded either, so the permission check is not asked.
    proxy.set()
    again = keep.register(name, tmp_path / "c")
    assert again.reused and again.version == 3 and again.aliases == ("prod",)
    asked = _asked(proxy)
    assert sorted(asked) == ["GET model-versions/get"] + ["GET model-versions/search"] * 2, asked

    # Content the store holds already, as a new version: asked before the snapshot is written.
    proxy.set()
    back = keep.register(name, tmp_path / "a")
    asked = _asked(proxy)
    assert back.version == 4 and not back.reused
    assert asked.index("POST registered-models/create") < asked.index(
        "POST model-versions/create"), asked


def test_a_register_after_the_newest_version_was_deleted_names_its_own_number(
        tmp_path: Path, mlflow_server: Any) -> None:
    """MLflow never reuses a number: the version expected from the newest one read is not the
    one the server gives, and the summary is written again for the number given."""
    keep = _keep(tmp_path, mlflow_server.url)
    name = unique_name()
    for seed in (0, 1):
        keep.register(name, write_model(tmp_path / f"m{seed}", tensors(seed=seed, n=1)))
    _client(mlflow_server).delete_model_version(name, "2")
    mv = keep.register(name, write_model(tmp_path / "m2", tensors(seed=2, n=1)), message="hi")
    assert mv.version == 3
    description = _client(mlflow_server).get_model_version(name, "3").description
    assert f"models:/{name}/3" in description and f"models:/{name}/2" not in description
    assert user_text(description) == "hi"
    _assert_as_refreshed(tmp_path, mlflow_server, name, 3)


def test_a_model_deleted_after_the_permission_check_is_created_again(
        mlflow_server: Any, proxy: FaultProxy) -> None:
    reg = RestRegistry(proxy.url)
    client = _client(mlflow_server)
    name = unique_name()
    client.create_registered_model(name)
    reg.check_writable(name)
    client.delete_registered_model(name)

    proxy.set()
    rv = reg.create_version(name, f"modelkeep://file/tmp/s/@{1:064x}", tags={"k": "v"},
                            run_id="")
    assert rv.version == 1
    assert _asked(proxy) == ["POST model-versions/create", "POST registered-models/create",
                             "POST model-versions/create"]
    assert client.get_model_version(name, "1").tags == {"k": "v"}

    # Known now: the next version is one request.
    proxy.set()
    assert reg.create_version(name, f"modelkeep://file/tmp/s/@{2:064x}", tags={},
                              run_id="").version == 2
    assert _asked(proxy) == ["POST model-versions/create"]


def _login(monkeypatch: pytest.MonkeyPatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def test_with_basic_auth_a_refused_version_is_retried_only_in_a_deleted_model(
        mlflow_auth_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """basic-auth answers a version of a model that does not exist with a refusal (nobody has a
    permission on it): creating the model tells a deleted model from a real refusal."""
    url = mlflow_auth_server.url
    bob = unique_name("bob")
    _login(monkeypatch, *mlflow_auth_server.admin)
    AuthServiceClient(url).create_user(bob, "bob-password-1234")
    name = unique_name()
    MlflowClient(tracking_uri=url, registry_uri=url).create_registered_model(name)

    with in_front_of(url) as counting:
        _login(monkeypatch, bob, "bob-password-1234")
        reg = RestRegistry(counting.url)
        reg.create_model(name)  # the admin's: it exists, and bob may only read it
        counting.set()
        with pytest.raises(RegistryPermissionError, match="permission denied"):
            reg.create_version(name, f"modelkeep://file/tmp/s/@{1:064x}", tags={}, run_id="")
        assert _asked(counting) == ["POST model-versions/create", "POST registered-models/create"]

        _login(monkeypatch, *mlflow_auth_server.admin)
        MlflowClient(tracking_uri=url, registry_uri=url).delete_registered_model(name)
        counting.set()
        rv = reg.create_version(name, f"modelkeep://file/tmp/s/@{1:064x}", tags={}, run_id="")
        assert rv.version == 1  # in the model bob created again, and may add to
        assert _asked(counting) == ["POST model-versions/create", "POST registered-models/create",
                                    "POST model-versions/create"]


def test_a_snapshot_prefix_resolves_in_one_search(
        tmp_path: Path, mlflow_server: Any, proxy: FaultProxy) -> None:
    keep = _keep(tmp_path, proxy.url)
    name = unique_name()
    versions = [keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=1)))
                for i in range(3)]
    keep.set_alias(f"{name}@2", "prod")
    # Versions another tool registered, and a second version of the first snapshot.
    reg = RestRegistry(mlflow_server.url)
    for i in range(20):
        reg.create_version(name, f"s3://bucket/other/{i}", tags={}, run_id="")
    reg.create_version(name, versions[0].uri, tags={}, run_id="")

    proxy.set()
    found = keep.get(f"{name}@{versions[1].snapshot_id[:8]}")
    assert found.version == 2 and found.aliases == ("prod",)
    asked = _asked(proxy)
    # The prefix is spelled like an alias, which is looked up first; then one search, and
    # the model for the version's aliases.
    assert asked.count("GET model-versions/search") == 1, asked
    assert len(asked) <= 3, asked

    with pytest.raises(Exception, match=f"is held by 2 versions of {name} "
                       rf"\({name}@1, {name}@24\)"):
        keep.get(f"{name}@{versions[0].snapshot_id[:10]}")
    with pytest.raises(NotFoundError, match="no version whose snapshot id starts with"):
        keep.get(f"{name}@{'0' * 7}1" if not versions[2].snapshot_id.startswith("00000001")
                 else f"{name}@{'0' * 7}2")
    with pytest.raises(NotFoundError, match="model"):
        keep.get(f"{unique_name()}@{versions[2].snapshot_id[:8]}")


@pytest.fixture(params=["sqlite", "server", "mlflow-client"])
def registry_uri(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "server":
        return "server", str(request.getfixturevalue("mlflow_server").url)
    return request.param, f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_optional_reads_equal_the_plain_ones(registry_uri: tuple[str, str]) -> None:
    kind, uri = registry_uri
    reg = MlflowRegistry(uri) if kind == "mlflow-client" else registry_for(uri)
    name = unique_name()
    assert reg.latest_without_aliases(name) is None  # type: ignore[attr-defined]
    sids = [f"ab{i:062x}" for i in range(1, 4)] + ["ac" + "0" * 62]
    for sid in sids:
        reg.create_version(name, f"modelkeep://file/tmp/s_1/@{sid}", tags={"t": sid[-4:]},
                           run_id="")
    reg.create_version(name, "s3://bucket/ab/@ab" + "0" * 62, tags={}, run_id="")
    # A source set by hand may name its snapshot by a prefix.
    reg.create_version(name, f"modelkeep://file/tmp/s_1/@{sids[0][:10]}", tags={}, run_id="")
    reg.set_alias(name, "prod", 2)
    reg.set_alias(name, "top", 6)
    reg.delete_version(name, 3)

    latest = reg.latest(name)
    assert latest is not None and latest.aliases == ("top",)
    assert latest == reg.get_version(name, latest.version)
    assert reg.latest(unique_name()) is None
    assert reg.latest_without_aliases(name) == replace(latest, aliases=())  # type: ignore[attr-defined]
    every = reg.versions(name)
    for prefix in ("ab", "ab000", sids[0][:12], sids[1], "ac", "abcd"):
        want = [rv for rv in every if (snapshot_of(rv) or "").startswith(prefix)]
        got = [rv for rv in reg.versions_by_snapshot(name, prefix)  # type: ignore[attr-defined]
               if (snapshot_of(rv) or "").startswith(prefix)]
        assert got == want, prefix
    assert [rv.version for rv in reg.versions_by_snapshot(name, sids[1])] == [2]  # type: ignore[attr-defined]
    assert reg.versions_by_snapshot(name, sids[1])[0].aliases == ("prod",)  # type: ignore[attr-defined]
    found = reg.versions_by_snapshot(name, "ac")  # type: ignore[attr-defined]
    assert [(rv.version, rv.tags) for rv in found] == [(4, {"t": "0000"})]  # nothing else read
    with pytest.raises(NotFoundError):
        reg.versions_by_snapshot(unique_name(), "ab")  # type: ignore[attr-defined]
    # Every model with its newest version, in one search where the registry has it.
    model_list = getattr(reg, "model_list", None)
    if model_list is not None:
        empty = unique_name()
        reg.create_model(empty)
        reg.delete_version(name, 6)  # the newest: the model's newest is now 5
        listed = model_list()
        assert [m.name for m, _n in listed] == reg.models()
        by_name = dict((m.name, (m, n)) for m, n in listed)
        for model in (name, empty):
            newest = reg.latest_without_aliases(model)  # type: ignore[attr-defined]
            assert by_name[model] == (reg.get_model(model), newest.version if newest else None)
        assert by_name[name][1] == 5 and by_name[empty][1] is None


def test_list_asks_one_search_however_many_models(
        tmp_path: Path, mlflow_server: Any, proxy: FaultProxy) -> None:
    keep = _keep(tmp_path, proxy.url)
    names = [unique_name() for _ in range(3)]
    for i, name in enumerate(names):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=1)),
                      aliases=["prod"] if i == 1 else ())
    proxy.set()
    listed = {m.name: m for m in keep.model_list()}
    assert _asked(proxy) == ["GET registered-models/search"]
    for name in names:
        assert listed[name] == keep.model(name)
    assert listed[names[1]].aliases == {"prod": 1} and listed[names[0]].latest == 1


def _versions_with_prod_at_2(keep: Keep, tmp_path: Path, count: int) -> str:
    """A new model with *count* versions and its alias ``prod`` on version 2: its name."""
    name = unique_name()
    for i in range(count):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=1)))
    keep.set_alias(f"{name}@2", "prod")
    return name


def test_log_reads_the_model_once_beside_its_newest_versions(
        tmp_path: Path, mlflow_server: Any, proxy: FaultProxy) -> None:
    keep = _keep(tmp_path, proxy.url)
    name = _versions_with_prod_at_2(keep, tmp_path, 3)
    proxy.set()
    history = keep.log(name, limit=2)
    assert sorted(_asked(proxy)) == ["GET model-versions/search", "GET registered-models/get"]
    assert [v.version for v in history.versions.versions] == [2, 3]
    assert history.versions.truncated and history.model.latest == 3
    assert history.model.aliases == {"prod": 2}
    assert [e.alias for e in history.alias_history] == ["prod"]
    reg = RestRegistry(mlflow_server.url)
    model, found, truncated = reg.model_with_newest(name, 2)
    assert (model, found, truncated) == (reg.get_model(name), *reg.newest_versions(name, 2))


def test_the_newest_version_is_one_round_trip(
        tmp_path: Path, mlflow_server: Any, proxy: FaultProxy) -> None:
    """``show NAME`` (``NAME@latest``) asks the newest version and the model, whose aliases the
    search results lack, together."""
    keep = _keep(tmp_path, proxy.url)
    name = _versions_with_prod_at_2(keep, tmp_path, 2)
    proxy.set()
    newest = keep.get(name)
    assert sorted(_asked(proxy)) == ["GET model-versions/search", "GET registered-models/get"]
    assert newest == keep.get(f"{name}@2") and newest.aliases == ("prod",)
