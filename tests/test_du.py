"""``modelkeep du``: the figures of a store where three models share chunks, one version is a
parent delta of another, and one deleted version left chunks behind, checked against sums
computed here from the snapshots and the store's files, and against what deleting a version and
collecting really gives back."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.hooks import make_plugin_manager
from modelkeep.store import Snapshot
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Keep, dict[str, str]]:
    """Models a (2 versions, the second a parent delta of the first), b (a's tensors but one)
    and c (b's but one); a third version of a, deleted again, leaves unreferenced chunks. A
    registry of its own: the store totals cover every model the registry lists."""
    keep = modelkeep.open(store=str(tmp_path / "store"),
                          registry=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          plugins=make_plugin_manager(entry_points=False))
    names = {m: unique_name() for m in "abc"}
    base = tensors(seed=0, n=4)
    keep.register(names["a"], write_model(tmp_path / "a1", base, extra=False))
    tuned = dict(base)
    w = tuned["layers.01.weight"].astype(np.float32)
    tuned["layers.01.weight"] = (w * np.float32(1.001)).astype(np.float16)  # a fine-tune step
    keep.register(names["a"], write_model(tmp_path / "a2", tuned, extra=False),
                  parents=[f"{names['a']}@1"])
    b = dict(base, **{"layers.02.weight": tensors(seed=5, n=4)["layers.02.weight"]})
    keep.register(names["b"], write_model(tmp_path / "b1", b))
    c = dict(b, **{"layers.03.weight": tensors(seed=6, n=4)["layers.03.weight"]})
    keep.register(names["c"], write_model(tmp_path / "c1", c, extra=False))
    gone = dict(base, **{"layers.00.weight": tensors(seed=7, n=4)["layers.00.weight"]})
    keep.register(names["a"], write_model(tmp_path / "a3", gone, extra=False))
    keep.delete_version(f"{names['a']}@3")
    return keep, names


def _on_disk(keep: Keep) -> tuple[dict[str, int], dict[str, str]]:
    """{chunk id: file size} and {chunk id: delta base id}, read from the store's folders."""
    root = Path(keep.store.location.root)
    sizes = {p.parent.name + p.name: p.stat().st_size for p in (root / "chunks").glob("*/*")}
    bases = {}
    for p in (root / "deltas").glob("*/*"):
        cid, base = (p.parent.name + p.name).split("-")
        bases[cid] = base
    return sizes, bases


def _needs(snaps: list[Snapshot], bases: dict[str, str]) -> set[str]:
    out = {cid for s in snaps for f in s.files for cid, _n in f.chunks}
    todo = list(out)
    while todo:
        base = bases.get(todo.pop())
        if base is not None and base not in out:
            out.add(base)
            todo.append(base)
    return out


def test_du_figures_equal_the_sums_over_the_snapshots(
        shared: tuple[Keep, dict[str, str]]) -> None:
    keep, names = shared
    sizes, bases = _on_disk(keep)
    assert bases, "the fine-tune should be stored as a parent delta"
    refs = {names["a"]: [1, 2], names["b"]: [1], names["c"]: [1]}
    snaps = {(m, n): keep.snapshot(f"{m}@{n}") for m, ns in refs.items() for n in ns}
    needs = {key: _needs([s], bases) for key, s in snaps.items()}

    def cost(ids: set[str]) -> int:
        return sum(sizes.get(c, 0) for c in ids)

    report = keep.du()
    by_name = {m.name: m for m in report.models}
    assert sorted(by_name) == sorted(names.values())
    for model, numbers in refs.items():
        mu = by_name[model]
        mine = set().union(*(needs[(model, n)] for n in numbers))
        others = set().union(*(ids for (m, _n), ids in needs.items() if m != model))
        assert mu.size == sum(snaps[(model, n)].size for n in numbers)
        assert mu.bytes_held == cost(mine)
        assert mu.bytes_unique == cost(mine - others)
        assert [v.version for v in mu.versions] == numbers
        for v in mu.versions:
            rest = set().union(*(ids for key, ids in needs.items() if key != (model, v.version)))
            assert v.size == snaps[(model, v.version)].size
            assert v.bytes_held == cost(needs[(model, v.version)])
            assert v.bytes_unique == cost(needs[(model, v.version)] - rest)

    held = set().union(*needs.values())
    assert report.versions == 4
    assert report.size == sum(s.size for s in snaps.values())
    assert report.bytes_held == cost(held) < report.size
    assert report.bytes_chunks == sum(sizes.values()) and report.chunks == len(sizes)
    assert report.bytes_unreferenced == cost(set(sizes) - held) > 0  # a@3's own chunks
    assert report.missing_chunks == 0 and report.elsewhere == 0
    # The fine-tune's delta keeps its base, which a@1 alone holds: deleting a@1 gives nothing.
    a1 = by_name[names["a"]].versions[0]
    assert a1.bytes_unique == 0 and by_name[names["a"]].versions[1].bytes_unique > 0
    # b's tensors are all a's or c's too: only its other files are its own.
    b_files = {c for f in snaps[(names["b"], 1)].files if f.tensors is None for c, _n in f.chunks}
    assert by_name[names["b"]].bytes_unique == cost(b_files) > 0

    one = keep.du(names["c"])
    assert [m.name for m in one.models] == [names["c"]]
    assert one.models[0] == by_name[names["c"]] and one.bytes_held == report.bytes_held


def test_unique_bytes_are_what_deleting_the_version_gives_back(
        shared: tuple[Keep, dict[str, str]]) -> None:
    keep, names = shared
    keep.gc(grace=timedelta(0))  # a@3's leftovers go first: hidden ...
    keep.gc(grace=timedelta(0))  # ... then deleted
    [c1] = keep.du(names["c"]).models[0].versions
    assert c1.bytes_unique > 0
    keep.delete_version(f"{names['c']}@1")
    keep.gc(grace=timedelta(0))
    report = keep.gc(grace=timedelta(0))
    assert report.bytes_reclaimed == c1.bytes_unique
    after = keep.du()
    assert after.bytes_unreferenced == 0 and after.versions == 3


def test_cli_du_human_and_json(shared: tuple[Keep, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    keep, names = shared
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--store", keep.store.url, "--registry", keep.registry.uri]
    capsys.readouterr()
    assert main([*args, "--json", "du"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = keep.du().to_json()
    assert data == expected
    assert {m["name"] for m in data["models"]} >= set(names.values())
    [a] = [m for m in data["models"] if m["name"] == names["a"]]
    assert a["version_count"] == 2 and [v["ref"] for v in a["versions"]] == [
        f"{names['a']}@1", f"{names['a']}@2"]
    assert set(a["versions"][0]) >= {"name", "version", "ref", "snapshot_id", "size"}

    assert main([*args, "du", names["a"]]) == 0
    out = capsys.readouterr().out
    assert "MiB" in out and "KiB" in out and "(store)" in out and names["a"] in out
    assert names["b"] not in out
    assert "no one uses (gc removes)" in out
    assert main([*args, "du", "no-such-model"]) == 3
    assert capsys.readouterr().err.startswith("error: ")
