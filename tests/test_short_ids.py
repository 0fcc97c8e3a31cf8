"""Short snapshot ids (a unique prefix of at least 8 hex digits) wherever an id is accepted, and a
register of identical content that applies the message, tags and aliases it was given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.errors import InvalidInputError, NotFoundError
from modelkeep.hooks import make_plugin_manager
from modelkeep.ops.summary import user_description
from modelkeep.store import Kind
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str) -> Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    assert main(["-q", "init", "--registry", mlflow_sqlite_uri]) == 0
    return tmp_path


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    capsys.readouterr()
    assert main(["--json", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, dict)
    return out


def _twin(keep: Keep, sid: str) -> str:
    """A second snapshot object whose id shares *sid*'s first 63 digits (a copy under another
    name, as a damaged or hostile store could hold): prefixes of *sid* become ambiguous."""
    twin = sid[:-1] + ("0" if sid[-1] != "0" else "1")
    root = Path(keep.store.location.root) / "snapshots"
    shutil.copy(root / sid[:2] / sid[2:], root / twin[:2] / twin[2:])
    return twin


def test_cli_show_and_log_print_prefixes_that_resolve(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name()
    for seed in (0, 1):
        write_model(project / "m", tensors(seed=seed, n=2), extra=False)
        assert main(["-q", "register", name, str(project / "m")]) == 0
    sids = [str(_json(capsys, "show", f"{name}@{n}")["snapshot_id"]) for n in (1, 2)]

    capsys.readouterr()
    assert main(["log", name]) == 0
    printed = capsys.readouterr().out
    assert sids[0][:12] in printed and sids[1][:12] in printed and sids[0] not in printed
    assert main(["show", f"{name}@1"]) == 0
    assert f"(snapshot {sids[0][:12]})" in capsys.readouterr().out

    for n, sid in enumerate(sids, 1):
        for prefix in (sid[:8], sid[:12], sid):
            assert _json(capsys, "show", f"{name}@{prefix}")["version"] == n
    assert _json(capsys, "diff", f"{name}@{sids[0][:8]}", f"{name}@{sids[1][:8]}")["files"]

    capsys.readouterr()
    missing = "0123abcd" if not any(s.startswith("0123abcd") for s in sids) else "0123abce"
    assert main(["show", f"{name}@{missing}"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name} has no version whose snapshot id starts with")
    assert err.count("\n") == 1


def test_uris_accept_a_unique_prefix(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    src = write_model(tmp_path / "m", tensors(n=2))
    mv = keep.register(name, src)
    short = mv.uri[: mv.uri.index("@") + 1 + 8]
    store, snap = keep.snapshot_at(short)
    assert snap.name == name and store.url == keep.store.url
    assert keep.snapshot_at(mv.uri)[1] == snap
    with fsspec.open(f"{short}/config.json", "rb") as f:
        assert f.read() == (src / "config.json").read_bytes()
    assert keep.store.resolve_snapshot_id(mv.snapshot_id[:10]) == mv.snapshot_id

    with pytest.raises(InvalidInputError, match="at least 8 hex digits"):
        keep.store.resolve_snapshot_id(mv.snapshot_id[:7])
    with pytest.raises(InvalidInputError, match="not a modelkeep URI"):
        keep.snapshot_at(mv.uri[: mv.uri.index("@") + 1 + 7])
    with pytest.raises(NotFoundError, match="no snapshot id starting with"):
        keep.snapshot_at(mv.uri[: mv.uri.index("@") + 1] + (
            "ffffffff" if not mv.snapshot_id.startswith("ffffffff") else "eeeeeeee"))


def test_an_ambiguous_prefix_is_refused_with_a_count(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    mv = keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False))
    twin = _twin(keep, mv.snapshot_id)
    assert sorted(keep.store.db.ids_with_prefix(Kind.SNAPSHOT, mv.snapshot_id[:8])) == sorted(
        [mv.snapshot_id, twin])
    short = mv.uri[: mv.uri.index("@") + 1 + 8]
    with pytest.raises(InvalidInputError) as err:
        keep.snapshot_at(short)
    assert "is ambiguous: 2 snapshots" in err.value.message
    assert err.value.hint == "give more hex digits of the id"
    assert keep.snapshot_at(mv.uri)[1].name == name  # the full id still names it

    # In a reference, the candidates are the model's versions.
    keep.registry.create_version(name, keep.store.uri(twin), tags={}, run_id="")
    with pytest.raises(InvalidInputError, match=f"prefix {mv.snapshot_id[:8]} is ambiguous: "
                       f"2 snapshots of {name}"):
        keep.get(f"{name}@{mv.snapshot_id[:8]}")
    keep.registry.create_version(name, mv.uri, tags={}, run_id="")
    with pytest.raises(InvalidInputError, match=f"is held by 2 versions of {name} "
                       f"\\({name}@1, {name}@3\\)"):
        keep.get(f"{name}@{mv.snapshot_id}")


def test_a_hex_alias_wins_over_a_snapshot_prefix(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    v1 = keep.register(name, write_model(tmp_path / "a", tensors(seed=1, n=1), extra=False))
    keep.set_alias(f"{name}@1", "abcdef12")  # spelled like a snapshot id prefix
    assert keep.get(f"{name}@abcdef12").version == v1.version
    keep.delete_alias(name, "abcdef12")
    with pytest.raises(NotFoundError, match="no version whose snapshot id starts with abcdef12"):
        keep.get(f"{name}@abcdef12")
    # A prefix starting with a letter is a valid alias name too; with no such alias it names
    # the snapshot. Ids are random (they hash the creation time): register until one starts
    # with a letter (each does with probability 6/16).
    for seed in range(2, 40):
        mv = keep.register(name, write_model(tmp_path / "b", tensors(seed=seed, n=1),
                                             extra=False))
        if mv.snapshot_id[0] in "abcdef":
            break
    assert mv.snapshot_id[0] in "abcdef"
    assert keep.get(f"{name}@{mv.snapshot_id[:8]}").version == mv.version


# -- a register of identical content --------------------------------------------------------


def test_reregister_applies_message_tags_and_aliases(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    src = write_model(tmp_path / "m", tensors(n=2))
    first = keep.register(name, src, message="first", tags={"lr": "1e-4"})
    assert first.applied == {}

    again = keep.register(name, src, message="retry", tags={"lr": "1e-4", "seed": "7"},
                          aliases=["foo"])
    assert again.reused and again.version == first.version
    assert again.applied == {"message": "retry", "tags": {"seed": "7"}, "aliases": ["foo"]}
    rv = keep.registry.get_version(name, first.version)
    # The registry's description holds the message and, apart from it, the generated summary.
    assert user_description(rv.description) == "retry"
    assert keep.description(f"{name}@1") == "retry"
    assert rv.tags["seed"] == "7" and rv.tags["lr"] == "1e-4"
    assert again.tags["seed"] == "7" and again.aliases == ("foo",)
    assert keep.get(f"{name}@foo").version == first.version

    same = keep.register(name, src, message="retry", tags={"seed": "7"}, aliases=["foo"])
    assert same.reused and same.applied == {}
    entries, _bad = keep.store.journal()
    assert [(e.op, e.data.get("key")) for e in entries if e.op == "tag"] == [("tag", "seed")]


def test_reregister_tags_survive_a_registry_rebuild(keep: Keep, tmp_path: Path) -> None:
    name = unique_name()
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    keep.register(name, src)
    keep.register(name, src, tags={"stage": "qa"}, message="checked")
    rebuilt = modelkeep.open(store=keep.store.url,
                             registry=f"sqlite:///{tmp_path / 'rebuilt.db'}",
                             plugins=make_plugin_manager(entry_points=False))
    report = rebuilt.rebuild_registry()
    assert [(t.name, t.version, dict(t.tags)) for t in report.journal.tags] == [
        (name, 1, {"stage": "qa"})]
    rv = rebuilt.registry.get_version(name, 1)
    assert rv.tags["stage"] == "qa" and user_description(rv.description) == "checked"
    again = rebuilt.rebuild_registry(dry_run=True)
    assert again.journal.changes == 0


def test_cli_reregister_says_what_it_did(project: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name()
    src = write_model(project / "m", tensors(n=2), extra=False)
    assert main(["-q", "register", name, str(src), "-m", "first"]) == 0
    capsys.readouterr()
    assert main(["register", name, str(src), "-m", "retry", "--tag", "k=v", "--alias",
                 "foo"]) == 0
    out = capsys.readouterr().out
    assert out == (f"{name}@1 already holds this content, nothing new stored (--force for a "
                   "new version): set its description; tagged it k=v; pointed foo at it\n")
    data = _json(capsys, "register", name, str(src), "-m", "retry", "--tag", "k=w")
    assert data["reused"] is True and data["applied"] == {"tags": {"k": "w"}}
    assert main(["register", name, str(src)]) == 0
    assert capsys.readouterr().out.endswith(": nothing changed\n")
