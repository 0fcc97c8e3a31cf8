"""Garbage collection: exactly the unreferenced chunks go (local, S3, Azure), in two phases;
dry runs change nothing; hidden chunks stay readable and come back when used; writers that
overlap a collection restore or re-store what it hid; the known-chunk cache cannot outlive a
collection; and a collection racing several registering processes never breaks a version.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

import modelkeep
from modelkeep.cli.main import main
from modelkeep.hooks import make_plugin_manager
from modelkeep.store import ChunksCollectedError, Kind, Snapshot, Store
from modelkeep.store.objects import FOSSILS
from tests.backends import Backend, make_backend, unique_name
from tests.helpers import change_fraction, tensors, tree_digest, write_model

NOW = timedelta(0)


@pytest.fixture(params=["local", "s3", "azure"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mlflow_sqlite_uri: str) -> Backend:
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


def chunk_ids(snap: Snapshot) -> set[str]:
    return {cid for f in snap.files for cid, _n in f.chunks}


def stored(store: Store) -> set[str]:
    return set(store.db.iter_ids(Kind.CHUNK))


def fossils(store: Store) -> set[str]:
    return {cid for cid, _s, _t in store.db.ids_with_times(f"{store.db.root}/{FOSSILS}")}


def test_gc_removes_exactly_the_chunks_of_a_deleted_snapshot(backend: Backend,
                                                             tmp_path: Path) -> None:
    keep = backend.open()
    store = keep.store
    name = unique_name()
    ts = tensors(n=10)
    v1 = keep.register(name, write_model(tmp_path / "m1", ts))
    change_fraction(ts, 0.3)
    v2 = keep.register(name, write_model(tmp_path / "m2", ts))
    c1, c2 = chunk_ids(keep.snapshot(v1.ref)), chunk_ids(keep.snapshot(v2.ref))
    garbage = c2 - c1
    assert len(garbage) >= 3  # the changed tensors (and the random vocabulary)
    before = stored(store)

    assert store.gc(grace=NOW).items == []  # everything is referenced
    planned = store.gc(grace=NOW, dry_run=True, ignore_snapshots=[v2.snapshot_id])
    assert {i.id for i in planned.hidden} == garbage  # what deleting v2 would free
    store.delete_snapshot(v2.snapshot_id)

    young = store.gc(grace=timedelta(hours=1))  # too recent to touch
    assert young.items == [] and young.young == len(garbage)
    dry = store.gc(grace=NOW, dry_run=True)
    assert {i.id for i in dry.hidden} == garbage and dry.deleted == []
    assert stored(store) == before and fossils(store) == set()  # a dry run changes nothing

    first = store.gc(grace=NOW)
    assert {i.id for i in first.hidden} == garbage
    assert all("no snapshot or run manifest uses it" in i.reason for i in first.hidden)
    assert first.bytes_reclaimed == 0  # hidden, not yet deleted
    assert stored(store) == c1 and fossils(store) == garbage

    sizes = {cid: store.db.size(Kind.CHUNK, cid) for cid in c1}
    second = store.gc(grace=NOW)
    assert {i.id for i in second.deleted} == garbage and second.hidden == []
    assert second.bytes_reclaimed == sum(i.size for i in second.deleted) > 0
    assert stored(store) == c1 and fossils(store) == set()
    assert {cid: store.db.size(Kind.CHUNK, cid) for cid in c1} == sizes
    assert keep.verify(v1.ref).ok
    assert tree_digest(keep.pull(v1.ref, tmp_path / "out")) == tree_digest(tmp_path / "m1")


def test_hidden_chunk_is_readable_and_restored_when_a_snapshot_uses_it(tmp_path: Path,
                                                                      mlflow_sqlite_uri: str
                                                                      ) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    store = keep.store
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=3)))
    snap = keep.snapshot(v.ref)
    payload = snap.encode()
    store.delete_snapshot(v.snapshot_id)
    hidden = {i.id for i in store.gc(grace=NOW).hidden}
    assert hidden == chunk_ids(snap) and stored(store) == set()
    # A register that found these chunks before they were hidden commits its snapshot now.
    store.db.put(Kind.SNAPSHOT, v.snapshot_id, payload)
    assert store.verify([v.snapshot_id]).ok  # read from fossils/
    out = store.materialize(snap, tmp_path / "out")
    assert tree_digest(out) == tree_digest(tmp_path / "m")
    again = store.gc(grace=NOW)
    assert {i.id for i in again.restored} == hidden and again.deleted == []
    assert stored(store) == hidden and fossils(store) == set()


def test_commit_check_restores_hidden_chunks_and_refuses_deleted_ones(
        tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    from modelkeep.store import scan_local

    files, stats = store.ingest(scan_local(write_model(tmp_path / "m", tensors(n=3))))
    snap = Snapshot(name="m", files=files, created="2026-11-29T09:00:00.000000Z")
    assert stats.gc_mark is not None and stats.gc_mark.run == 0
    store.gc(grace=NOW)  # hides every chunk: no snapshot references them yet
    assert stored(store) == set()
    sid = store.save_snapshot(snap, since=stats.gc_mark)
    assert stored(store) == chunk_ids(snap) and fossils(store) == set()
    assert store.verify([sid]).ok

    store.delete_snapshot(sid)
    mark = store.gc_mark()
    store.gc(grace=NOW)
    store.gc(grace=NOW)  # hidden, then deleted: the writer's chunks are gone
    with pytest.raises(ChunksCollectedError, match="nothing was committed"):
        store.save_snapshot(snap, since=mark)
    assert list(store.snapshot_ids()) == []  # the snapshot was taken back
    # Without a mark, a writer is checked whenever the store was ever collected.
    with pytest.raises(ChunksCollectedError):
        store.save_snapshot(snap)


def test_known_chunk_cache_does_not_outlive_a_collection(
        tmp_path: Path, moto_s3, mlflow_sqlite_uri: str,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    url = f"s3://{moto_s3.make_bucket()}/models"
    opts = dict(moto_s3.storage_options)
    keep = modelkeep.open(store=url, registry=mlflow_sqlite_uri, store_options=opts)
    src = write_model(tmp_path / "m", tensors(n=4))
    v1 = keep.register(unique_name(), src)
    assert keep.store.known is not None
    keep.store.delete_snapshot(v1.snapshot_id)
    other = Store.open(url, opts)  # another machine collects
    other.gc(grace=NOW)
    other.gc(grace=NOW)
    assert stored(other) == set()
    # This machine's cache still lists every chunk; the new epoch makes it unused.
    again = modelkeep.open(store=url, registry=mlflow_sqlite_uri, store_options=opts)
    v2 = again.register(unique_name(), src)
    assert v2.bytes_added == v2.size
    assert again.verify(v2.ref).ok


def test_cli_gc_reports_what_goes_and_why(tmp_path: Path, mlflow_sqlite_uri: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MODELKEEP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODELKEEP_REGISTRY", mlflow_sqlite_uri)
    keep = modelkeep.open()
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2), extra=False))
    used = chunk_ids(keep.snapshot(v.ref))
    keep.store.delete_snapshot(v.snapshot_id)
    pm = make_plugin_manager(entry_points=False)
    assert main(["gc", "--dry-run", "--grace", "0s", "--json"], plugins=pm) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["hidden"] == len(used)
    assert {i["id"] for i in report["items"]} == used
    assert stored(keep.store) and fossils(keep.store) == set()
    assert main(["gc", "--grace", "0"], plugins=pm) == 0
    out = capsys.readouterr().out
    assert "hid chunk" in out and "no snapshot or run manifest uses it" in out
    assert main(["gc", "--grace", "0"], plugins=pm) == 0
    out = capsys.readouterr().out
    assert "deleted chunk" in out and "reclaimed" in out
    assert stored(keep.store) == set()
    assert main(["gc", "--grace", "soon"], plugins=pm) == 2
    assert "invalid duration" in capsys.readouterr().err


def test_gc_deletes_the_versions_retention_allows_then_their_chunks(
        backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same policy gives the same result on every backend."""
    name = unique_name()
    config = tmp_path / "modelkeep.toml"
    # The registry is shared with other tests: the policy names this test's model only.
    config.write_text(f'[policies."{name}"]\nkeep_last = 1\n')
    monkeypatch.setenv("MODELKEEP_CONFIG", str(config))
    for key, value in backend.env(backend.new_store_url()).items():
        monkeypatch.setenv(key, value)
    pm = make_plugin_manager(entry_points=False)
    keep = modelkeep.open(plugins=pm)
    ts = tensors(n=4)
    old = keep.register(name, write_model(tmp_path / "m1", ts, extra=False))
    change_fraction(ts, 0.5)
    new = keep.register(name, write_model(tmp_path / "m2", ts, extra=False))
    only_old = chunk_ids(keep.snapshot(old.ref)) - chunk_ids(keep.snapshot(new.ref))
    assert only_old
    assert main(["gc", "--dry-run", "--grace", "0s", "--json"], plugins=pm) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(v["ref"], v["action"]) for v in report["versions"]] == [(old.ref, "delete")]
    assert {i["id"] for i in report["items"]} == only_old
    assert [v.version for v in keep.versions(name)] == [1, 2]  # a dry run deletes nothing
    assert main(["gc", "--grace", "0s"], plugins=pm) == 0
    out = capsys.readouterr().out
    assert f"deleted version {old.ref}: not one of the 1 newest (keep_last)" in out
    assert [v.version for v in keep.versions(name)] == [2]
    assert main(["gc", "--grace", "0s"], plugins=pm) == 0  # the second run deletes the chunks
    assert stored(keep.store) == chunk_ids(keep.snapshot(new.ref))
    assert keep.verify(new.ref).ok


# -- the race ---------------------------------------------------------------------------------


def _register_loop(store_url: str, registry: str, base: str, worker: int, count: int,
                   out: str) -> None:
    """A process registering *count* versions built mostly from the deleted versions' tensors
    (so they dedup against unreferenced chunks a collection is after), each with one new one."""
    from safetensors.numpy import load_file

    keep = modelkeep.open(store=store_url, registry=registry,
                          plugins=make_plugin_manager(entry_points=False))
    old = load_file(str(Path(base) / "model.safetensors"))
    results = []
    for i in range(count):
        ts = dict(old)
        change_fraction(ts, 0.1, seed=1000 * worker + i)
        folder = write_model(Path(out).parent / f"w{worker}-{i}", ts, extra=False)
        try:
            v = keep.register(f"race-{worker}", folder)
            results.append({"sid": v.snapshot_id, "size": v.size,
                            "added": v.bytes_added, "folder": str(folder)})
        except ChunksCollectedError as exc:
            results.append({"error": str(exc)})
    Path(out).write_text(json.dumps(results))


def test_gc_racing_concurrent_registers_never_breaks_a_committed_version(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    store_url = str(tmp_path / "store")
    keep = modelkeep.open(store=store_url, registry=mlflow_sqlite_uri)
    base = write_model(tmp_path / "base", tensors(n=24), extra=False)
    old = keep.register(unique_name(), base)
    keep.store.delete_snapshot(old.snapshot_id)  # its chunks are garbage, free to reuse
    # Forked, so the workers start at once with everything imported; each has a registry of its
    # own (a copy of the migrated session database), since the race is about the store.
    ctx = multiprocessing.get_context("fork")
    workers = []
    for w in range(3):
        out = tmp_path / f"result-{w}.json"
        registry = tmp_path / f"registry-{w}.db"
        shutil.copyfile(mlflow_sqlite_uri.removeprefix("sqlite:///"), registry)
        p = ctx.Process(target=_register_loop,
                        args=(store_url, f"sqlite:///{registry}", str(base), w, 3, str(out)))
        p.start()
        workers.append((p, out))
    hidden = deleted = restored = runs = 0
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p, _ in workers):
        report = keep.store.gc(grace=timedelta(milliseconds=50))
        runs += 1
        hidden += len(report.hidden)
        deleted += len(report.deleted)
        restored += len(report.restored)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for p, _ in workers:
        p.join(10)
        assert p.exitcode == 0
    results = [r for _, out in workers for r in json.loads(out.read_text())]
    committed = [r for r in results if "sid" in r]
    assert len(committed) >= 5, results
    assert hidden > 0 and runs >= 3  # the collector really raced the writers
    for _ in range(2):  # and a quiet store settles: restored or deleted, nothing referenced lost
        keep.store.gc(grace=NOW)
    report = keep.store.verify([r["sid"] for r in committed])
    assert report.ok, [str(p) for p in report.problems]
    last = committed[-1]
    out = keep.store.materialize(keep.store.load_snapshot(last["sid"]), tmp_path / "pulled")
    assert tree_digest(out) == tree_digest(Path(last["folder"]))


def test_run_manifests_keep_their_chunks_and_collections_do_not_overlap(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "store"))
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(bytes(range(256)) * 4096)
    store.runs("exp/1/artifacts").log_file(artifact, "model/weights.bin")
    used = set(store.runs("exp/1/artifacts").entry("model/weights.bin").chunks)
    for _ in range(2):
        report = store.gc(grace=NOW)
        assert report.items == [] and report.manifests == 1
    assert stored(store) == {cid for cid, _n in used}

    # A run that started and has not finished (another machine collecting) blocks a second one.
    from modelkeep.errors import StoreError

    store.db.put_raw_once(f"{store.db.root}/gc/runs/{3:010d}.start", b"{}")
    assert not store.gc_mark().settled
    with pytest.raises(StoreError, match=r"another garbage collection .* is running"):
        store.gc(grace=NOW)
