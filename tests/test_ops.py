"""The operations layer: promote shares register's commit protocol (a garbage collection racing
it is survived or refused cleanly, and the collect hooks run), and a registry rebuilt after a
crashed register agrees with the live registry version by version."""

from __future__ import annotations

import signal
import subprocess
import sys
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


# -- a registry rebuilt after a crash agrees with the live one ------------------------------

_KILLED_REGISTER = """
import os, signal, sys
import modelkeep
from modelkeep.hooks import make_plugin_manager

store, registry, name, folder = sys.argv[1:5]
pm = make_plugin_manager(entry_points=False)
live = pm.hook.modelkeep_registry(uri=registry)


class DiesAtCreate:
    \"\"\"The registry of a process killed after its snapshot is written, at the moment it
    would make the registry entry.\"\"\"

    def __getattr__(self, attr):
        return getattr(live, attr)

    def create_version(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)


keep = modelkeep.open(store=store, registry=DiesAtCreate(), plugins=pm)
keep.register(name, folder)
"""


def _catalogue(keep: Keep, name: str) -> list[tuple[int, str, dict[str, str]]]:
    return [(rv.version, rv.source, dict(rv.tags)) for rv in keep.registry.versions(name)]


def test_rebuild_after_a_register_killed_before_its_registry_entry_matches_live(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    store = str(tmp_path / "store")
    name = unique_name()
    folder = write_model(tmp_path / "m", tensors(n=4), extra=False)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_REGISTER, store, mlflow_sqlite_uri, name, str(folder)],
        capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    keep = _keep(tmp_path, mlflow_sqlite_uri)
    (orphan,) = keep.store.snapshot_ids()  # the snapshot was written, the entry never made
    with pytest.raises(NotFoundError):
        keep.get(name)

    real = keep.register(name, folder)  # the user runs it again
    assert real.version == 1 and real.snapshot_id != orphan
    v2 = keep.register(name, write_model(tmp_path / "m2", tensors(seed=3, n=4), extra=False))

    fresh = modelkeep.open(store=store, registry=f"sqlite:///{tmp_path / 'fresh.db'}",
                           plugins=make_plugin_manager(entry_points=False))
    report = fresh.rebuild_registry()
    assert report.created == 2
    assert [sid for sid, _why in report.skipped] == [orphan]
    assert "never committed" in report.skipped[0][1]
    assert _catalogue(fresh, name) == _catalogue(keep, name)  # version by version, tags too
    assert fresh.get(f"{name}@2").snapshot_id == v2.snapshot_id


def test_rebuild_keeps_the_numbers_of_versions_after_a_deleted_one(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    keep = _keep(tmp_path, mlflow_sqlite_uri)
    name = unique_name()
    for i in range(4):
        keep.register(name, write_model(tmp_path / f"m{i}", tensors(seed=i, n=2), extra=False))
    keep.delete_version(f"{name}@2")  # its snapshot goes too: no other version uses it
    keep.delete_version(f"{name}@4")  # a trailing one
    live = _catalogue(keep, name)
    assert [v for v, _s, _t in live] == [1, 3]

    fresh = modelkeep.open(store=str(tmp_path / "store"),
                           registry=f"sqlite:///{tmp_path / 'fresh.db'}",
                           plugins=make_plugin_manager(entry_points=False))
    report = fresh.rebuild_registry(dry_run=True)
    assert [(v.version, v.exists) for v in report.versions] == [(1, False), (3, False)]
    assert [(n, v) for n, v, _uri in report.gaps] == [(name, 2)]
    fresh.rebuild_registry()
    assert _catalogue(fresh, name) == live  # version 3 is still version 3
    again = fresh.rebuild_registry()  # and a second run finds everything in place
    assert again.created == 0 and again.gaps == []
