"""Disaster recovery: the registry rebuilt from the store alone into a fresh MLflow registry."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.errors import RegistryError
from modelkeep.hooks import PluginManager, make_plugin_manager
from modelkeep.store import Kind
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
    assert plan["dry_run"] is True and plan["created"] == 2 and plan["models"] == [name]
    assert main(["registry", "rebuild", "--registry", target]) == 0
    assert f"created 2 version(s) of 1 model(s) in {target}" in capsys.readouterr().out
    assert main(["--json", "--registry", target, "list", name]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["message"]) for v in listed] == [(1, "run 0"), (2, "run 1")]
