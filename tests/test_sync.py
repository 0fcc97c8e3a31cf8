"""Replication (`modelkeep sync`): a local store copied to S3 (moto) and Azure (Azurite).

Only missing chunks travel (counted), an interrupted copy (a killed process) resumes with only
what is still missing and never leaves a snapshot without its chunks, a pull from the replica
verifies, and incompatible stores are refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.config import Config, StoreConfig
from modelkeep.errors import StoreError
from modelkeep.hooks import make_plugin_manager
from modelkeep.store import Kind, Snapshot, Store
from modelkeep.store import sync as sync_mod
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model


@pytest.fixture(params=["s3", "azure"])
def replica(request: pytest.FixtureRequest) -> StoreConfig:
    """A new, empty destination store on S3 or Azure, as a named store ``replica``."""
    if request.param == "s3":
        server = request.getfixturevalue("moto_s3")
        return StoreConfig("replica", f"s3://{server.make_bucket()}/copy",
                           dict(server.storage_options))
    server = request.getfixturevalue("azurite")
    return StoreConfig("replica", f"az://{server.make_container()}/copy",
                       dict(server.storage_options))


def open_keep(tmp_path: Path, registry: str, *stores: StoreConfig,
              policies: dict | None = None) -> Keep:
    config = Config(root=tmp_path, store=str(tmp_path / "store"), registry=registry,
                    stores={s.name: s for s in stores}, policies=policies or {})
    return modelkeep.open(config=config, plugins=make_plugin_manager(entry_points=False))


def chunk_ids(snap: Snapshot) -> set[str]:
    return {cid for f in snap.files for cid, _n in f.chunks}


def dest_store(cfg: StoreConfig) -> Store:
    return Store.open(cfg.url, cfg.options)


def test_sync_copies_only_missing_chunks_and_the_replica_verifies(
    replica: StoreConfig, tmp_path: Path, mlflow_sqlite_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keep = open_keep(tmp_path, mlflow_sqlite_uri, replica)
    name = unique_name()
    ts = tensors(n=20)
    v1 = keep.register(name, write_model(tmp_path / "m1", ts, extra=False))
    first = keep.sync("replica", [name])
    c1 = chunk_ids(keep.snapshot(v1.ref))
    assert (first.snapshots_copied, first.snapshots_present) == (1, 0)
    assert first.chunks_copied == len(c1) and first.chunks_present == 0
    dst = dest_store(replica)
    assert set(dst.db.iter_ids(Kind.CHUNK)) == c1

    change_fraction(ts, 0.1)  # 2 of 20 weight matrices
    v2 = keep.register(name, write_model(tmp_path / "m2", ts, extra=False))
    c2 = chunk_ids(keep.snapshot(v2.ref))
    monkeypatch.setattr(sync_mod, "LIST_ABOVE", 0)  # one listing instead of a HEAD per chunk
    second = keep.sync("replica", [name])
    assert (second.snapshots_copied, second.snapshots_present) == (1, 1)
    assert second.chunks_copied == len(c2 - c1) == 2
    assert second.chunks_present == len(c2 & c1)
    assert second.bytes_copied == sum(n for f in keep.snapshot(v2.ref).files
                                      for cid, n in f.chunks if cid in c2 - c1)
    assert set(dst.db.iter_ids(Kind.CHUNK)) == c1 | c2

    again = keep.sync("replica")  # every version of every model: all there now
    assert again.chunks_copied == 0 and again.snapshots_copied == 0

    # The replica alone serves the version: same URI scheme, same snapshot id, verified reads.
    replica_keep = open_keep(tmp_path, mlflow_sqlite_uri, replica)
    store, snap = replica_keep.snapshot_at(dst.uri(v2.snapshot_id))
    assert store.location.locator == dst.location.locator
    out = store.materialize(snap, tmp_path / "pulled")
    assert tree_digest(out) == tree_digest(tmp_path / "m2")
    assert dst.verify([v1.snapshot_id, v2.snapshot_id]).ok


def _copy_in_child(src_url: str, dst_url: str, options: dict, sid: str) -> None:
    Store.open(src_url).sync_to(Store.open(dst_url, options), [sid], workers=1)


def test_interrupted_sync_resumes_with_only_what_is_missing(
    replica: StoreConfig, tmp_path: Path, mlflow_sqlite_uri: str
) -> None:
    keep = open_keep(tmp_path, mlflow_sqlite_uri, replica)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=20, cols=1024),
                                                 extra=False))
    wanted = chunk_ids(keep.snapshot(v.ref))
    # A process copying one chunk at a time, killed (SIGKILL: no cleanup at all) mid-way.
    proc = multiprocessing.get_context("fork").Process(
        target=_copy_in_child, args=(keep.store.url, replica.url, replica.options,
                                     v.snapshot_id))
    proc.start()
    dst = dest_store(replica)
    try:
        deadline = time.monotonic() + 60
        while sum(1 for _ in dst.db.iter_ids(Kind.CHUNK)) < 3:
            assert proc.is_alive(), "the copy ended early"
            assert time.monotonic() < deadline, "the copy never started"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL, "the copy finished before it could be stopped"
    time.sleep(1)  # an upload the process had fully sent before it died may still land
    copied = set(dst.db.iter_ids(Kind.CHUNK))
    assert 3 <= len(copied) < len(wanted)
    assert list(dst.snapshot_ids()) == []  # no snapshot without all of its chunks

    resumed = keep.sync("replica", [v.ref])
    assert resumed.chunks_present == len(copied)
    assert resumed.chunks_copied == len(wanted) - len(copied)
    assert resumed.snapshots_copied == 1
    assert set(dst.db.iter_ids(Kind.CHUNK)) == wanted
    assert dst.verify([v.snapshot_id]).ok


def _toml_inline(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def test_cli_sync_dry_run_and_json(tmp_path: Path, mlflow_sqlite_uri: str,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    replica = StoreConfig("replica", str(tmp_path / "replica"))
    (tmp_path / "modelkeep.toml").write_text(
        f'store = "store"\nregistry = "{mlflow_sqlite_uri}"\n'
        f'[stores.replica]\nurl = "replica"\n')
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    keep = open_keep(tmp_path, mlflow_sqlite_uri, replica)
    name = unique_name()
    v = keep.register(name, write_model(tmp_path / "m", tensors(n=4)))
    n = len(chunk_ids(keep.snapshot(v.ref)))
    pm = make_plugin_manager(entry_points=False)
    assert main(["sync", "--to", "replica", "--dry-run", "--json", v.ref], plugins=pm) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["dry_run"] and planned["chunks_copied"] == n
    assert not (tmp_path / "replica").exists()  # a dry run writes nothing
    assert main(["sync", "--to", "replica", v.ref], plugins=pm) == 0
    assert "copied 1 of 1 snapshot(s)" in capsys.readouterr().out
    assert dest_store(replica).verify([v.snapshot_id]).ok
    assert main(["sync", v.ref], plugins=pm) == 2
    assert "pass --to STORE" in capsys.readouterr().err


def test_incompatible_stores_are_refused(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    keep = open_keep(tmp_path, mlflow_sqlite_uri)
    name = unique_name()
    v = keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False))
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    desc = {"created": "2026-11-29T09:00:03.676104Z", "format": 1, "hash": "blake3",
            "type": "modelkeep.store", "encryption": {"cipher": "xchacha20-poly1305"}}
    (sealed / "modelkeep-store.json").write_text(json.dumps(desc))
    with pytest.raises(StoreError, match="encryption"):
        keep.sync(str(sealed), [v.ref])
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "modelkeep-store.json").write_text(json.dumps({**desc, "format": 2}))
    with pytest.raises(StoreError, match="format 2"):
        keep.sync(str(newer), [v.ref])
    with pytest.raises(StoreError, match="the destination is this store"):
        keep.sync(keep.store.url, [v.ref])
    assert list(Store.open(str(sealed)).snapshot_ids()) == []


def test_replication_policy_copies_each_new_version(tmp_path: Path,
                                                    mlflow_sqlite_uri: str) -> None:
    backup = StoreConfig("backup", str(tmp_path / "backup"))
    keep = open_keep(tmp_path, mlflow_sqlite_uri, backup,
                     policies={"team-*": {"replicate_to": ["backup"]}})
    ts = tensors(n=4)
    kept = keep.register(f"team-{unique_name()}", write_model(tmp_path / "a", ts))
    other = keep.register(unique_name(), write_model(tmp_path / "b", tensors(n=3, seed=5)))
    copy = dest_store(backup)
    assert set(copy.snapshot_ids()) == {kept.snapshot_id}
    assert copy.verify().ok
    assert other.snapshot_id not in set(copy.snapshot_ids())
