"""Disaster recovery: the registry rebuilt from the store alone into a fresh MLflow registry."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.errors import InvalidInputError, NotFoundError, RegistryError
from modelkeep.hooks import PluginManager, hookimpl, make_plugin_manager
from modelkeep.store import Kind, Store
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, write_model

# Tags only the lost registry can know: set after registering, or by the alias history.
_NOT_IN_STORE = ("reviewed",)


@pytest.fixture
def pm() -> PluginManager:
    return make_plugin_manager(entry_points=False)


def _fresh_registry(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / f'fresh-{uuid.uuid4().hex[:8]}.db'}"


def _populate(keep: Keep, tmp_path: Path) -> tuple[str, str, str]:
    """Three versions of one model, two of another, and a promotion into a third."""
    a, b, prod = unique_name("a"), unique_name("b"), unique_name("prod")
    ts = tensors(seed=1, n=6)
    src = write_model(tmp_path / "a", ts)
    keep.register(a, src, tags={"lr": "1e-3"}, message="baseline", aliases=["champion"])
    change_fraction(ts, 0.3)
    write_model(src, ts)
    keep.register(a, src, parents=[f"{a}@1"], tags={"lr": "5e-4"}, message="tuned")
    change_fraction(ts, 0.2, seed=7)
    write_model(src, ts)
    keep.register(a, src, parents=[f"{a}@2"])
    keep.register(b, write_model(tmp_path / "b", tensors(seed=5, n=3), extra=False),
                  message="other")
    keep.register(b, write_model(tmp_path / "b2", tensors(seed=6, n=3), extra=False),
                  parents=[f"{a}@3"])
    keep.promote(f"{a}@2", prod)
    keep.registry.set_tag(a, 1, "reviewed", "yes")  # registry-only: not recoverable
    return a, b, prod


def _catalogue(keep: Keep, names: list[str]) -> dict[str, list[tuple]]:
    out = {}
    for name in names:
        out[name] = [
            (rv.version, rv.source, rv.description,
             {k: v for k, v in rv.tags.items() if k not in _NOT_IN_STORE})
            for rv in keep.registry.versions(name)
        ]
    return out


def test_rebuild_recreates_models_versions_and_tags(
    tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager
) -> None:
    store = str(tmp_path / "store")
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, plugins=pm)
    names = list(_populate(keep, tmp_path))
    before = _catalogue(keep, names)
    stored = keep.store.stored_bytes(Kind.CHUNK)

    fresh = modelkeep.open(store=store, registry=_fresh_registry(tmp_path), plugins=pm)
    plan = fresh.rebuild_registry(dry_run=True)
    assert plan.created == 6 and plan.models == sorted(names)
    assert fresh.models() == []  # a dry run writes nothing

    report = fresh.rebuild_registry()
    assert report.created == 6 and not report.skipped
    assert sorted(fresh.models()) == sorted(names)
    after = _catalogue(fresh, names)
    assert after == before
    # Equal tags include modelkeep.bytes_added, recomputed from the chunk lists alone.
    assert after[names[2]][0][3]["modelkeep.bytes_added"] == "0"  # the promotion added nothing
    assert keep.store.stored_bytes(Kind.CHUNK) == stored

    # The rebuilt registry serves versions like the original: parents, files, pulls.
    a3 = fresh.get(f"{names[0]}@3")
    assert [str(p) for p in a3.parents] == [f"{names[0]}@2"]
    out = fresh.pull(f"{names[2]}@1", tmp_path / "out")
    assert (out / "model.safetensors").read_bytes() == keep.open_file(
        f"{names[0]}@2", "model.safetensors").read()

    # Running it again creates nothing: a rebuild resumes where it stopped.
    again = fresh.rebuild_registry()
    assert again.created == 0 and all(v.exists for v in again.versions)


def test_rebuild_refuses_a_registry_with_other_versions(
    tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager
) -> None:
    store = str(tmp_path / "store")
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, plugins=pm)
    name = unique_name()
    keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False))
    target = _fresh_registry(tmp_path)
    other = modelkeep.open(store=str(tmp_path / "other"), registry=target, plugins=pm)
    other_name = unique_name()
    # The same model name in the target, holding a version of another store.
    other.register(name, write_model(tmp_path / "o", tensors(seed=3, n=2), extra=False))
    other.register(other_name, write_model(tmp_path / "o2", tensors(seed=4, n=2), extra=False))
    fresh = modelkeep.open(store=store, registry=target, plugins=pm)
    with pytest.raises(RegistryError, match=rf"already holds other versions of '{name}'"):
        fresh.rebuild_registry()
    assert len(fresh.registry.versions(name)) == 1  # nothing written


def test_cli_registry_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              mlflow_sqlite_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["-q", "init", "--registry", mlflow_sqlite_uri]) == 0
    name = unique_name()
    for i in range(2):
        src = write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False)
        assert main(["-q", "register", name, str(src), "-m", f"run {i}"]) == 0
    target = _fresh_registry(tmp_path)
    capsys.readouterr()
    assert main(["--json", "registry", "rebuild", "--registry", target, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and plan["versions_created"] == 2 and plan["models"] == [name]
    assert main(["registry", "rebuild", "--registry", target]) == 0
    assert f"created 2 version(s) of 1 model(s) in {target}" in capsys.readouterr().out
    assert main(["--json", "--registry", target, "list", name]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["message"]) for v in listed["versions"]] == [(1, "run 0"),
                                                                          (2, "run 1")]


# -- the journal: aliases, their history and descriptions come back too ----------------------


def _store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict]:
    if kind == "local":
        return str(tmp_path / "store"), {}
    server = request.getfixturevalue("moto_s3")
    options = dict(server.storage_options)
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", json.dumps(options))  # for the CLI
    return f"s3://{server.make_bucket()}/models", options


def _log(registry: str, store: str, name: str, pm: PluginManager,
         capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["--json", "--store", store, "--registry", registry, "log", name],
                plugins=pm) == 0
    out = json.loads(capsys.readouterr().out)
    # What the registry says beyond the store: aliases and their history.
    return {"aliases": [(v["version"], v["aliases"], v["message"]) for v in out["versions"]],
            "alias_history": out["alias_history"]}


def _state(keep: Keep, name: str) -> dict:
    model = keep.registry.get_model(name)
    return {"aliases": dict(model.aliases), "description": model.description,
            "versions": {rv.version: rv.description for rv in keep.registry.versions(name)},
            "tags": {k: v for k, v in model.tags.items() if k.startswith("modelkeep.")}}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_rebuild_restores_aliases_history_and_descriptions(
    kind: str, tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager,
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, options = _store_url(kind, tmp_path, request, monkeypatch)
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, plugins=pm,
                          store_options=options)
    a, prod = unique_name("a"), unique_name("prod")
    for i in range(3):
        keep.register(a, write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False),
                      message=f"run {i}", aliases=["champion"] if i == 0 else ())
    keep.set_alias(f"{a}@2", "champion")  # two moves, then a rollback
    keep.set_alias(f"{a}@3", "champion")
    assert keep.rollback(a, "champion").version == 2
    keep.set_alias(f"{a}@3", "staging")
    keep.delete_alias(a, "staging")
    keep.set_alias(f"{a}@1", "baseline")
    keep.set_alias(f"{a}@1", "baseline")  # already there: no change, no history entry
    keep.promote(f"{a}@champion", prod, aliases=["live"], message="promoted run 1")
    keep.describe(f"{a}@2", "eval 0.91")
    keep.describe(f"{a}@2", "eval 0.93")  # the last edit wins
    keep.describe(a, "the ranking model")
    keep.describe(prod, "what the service serves")
    before = {n: _state(keep, n) for n in (a, prod)}
    logs = {n: _log(mlflow_sqlite_uri, store, n, pm, capsys) for n in (a, prod)}
    per_alias: dict[str, list] = {}
    for e in reversed(logs[a]["alias_history"]):
        per_alias.setdefault(e["alias"], []).append((e["version"], e["op"]))
    assert per_alias == {"champion": [(1, "set"), (2, "set"), (3, "set"), (2, "rollback")],
                         "staging": [(3, "set"), (None, "delete")], "baseline": [(1, "set")]}

    target = _fresh_registry(tmp_path)
    fresh = modelkeep.open(store=store, registry=target, plugins=pm, store_options=options)
    plan = fresh.rebuild_registry(dry_run=True)
    assert plan.journal.changes == 7 and fresh.models() == []  # 4 aliases, 3 descriptions
    report = fresh.rebuild_registry()
    assert report.created == 4 and report.journal.problems == []
    assert {(x.name, x.alias, x.version) for x in report.journal.aliases} == {
        (a, "champion", 2), (a, "staging", None), (a, "baseline", 1), (prod, "live", 1)}
    assert {n: _state(fresh, n) for n in (a, prod)} == before
    assert {n: _log(target, store, n, pm, capsys) for n in (a, prod)} == logs

    # Idempotent: a second rebuild finds nothing to create or change.
    again = fresh.rebuild_registry()
    assert again.created == 0 and again.journal.changes == 0
    assert {n: _state(fresh, n) for n in (a, prod)} == before

    # The rebuilt history drives rollback exactly like the lost one did.
    assert fresh.rollback(a, "champion").version == keep.rollback(a, "champion").version == 1


def test_rebuild_reports_an_alias_whose_version_is_gone(
    tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = str(tmp_path / "store")
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, plugins=pm)
    name = unique_name()
    for i in range(2):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False))
    keep.set_alias(f"{name}@1", "stable")
    keep.set_alias(f"{name}@2", "champion")
    keep.describe(f"{name}@2", "to be withdrawn")
    # Version 2 is deleted in the registry and its snapshot removed from the store, as a
    # garbage collection of a deleted version would.
    sid2 = keep.get(f"{name}@2").snapshot_id
    keep.registry._client.delete_model_version(name, "2")  # type: ignore[attr-defined]
    Path(keep.store.db.path(Kind.SNAPSHOT, sid2)).unlink()
    # And one journal entry (the description) is damaged.
    entries, _bad = keep.store.journal()
    assert entries[-1].op == "description"
    damaged = Path(keep.store.db.path(Kind.JOURNAL, entries[-1].id))
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")

    target = _fresh_registry(tmp_path)
    fresh = modelkeep.open(store=store, registry=target, plugins=pm)
    report = fresh.rebuild_registry()
    assert report.created == 1
    problems = "\n".join(reason for _eid, reason in report.journal.problems)
    assert f"alias 'champion' of {name} is not set" in problems
    assert f"{name}@2 (snapshot {sid2[:12]}) is not in the store" in problems
    assert "unreadable journal entry" in problems and "corrupt" in problems
    model = fresh.registry.get_model(name)
    assert dict(model.aliases) == {"stable": 1}

    capsys.readouterr()
    assert main(["--store", store, "registry", "rebuild", "--registry", target],
                plugins=pm) == 0
    out = capsys.readouterr().out
    assert f"alias 'champion' of {name} is not set" in out
    assert "0 alias/description/tag change(s)" in out


def test_rebuild_replays_a_crashed_change_but_not_a_refused_one(
    tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager,
) -> None:
    store = str(tmp_path / "store")
    name = unique_name()

    class OtherClient:
        """Deletes the version an alias is about to point at, as a second client could
        between the check and the move."""

        @hookimpl
        def modelkeep_before_alias_change(self, name: str, alias: str, version: int | None,
                                          keep: Keep) -> None:
            if alias == "doomed":
                keep.registry._client.delete_model_version(name, str(version))  # type: ignore[attr-defined]

    pm.register(OtherClient())
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, plugins=pm)
    for i in range(2):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False))
    keep.set_alias(f"{name}@1", "champion")
    with pytest.raises(NotFoundError):
        keep.set_alias(f"{name}@2", "doomed")  # journaled, refused by the registry, cancelled
    assert "doomed" not in keep.registry.get_model(name).aliases
    entries, _bad = keep.store.journal()
    entries = [e for e in entries if e.op != "commit"]  # the registers' commit records
    assert [e.op for e in entries] == ["alias", "alias", "cancel"]
    assert entries[2].data == {"cancels": entries[1].id}

    # A crash between the journal entry and the registry change leaves the entry alone:
    # the rebuild makes the change.
    sid1 = keep.get(f"{name}@1").snapshot_id
    keep.store.journal_append(name, "alias", {"alias": "crashed", "action": "set",
                                              "version": 1, "snapshot": sid1}, author="x@y")

    fresh = modelkeep.open(store=store, registry=_fresh_registry(tmp_path), plugins=pm)
    report = fresh.rebuild_registry()
    assert report.journal.cancelled == 1 and report.journal.problems == []
    assert dict(fresh.registry.get_model(name).aliases) == {"champion": 1, "crashed": 1}


def test_journal_entries_never_collide_and_keep_each_writers_order(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))

    def writer(w: int) -> None:
        for i in range(40):  # identical content across writers: the nonce keeps them apart
            store.journal_append("m", "description", {"version": None, "snapshot": None,
                                                      "text": str(i)}, author=f"w{w}")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries, bad = store.journal()
    assert len(entries) == len({e.id for e in entries}) == 160 and not bad
    for w in range(4):
        assert [e.data["text"] for e in entries if e.author == f"w{w}"] == [
            str(i) for i in range(40)]
    with pytest.raises(InvalidInputError, match="reserved"):
        store.journal_append("m", "description", {"time": "now"}, author="")
    assert len(store.journal()[0]) == 160  # nothing written


def test_rebuild_keeps_deleted_versions_deleted_and_their_history(
    tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager,
) -> None:
    store = str(tmp_path / "store")
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, plugins=pm)
    name, other = unique_name(), unique_name("other")
    for i in range(3):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False))
    # Another model's version names version 2's snapshot, so deleting version 2 keeps it in
    # the store: a rebuild must not bring version 2 back from it.
    uri2 = keep.registry.get_version(name, 2).source
    keep.registry.create_version(other, uri2, tags={})
    deleted = keep.delete_version(f"{name}@2")
    assert not deleted.snapshot_deleted
    keep.delete_version(f"{name}@3")  # its snapshot goes with it
    history = keep.registry.get_model(name).tags["modelkeep.deletions"]

    fresh = modelkeep.open(store=store, registry=_fresh_registry(tmp_path), plugins=pm)
    report = fresh.rebuild_registry()
    assert [v.version for v in fresh.registry.versions(name)] == [1]
    assert any(f"{name}@2 was deleted" in reason for _sid, reason in report.skipped)
    assert fresh.registry.get_model(name).tags["modelkeep.deletions"] == history
    wanted = [(2, deleted.author), (3, deleted.author)]
    assert [(e.version, e.author) for e in keep.deletions(name)] == wanted
    assert fresh.deletions(name) == keep.deletions(name)
    # A second rebuild changes nothing.
    again = fresh.rebuild_registry()
    assert again.created == 0 and again.journal.changes == 0
