"""Aliases, rollback, promote and descriptions, end to end on a real MLflow registry (SQLite),
through the API and the CLI, with the alias hooks in the way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import modelkeep
from modelkeep import aliases as history
from modelkeep.api import Keep
from modelkeep.catalog import summary
from modelkeep.cli.main import main
from modelkeep.errors import NotFoundError, VetoError
from modelkeep.hooks import PluginManager, hookimpl, make_plugin_manager
from modelkeep.store import Kind
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def pm() -> PluginManager:
    return make_plugin_manager(entry_points=False)


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager) -> Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri, plugins=pm)


def _versions(keep: Keep, tmp_path: Path, name: str, count: int) -> None:
    for i in range(count):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False))


def _target(keep: Keep, name: str, alias: str) -> int | None:
    return keep.registry.get_model(name).aliases.get(alias)


def test_rollback_after_two_alias_moves_walks_back(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    _versions(keep, tmp_path, name, 3)
    keep.set_alias(f"{name}@1", "champion")
    keep.set_alias(f"{name}@2", "champion")
    assert keep.set_alias(f"{name}@3", "champion").version == 3
    assert keep.get(f"{name}@champion").aliases == ("champion",)

    assert keep.rollback(name, "champion").version == 2
    assert _target(keep, name, "champion") == 2
    assert keep.rollback(name, "champion").version == 1  # further back, not back to 3
    with pytest.raises(NotFoundError, match="no earlier version"):
        keep.rollback(name, "champion")
    assert keep.rollback(name, "champion", to=3).version == 3

    events = keep.alias_history(name)
    assert [(e.version, e.op) for e in events] == [
        (1, "set"), (2, "set"), (3, "set"), (2, "rollback"), (1, "rollback"), (3, "rollback")]
    assert all(e.alias == "champion" and e.author for e in events)
    # Setting an alias where it already points records nothing.
    keep.set_alias(f"{name}@3", "champion")
    assert len(keep.alias_history(name)) == 6


def test_history_lives_on_the_registered_model(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    _versions(keep, tmp_path, name, 2)
    keep.set_alias(f"{name}@1", "staging")
    keep.set_alias(f"{name}@2", "staging")
    tags = keep.registry.get_model(name).tags
    raw = json.loads(tags["modelkeep.alias_history.staging"])
    assert [entry[0] for entry in raw] == [1, 2]
    assert [entry[3] for entry in raw] == ["set", "set"]
    # A fresh Keep (another process) rolls back from the stored history alone.
    other = modelkeep.open(store=str(tmp_path / "store"), registry=keep.registry.uri,
                           plugins=keep.plugins)
    assert other.rollback(name, "staging").version == 1


def test_delete_alias_then_rollback_restores_it(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    _versions(keep, tmp_path, name, 2)
    keep.set_alias(f"{name}@2", "prod")
    assert keep.delete_alias(name, "prod") == 2
    assert _target(keep, name, "prod") is None
    with pytest.raises(NotFoundError):
        keep.get(f"{name}@prod")
    with pytest.raises(NotFoundError):
        keep.delete_alias(name, "prod")
    assert keep.rollback(name, "prod").version == 2
    assert [(e.version, e.op) for e in keep.alias_history(name)] == [
        (2, "set"), (None, "delete"), (2, "rollback")]


def test_alias_moved_outside_modelkeep_counts_as_newest(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    _versions(keep, tmp_path, name, 3)
    keep.set_alias(f"{name}@1", "champion")
    keep.registry.set_alias(name, "champion", 3)  # as the MLflow UI would, no history entry
    assert keep.rollback(name, "champion").version == 1


class Gate:
    """Refuses rollbacks of ``prod`` and records what the alias hooks were told."""

    def __init__(self) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[dict[str, Any]] = []

    @hookimpl
    def modelkeep_before_alias_change(self, alias: str, version: int | None, previous: int | None,
                                      action: str) -> str | None:
        self.before.append({"alias": alias, "version": version, "previous": previous,
                            "action": action})
        if alias == "prod" and action == "rollback":
            return "prod is rolled forward only"
        return None

    @hookimpl
    def modelkeep_after_alias_change(self, alias: str, version: int | None,
                                     previous: int | None, action: str) -> None:
        self.after.append({"alias": alias, "version": version, "previous": previous,
                           "action": action})


def test_alias_changes_go_through_the_hooks(keep: Keep, pm: PluginManager,
                                            tmp_path: Path) -> None:
    gate = Gate()
    pm.register(gate)
    name = unique_name()
    _versions(keep, tmp_path, name, 2)
    keep.set_alias(f"{name}@1", "prod")
    keep.set_alias(f"{name}@2", "prod")
    with pytest.raises(VetoError, match="prod is rolled forward only") as info:
        keep.rollback(name, "prod")
    assert "the alias was not moved" in str(info.value)
    assert _target(keep, name, "prod") == 2
    assert [e.op for e in keep.alias_history(name)] == ["set", "set"]  # the veto left no trace

    keep.set_alias(f"{name}@2", "canary")
    assert keep.rollback(name, "canary", to=1).version == 1
    assert keep.delete_alias(name, "canary") == 1
    assert gate.before[-3:] == [
        {"alias": "canary", "version": 2, "previous": None, "action": "set"},
        {"alias": "canary", "version": 1, "previous": 2, "action": "rollback"},
        {"alias": "canary", "version": None, "previous": 1, "action": "delete"}]
    assert gate.after[-3:] == [
        {"alias": "canary", "version": 2, "previous": None, "action": "set"},
        {"alias": "canary", "version": 1, "previous": 2, "action": "rollback"},
        {"alias": "canary", "version": None, "previous": 1, "action": "delete"}]


def test_promote_shares_bytes_and_carries_tags(keep: Keep, tmp_path: Path) -> None:
    src_name, dst_name = unique_name("lab"), unique_name("prod")
    base = keep.register(src_name, write_model(tmp_path / "a", tensors(seed=1, n=3)))
    v = keep.register(src_name, write_model(tmp_path / "b", tensors(seed=2, n=3)),
                      parents=[base.ref], tags={"lr": "3e-4"}, message="good run")
    chunk_bytes = keep.store.stored_bytes(Kind.CHUNK)
    snapshots = len(list(keep.store.snapshot_ids()))

    p = keep.promote(v.ref, dst_name, aliases=["champion"])
    assert (p.name, p.version, p.aliases) == (dst_name, 1, ("champion",))
    assert keep.store.stored_bytes(Kind.CHUNK) == chunk_bytes  # no chunk written
    assert len(list(keep.store.snapshot_ids())) == snapshots + 1  # one small snapshot object
    assert p.files == v.files and p.bytes_added == 0
    assert p.user_tags == {"lr": "3e-4"} and p.message == "good run"
    assert [(x.name, x.version, x.snapshot_id) for x in p.parents] == [
        (src_name, v.version, v.snapshot_id)]
    got = keep.get(f"{dst_name}@champion")
    assert got.tags["modelkeep.parents"] == v.ref and got.tags["lr"] == "3e-4"
    assert keep.description(f"{dst_name}@1") == "good run"
    # In the registry, the message comes first, then the summary: nothing was copied.
    description = keep.registry.get_version(dst_name, 1).description
    assert description.startswith("good run\n\n") and "no new bytes stored" in description
    assert f"Parents | [{v.ref}](#/models/{src_name}/versions/{v.version})" in description
    assert keep.diff(v.ref, p.ref).files == ()
    out = keep.pull(f"{dst_name}@champion", tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors").read_bytes()

    again = keep.promote(v.ref, dst_name)
    assert again.reused and again.version == 1
    assert keep.promote(v.ref, dst_name, force=True).version == 2


def test_promote_asks_the_validators(keep: Keep, pm: PluginManager, tmp_path: Path) -> None:
    class NoProd:
        @hookimpl
        def modelkeep_validate_version(self, name: str) -> str | None:
            return "prod models come from the release pipeline" if "prod" in name else None

    v = keep.register(unique_name("lab"), write_model(tmp_path / "a", tensors(n=2)))
    pm.register(NoProd())
    dst = unique_name("prod")
    with pytest.raises(VetoError, match="release pipeline"):
        keep.promote(v.ref, dst)
    assert keep.registry.latest(dst) is None


def test_descriptions_of_models_and_versions(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    keep.register(name, write_model(tmp_path / "a", tensors(n=2)), message="first")
    assert keep.description(f"{name}@1") == "first"
    keep.describe(f"{name}@1", "first, evaluated: 0.91")
    keep.describe(name, "The ranking model.")
    assert keep.description(f"{name}@latest") == "first, evaluated: 0.91"
    assert keep.description(name) == "The ranking model."
    assert keep.registry.get_model(name).description == "The ranking model."
    with pytest.raises(NotFoundError):
        keep.describe(unique_name(), "no such model")


def test_cli_alias_rollback_promote_log_describe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["-q", "init", "--registry", mlflow_sqlite_uri]) == 0
    name, other = unique_name(), unique_name("prod")
    for i in range(3):
        src = write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False)
        assert main(["-q", "register", name, str(src)]) == 0

    def run(*args: str) -> Any:
        capsys.readouterr()
        assert main(["--json", *args]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    assert run("alias", f"{name}@1", "champion")["version"] == 1
    assert run("alias", f"{name}@2", "champion")["version"] == 2
    assert run("alias", f"{name}@3", "champion")["version"] == 3
    assert run("rollback", name, "champion") == {
        "name": name, "alias": "champion", "version": 2, "ref": f"{name}@2"}
    assert run("rollback", name, "champion", "--to", "3")["version"] == 3
    assert run("alias", "--delete", name, "champion")["previous"] == 3
    log = run("log", name)
    assert [(e["version"], e["op"]) for e in log["alias_history"]] == [
        (None, "delete"), (3, "rollback"), (2, "rollback"), (3, "set"), (2, "set"), (1, "set")]
    assert [v["version"] for v in log["versions"]] == [3, 2, 1]

    promoted = run("promote", f"{name}@2", "--to", other, "--alias", "live")
    assert promoted["name"] == other and promoted["aliases"] == ["live"]
    assert promoted["parents"][0]["version"] == 2
    assert run("describe", other, "-m", "what production serves") == {
        "target": other, "description": "what production serves"}
    assert run("describe", f"{other}@live")["description"] == ""

    capsys.readouterr()
    assert main(["log", name]) == 0
    out = capsys.readouterr().out
    assert "alias champion deleted" in out and f"alias champion -> {name}@2  (rollback)" in out
    assert main(["rollback", name, "nosuch"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: alias 'nosuch'") and err.count("\n") == 1
    assert main(["alias", "--delete", f"{name}@1", "x"]) == 2
    assert "takes a model name" in capsys.readouterr().err


# -- the history format, without a registry ----------------------------------------------------


def _events(*pairs: tuple[int | None, str]) -> list[history.AliasEvent]:
    return [history.AliasEvent("a", v, f"2026-01-01T00:00:{i:02d}Z", "u", op)
            for i, (v, op) in enumerate(pairs)]


def test_history_is_truncated_oldest_first_within_mlflow_limits() -> None:
    events = [history.AliasEvent("a", i, "2026-01-01T00:00:00Z", "user@" + "h" * 200, "set")
              for i in range(1, 400)]
    text = history.encode(events)
    assert len(text) <= history.MAX_HISTORY_CHARS
    kept = history.decode("a", text)
    assert kept[-1].version == 399 and 30 < len(kept) < 399
    assert [e.version for e in kept] == list(range(400 - len(kept), 400))  # the newest kept
    assert len(kept[0].author) == history.MAX_USER_CHARS


def test_history_tolerates_hand_edited_tags() -> None:
    assert history.decode("a", "not json") == []
    assert history.decode("a", '{"x": 1}') == []
    got = history.decode("a", '[[1,"t","u","set"],[true,"t","u","set"],[2,"t","u","jump"],'
                              '"junk",[null,"t","u","delete"]]')
    assert [(e.version, e.op) for e in got] == [(1, "set"), (None, "delete")]


def test_rollback_targets() -> None:
    assert history.rollback_target(_events((1, "set"), (2, "set"), (3, "set")), 3) == 2
    assert history.rollback_target(
        _events((1, "set"), (2, "set"), (3, "set"), (2, "rollback")), 2) == 1
    assert history.rollback_target(_events((1, "set"), (2, "set"), (1, "rollback")), 1) is None
    # --to jumps back over several moves; the next rollback continues from there.
    assert history.rollback_target(
        _events((1, "set"), (2, "set"), (3, "set"), (1, "rollback")), 1) is None
    # A deleted alias comes back where it was; deletions are not targets.
    assert history.rollback_target(_events((1, "set"), (None, "delete")), None) == 1
    assert history.rollback_target(
        _events((1, "set"), (None, "delete"), (4, "set")), 4) == 1
    assert history.rollback_target([], 5) is None


def test_descriptions_keep_the_user_text_apart_from_the_summary(
    keep: Keep, pm: PluginManager, tmp_path: Path, mlflow_sqlite_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique_name()
    keep.register(name, write_model(tmp_path / "a", tensors(seed=1, n=2)), message="first")
    v2 = keep.register(name, write_model(tmp_path / "b", tensors(seed=2, n=2)),
                       parents=[f"{name}@1"], message="tuned", aliases=["champion"])
    keep.set_alias(f"{name}@1", "champion")
    keep.describe(v2.ref, "eval 0.93")
    keep.describe(name, "The ranking model.")

    raw = keep.registry.get_version(name, 2).description
    assert raw.startswith("eval 0.93\n\n")  # the user's text first, then one summary
    assert raw.count(summary.BEGIN) == 1 and raw.count(summary.END) == 1
    assert f"| Parents | [{name}@1](#/models/{name}/versions/1) |" in raw
    assert "| Aliases |" not in raw  # champion left version 2: its summary says so
    one = keep.registry.get_version(name, 1).description
    assert one.startswith("first\n\n") and "| Aliases | `champion` since " in one
    assert keep.description(v2.ref) == "eval 0.93" and keep.description(name) == (
        "The ranking model.")

    # show and log print the message alone.
    def cli(*args: str) -> str:
        capsys.readouterr()
        assert main(["--store", str(tmp_path / "store"), "--registry", mlflow_sqlite_uri,
                     *args], plugins=pm) == 0
        return capsys.readouterr().out

    assert json.loads(cli("--json", "show", v2.ref))["message"] == "tuned"
    assert "modelkeep:generated" not in cli("log", name) + cli("show", v2.ref)
    assert json.loads(cli("--json", "describe", v2.ref))["description"] == "eval 0.93"

    # The model's alias table, newest first, refreshed by every change.
    model = keep.registry.get_model(name).description
    assert model.startswith("The ranking model.\n\nAliases now: `champion` → [version 1]")
    rows = [line for line in model.splitlines() if line.startswith("| 20")]
    assert [r.split(" | ")[1:] for r in rows] == [
        ["`champion`", f"set to [version 1](#/models/{name}/versions/1) (was 2)",
         f"`{v2.author}` |"],
        ["`champion`", f"set to [version 2](#/models/{name}/versions/2)", f"`{v2.author}` |"]]
    keep.delete_alias(name, "champion")
    model = keep.registry.get_model(name).description
    assert "Aliases now: none" in model and "| `champion` | removed (was 1) |" in model
    assert "| Aliases |" not in keep.registry.get_version(name, 1).description
    keep.describe(name, "Renamed.")
    model = keep.registry.get_model(name).description
    assert model.startswith("Renamed.\n\nAliases now: none") and model.count(summary.BEGIN) == 1

    # Text a person typed below the summary in the MLflow UI stays theirs when it is redone.
    keep.registry.set_description(name, 2, raw + "\n\nnote from the UI")
    keep.set_alias(v2.ref, "staging")
    assert keep.description(v2.ref) == "eval 0.93\n\nnote from the UI"
    raw = keep.registry.get_version(name, 2).description
    assert raw.count(summary.BEGIN) == 1 and "| Aliases | `staging` since " in raw
