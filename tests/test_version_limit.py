"""``list NAME`` and ``log`` show a model's newest versions (``--limit N``, default 20), and every
version with ``--all``; ``--json`` says when older versions were left out. Checked on each
registry adapter (SQL on the SQLite file, REST to an ``mlflow server``, MLflow's client, and a
registry without ``newest_versions``), against what the adapter's full ``versions()`` reads."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import modelkeep
from modelkeep.cli.main import DEFAULT_VERSIONS, main
from modelkeep.errors import InvalidInputError, NotFoundError
from modelkeep.keep import Keep
from modelkeep.plugins.mlflow.registry import MlflowRegistry
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, write_model

pytestmark = pytest.mark.xdist_group("mlflow-servers")

VERSIONS = DEFAULT_VERSIONS + 3  # more than the default shows


class PlainRegistry:
    """A registry offering only the protocol's required methods (no ``newest_versions``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.uri = inner.uri

    def __getattr__(self, attr: str) -> Any:
        if attr == "newest_versions":
            raise AttributeError(attr)
        return getattr(self._inner, attr)


@pytest.fixture(scope="module", params=["sqlite", "server"])
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model with VERSIONS versions, an alias on version 2 and version 5 deleted, in a
    SQLite file or an ``mlflow server``. The first two and the last two are registered with
    content of their own; those between name the second's snapshot, as a run's checkpoints
    that changed nothing would."""
    root = tmp_path_factory.mktemp("limit")
    if request.param == "sqlite":
        uri = f"sqlite:///{root / 'mlflow.db'}"
    else:
        uri = str(request.getfixturevalue("mlflow_server").url)
    store = str(root / "store")
    keep = modelkeep.open(store=store, registry=uri)
    name = unique_name()
    ts = tensors(n=2, rows=8, cols=8)
    keep.register(name, write_model(root / "m1", ts), message="first")
    change_fraction(ts, 0.5)
    second = keep.register(name, write_model(root / "m2", ts), aliases=["prod"], message="second")
    rv = keep.registry.get_version(name, second.version)
    for _ in range(VERSIONS - 3):  # one more than VERSIONS - 4: version 5 is deleted below
        keep.registry.create_version(name, rv.source, tags=dict(rv.tags),
                                     description=rv.description, run_id="")
    time.sleep(1.1)  # times are to the second: the last two are newer than the alias
    for i in (3, 4):
        change_fraction(ts, 0.5)
        keep.register(name, write_model(root / f"m{i}", ts), message=f"run {i}")
    keep.delete_version(f"{name}@5")
    return {"keep": keep, "name": name, "base": ["--store", store, "--registry", uri],
            "numbers": [v for v in range(1, VERSIONS + 2) if v != 5]}


def cli(world: dict[str, Any], capsys: pytest.CaptureFixture[str], *args: str,
        code: int = 0) -> tuple[str, str]:
    capsys.readouterr()
    assert main([*world["base"], *args]) == code
    out, err = capsys.readouterr()
    return out, err


def test_the_registry_pages_from_the_newest(world: dict[str, Any]) -> None:
    keep: Keep = world["keep"]
    registry: Any = keep.registry
    name = world["name"]
    every = registry.versions(name)
    assert [rv.version for rv in every] == world["numbers"]
    slow = MlflowRegistry(registry.uri)
    for limit in (1, 3, VERSIONS - 1, VERSIONS, VERSIONS + 5):
        found, truncated = registry.newest_versions(name, limit)
        assert found == every[-limit:], limit  # tags, aliases, descriptions and all
        assert truncated == (limit < len(every)), limit
        assert slow.newest_versions(name, limit) == (found, truncated)
    [(two)] = [rv for rv in registry.newest_versions(name, VERSIONS)[0] if rv.version == 2]
    assert two.aliases == ("prod",)
    with pytest.raises(NotFoundError):
        registry.newest_versions(unique_name(), 3)
    with pytest.raises(NotFoundError):
        slow.newest_versions(unique_name(), 3)


@pytest.mark.parametrize("adapter", ["own", "plain"])
def test_version_list_is_the_newest_of_every_version(world: dict[str, Any],
                                                     adapter: str) -> None:
    base: Keep = world["keep"]
    keep = (base if adapter == "own"
            else Keep(base.store, PlainRegistry(base.registry),
                      plugins=base.plugins))
    name = world["name"]
    every = keep.version_list(name)
    assert [v.version for v in every.versions] == world["numbers"]
    assert (every.truncated, every.limit) == (False, None)
    assert every.versions == tuple(keep.versions(name))
    newest = keep.version_list(name, limit=4)
    assert newest.versions == every.versions[-4:] and newest.truncated and newest.limit == 4
    log = keep.log(name, limit=2)
    assert [v.version for v in log.versions.versions] == world["numbers"][-2:]
    assert log.model.latest == world["numbers"][-1] and log.model.aliases == {"prod": 2}
    assert [e.alias for e in log.alias_history] == ["prod"]
    assert [d.version for d in log.deletions] == [5]
    with pytest.raises(InvalidInputError):
        keep.version_list(name, limit=0)


def test_list_shows_the_newest_versions_and_says_so(world: dict[str, Any],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    name, numbers = world["name"], world["numbers"]
    listed = json.loads(cli(world, capsys, "--json", "list", name)[0])
    assert [v["version"] for v in listed["versions"]] == numbers[-DEFAULT_VERSIONS:]
    assert (listed["name"], listed["truncated"], listed["limit"]) == (name, True,
                                                                      DEFAULT_VERSIONS)
    three = json.loads(cli(world, capsys, "list", name, "--limit", "3", "--json")[0])
    assert [v["version"] for v in three["versions"]] == numbers[-3:] and three["truncated"]
    every = json.loads(cli(world, capsys, "--json", "list", name, "--all")[0])
    assert [v["version"] for v in every["versions"]] == numbers  # every one, oldest first
    assert (every["truncated"], every["limit"]) == (False, None)
    assert every["versions"][1]["aliases"] == ["prod"]
    assert every["versions"][-3:] == three["versions"]  # the same objects either way
    enough = json.loads(cli(world, capsys, "--json", "list", name, "-n", str(len(numbers)))[0])
    assert enough["versions"] == every["versions"] and not enough["truncated"]

    out, err = cli(world, capsys, "list", name, "-n", "2")
    rows = [line.split()[1] for line in out.splitlines() if line[:1] in "│|"
            and line.split()[1].isdigit()]
    assert rows == [str(v) for v in numbers[-2:]]
    assert "newest 2 versions" in err and "--all" in err
    out, err = cli(world, capsys, "list", name, "--all")
    assert f" {numbers[0]} " in out and "--all" not in err


def test_log_shows_the_newest_versions_newest_first(world: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    name, numbers = world["name"], world["numbers"]
    log = json.loads(cli(world, capsys, "--json", "log", name, "-n", "3")[0])
    assert [v["version"] for v in log["versions"]] == numbers[-3:][::-1]
    assert (log["truncated"], log["limit"]) == (True, 3)
    assert log["model"]["latest"] == numbers[-1] and log["model"]["aliases"] == {"prod": 2}
    # The histories are the model's, complete whatever the limit.
    assert [e["alias"] for e in log["alias_history"]] == ["prod"]
    assert [d["version"] for d in log["deletions"]] == [5]
    whole = json.loads(cli(world, capsys, "--json", "log", name, "--all")[0])
    assert [v["version"] for v in whole["versions"]] == numbers[::-1]
    assert (whole["truncated"], whole["limit"]) == (False, None)
    default = json.loads(cli(world, capsys, "--json", "log", name)[0])
    assert len(default["versions"]) == DEFAULT_VERSIONS and default["truncated"]

    out, err = cli(world, capsys, "log", name, "-n", "2")
    shown = [line.split()[0] for line in out.splitlines() if line.startswith(f"{name}@")]
    assert shown == [f"{name}@{v}" for v in numbers[-2:][::-1]]
    # What happened among the versions left out is left out too; what happened since is not.
    assert "alias prod" not in out and f"deleted {name}@5" in out
    assert "newest 2 versions" in err and "--all" in err
    out, _err = cli(world, capsys, "log", name, "--all")
    assert "alias prod" in out and f"deleted {name}@5" in out and f"{name}@1 " in out


def test_contradicting_or_misplaced_limits_are_refused(world: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    name = world["name"]
    for args in (["list", name, "--all", "--limit", "3"], ["log", name, "-n", "2", "--all"],
                 ["list", "--limit", "3"], ["list", "--all"], ["list", name, "--limit", "0"]):
        _out, err = cli(world, capsys, *args, code=InvalidInputError.exit_code)
        assert err.strip(), args
