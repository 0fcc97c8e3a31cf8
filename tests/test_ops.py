"""The operations layer: promote shares register's commit protocol (a garbage collection racing
it is survived or refused cleanly, and the collect hooks run), and a registry rebuilt after a
crashed register agrees with the live registry version by version."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import modelkeep
from modelkeep.errors import NotFoundError
from modelkeep.hooks import hookimpl, make_plugin_manager
from modelkeep.keep import Keep
from modelkeep.store import Snapshot
from tests.backends import unique_name
from tests.helpers import tensors, tree_digest, write_model

NOW = timedelta(0)


class CollectorDuringCommit:
    """Another client at the worst moment of a promote: after the promote read the store's
    collection mark and before it writes its snapshot, the source version is deleted and the
    store collected *runs* times (once: its chunks are hidden; twice: they are gone)."""

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.reports: list[Any] = []

    @hookimpl
    def modelkeep_before_register(self, name: str, snapshot: Snapshot, tags: dict[str, str],
                                  keep: Keep) -> None:
        if not self.runs or not name.startswith("prod-"):
            return
        keep.delete_version(tags["modelkeep.parents"])
        for _ in range(self.runs):
            self.reports.append(keep.store.gc(grace=NOW))
        self.runs = 0


def _keep(tmp_path: Path, registry: str, *plugins: object) -> Keep:
    pm = make_plugin_manager(entry_points=False)
    for plugin in plugins:
        pm.register(plugin)
    return modelkeep.open(store=str(tmp_path / "store"), registry=registry, plugins=pm)


def test_promote_survives_a_collection_that_hid_its_chunks(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    collector = CollectorDuringCommit(runs=1)
    keep = _keep(tmp_path, mlflow_sqlite_uri, collector)
    src = write_model(tmp_path / "m", tensors(n=4), extra=False)
    v = keep.register(unique_name(), src)
    promoted = keep.promote(v.ref, unique_name("prod"))
    assert collector.reports and collector.reports[0].hidden  # the chunks really were hidden
    assert keep.verify(promoted.ref).ok  # the commit check brought them back
    assert tree_digest(keep.pull(promoted.ref, tmp_path / "out")) == tree_digest(src)


def test_promote_refuses_cleanly_when_a_collection_took_its_chunks(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    collector = CollectorDuringCommit(runs=2)
    keep = _keep(tmp_path, mlflow_sqlite_uri, collector)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=4), extra=False))
    target = unique_name("prod")
    with pytest.raises(NotFoundError, match="deleted while being promoted"):
        keep.promote(v.ref, target)
    assert collector.reports[1].deleted  # the second run deleted the chunks
    with pytest.raises(NotFoundError):
        keep.get(target)  # no version was registered
    assert list(keep.store.snapshot_ids()) == []  # nothing half-committed stays


def test_promote_racing_a_collector_thread_never_breaks_a_version(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    keep = _keep(tmp_path, mlflow_sqlite_uri)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=6), extra=False))
    stop = threading.Event()
    runs = []

    def collect() -> None:
        while not stop.is_set():
            runs.append(keep.store.gc(grace=NOW))

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        target = unique_name("prod")
        promoted = [keep.promote(v.ref, target, force=True) for _ in range(4)]
    finally:
        stop.set()
        collector.join(30)
    assert len(runs) >= 2
    keep.store.gc(grace=NOW)
    keep.store.gc(grace=NOW)  # a quiet store settles: nothing a version uses is lost
    for pv in promoted:
        assert keep.verify(pv.ref).ok


class Lineage:
    """Collect hooks: what promote now asks too."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    @hookimpl
    def modelkeep_collect_lineage(self, name: str) -> dict[str, Any]:
        self.asked.append(f"lineage {name}")
        return {"review": {"by": "ana"}}

    @hookimpl
    def modelkeep_collect_metadata(self, name: str) -> dict[str, str]:
        self.asked.append(f"metadata {name}")
        return {"team": "search"}


def test_promote_runs_the_collect_hooks_and_keeps_the_source_lineage(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    plugin = Lineage()
    keep = _keep(tmp_path, mlflow_sqlite_uri, plugin)
    name, prod = unique_name(), unique_name("prod")
    v = keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False),
                      lineage={"data": {"set": "v1"}}, tags={"team": "ranking"})
    plugin.asked.clear()
    p = keep.promote(v.ref, prod)
    assert plugin.asked == [f"lineage {prod}", f"metadata {prod}"]
    assert p.lineage["data"] == {"set": "v1"}  # the source's own lineage wins
    assert p.lineage["review"] == {"by": "ana"}
    assert p.tags["team"] == "ranking"  # the source's tags win over plugin suggestions
    assert p.tags["modelkeep.data.set"] == "v1"
