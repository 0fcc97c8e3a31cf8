"""The training-script API: track(), Tracker and Keep.checkpoint, on a real tiny PyTorch loop."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import modelkeep
from modelkeep.errors import CheckpointError, StoreUnreachableError
from modelkeep.training import RETENTION_TAG, STAGING_PREFIX
from tests.backends import unique_name
from tests.helpers import tree_digest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str) -> modelkeep.Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)


class Tiny(torch.nn.Module):
    """A frozen 'backbone' (most of the bytes, unchanged by training) and a trainable head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(256, 256)
        self.backbone.requires_grad_(False)
        self.head = torch.nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def _setup(seed: int = 0) -> tuple[Tiny, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    x = torch.randn(64, 256)
    y = torch.randint(0, 4, (64,))
    return model, opt, x, y


def _train_step(model: Tiny, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def _save(folder: Path, model: Tiny, opt: torch.optim.Optimizer, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "step": step}, folder / "trainer.pt")


def test_track_registers_a_chain_with_metric_tags_and_dedup(keep: modelkeep.Keep,
                                                           tmp_path: Path) -> None:
    name = unique_name()
    model, opt, x, y = _setup()
    ckpt = tmp_path / "ckpt"
    saved: dict[int, dict] = {}
    with modelkeep.track(name, keep=keep, every=2, on_full="block") as run:
        for step in range(1, 7):
            loss = _train_step(model, opt, x, y)
            if run.due(step):
                _save(ckpt, model, opt, step)
                saved[step] = tree_digest(ckpt)
                started = time.perf_counter()
                pending = run.checkpoint(ckpt, step=step, metrics={"loss": torch.tensor(loss)})
                assert pending is not None
                assert time.perf_counter() - started < 1.0  # queued, not uploaded, here
            else:
                assert run.checkpoint(ckpt, step=step) is None  # not due: not even read
    versions = keep.versions(name)
    assert [v.tags["step"] for v in versions] == ["2", "4", "6"]
    assert [str(p) for p in versions[0].parents] == []
    assert [[f"{p.name}@{p.version}" for p in v.parents] for v in versions[1:]] == [
        [versions[0].ref], [versions[1].ref]]
    for v in versions:
        assert float(v.tags["metric.loss"]) > 0
        assert ("modelkeep.parents" in v.tags) == bool(v.parents)
    # The frozen backbone is stored once: later checkpoints add only the head and the optimizer.
    assert versions[0].bytes_added == versions[0].size
    for v in versions[1:]:
        assert v.bytes_added is not None and v.bytes_added < v.size / 4
    assert "last" in versions[-1].aliases
    # Each version holds the bytes saved at its step, although the loop overwrote them since.
    for v in versions:
        dest = tmp_path / f"pulled-{v.version}"
        keep.pull(v.ref, dest)
        assert tree_digest(dest) == saved[int(v.tags["step"])]
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))  # staging removed on close


def test_pulled_latest_resumes_training(keep: modelkeep.Keep, tmp_path: Path) -> None:
    name = unique_name()
    model, opt, x, y = _setup()
    with modelkeep.track(name, keep=keep) as run:
        for step in range(1, 4):
            _train_step(model, opt, x, y)
            _save(tmp_path / "ckpt", model, opt, step)
            run.checkpoint(tmp_path / "ckpt", step=step)
    expected_next = _train_step(model, opt, x, y)  # the step after the last checkpoint

    restored = keep.pull(f"{name}@latest", tmp_path / "resume")
    model2, opt2, _x, _y = _setup(seed=1)  # different initial weights: all must come from disk
    model2.load_state_dict(load_file(str(restored / "model.safetensors")))
    state = torch.load(restored / "trainer.pt", weights_only=True)
    opt2.load_state_dict(state["optimizer"])
    assert state["step"] == 3
    assert _train_step(model2, opt2, x, y) == pytest.approx(expected_next, rel=1e-6)


def test_monitor_best_and_retention(keep: modelkeep.Keep, tmp_path: Path) -> None:
    name = unique_name()
    losses = [5.0, 3.0, 4.0, 2.0, 6.0, 7.0, 1.5]
    ckpt = tmp_path / "ckpt"
    with modelkeep.track(name, keep=keep, monitor="val_loss", mode="min", every=3, keep_last=2,
                         on_full="block") as run:
        for step, loss in enumerate(losses, start=1):
            if run.due(step, {"val_loss": loss}):
                ckpt.mkdir(exist_ok=True)
                (ckpt / "w.bin").write_bytes(os.urandom(1000) + str(step).encode())
                run.checkpoint(ckpt, step=step, metrics={"val_loss": loss})
    versions = {int(v.tags["step"]): v for v in keep.versions(name)}
    # Improvements (1, 2, 4, 7) and every third step (3, 6).
    assert sorted(versions) == [1, 2, 3, 4, 6, 7]
    assert "best" in versions[7].aliases and "last" in versions[7].aliases
    kept = {s for s, v in versions.items() if v.tags.get(RETENTION_TAG) != "expired"}
    assert kept == {6, 7}  # last two; the best is also the last
    assert all(versions[s].tags.get(RETENTION_TAG) == "expired" for s in (1, 2, 3, 4))


def test_best_survives_retention_and_skipping(keep: modelkeep.Keep, tmp_path: Path) -> None:
    name = unique_name()
    ckpt = tmp_path / "ckpt"
    losses = [1.0] + [2.0 + i for i in range(11)]  # the first is the best, never beaten
    with modelkeep.track(name, keep=keep, monitor="loss", every=1, keep_last=2,
                         max_pending=1, on_full="skip") as run:
        pendings = []
        for step, loss in enumerate(losses, start=1):
            ckpt.mkdir(exist_ok=True)
            (ckpt / "w.bin").write_bytes(os.urandom(20_000))
            pendings.append(run.checkpoint(ckpt, step=step, metrics={"loss": loss}))
    assert pendings[0] is not None and pendings[0].result() is not None  # the best, kept
    registered = [p for p in pendings if p is not None and p.result() is not None]
    skipped = [p for p in pendings if p is not None and p.skipped]
    assert len(registered) + len(skipped) == len(losses)
    assert skipped  # twelve saves in microseconds, one queue slot: uploads fell behind
    assert run.stats.skipped == len(skipped)
    versions = keep.versions(name)
    assert len(versions) == len(registered)
    # Whatever was skipped, the registered ones form one chain, in step order.
    for prev, cur in itertools.pairwise(versions):
        assert [p.version for p in cur.parents] == [prev.version]
        assert int(cur.tags["step"]) > int(prev.tags["step"])
    assert "best" in versions[0].aliases
    assert versions[0].tags.get(RETENTION_TAG) is None


def test_keep_checkpoint_and_flush(keep: modelkeep.Keep, tmp_path: Path) -> None:
    name = unique_name()
    model, opt, x, y = _setup()
    for step in (1, 2):
        _train_step(model, opt, x, y)
        _save(tmp_path / "ckpt", model, opt, step)
        keep.checkpoint(name, tmp_path / "ckpt" / "model.safetensors", step=step,
                        metrics={"acc": 0.5 + step / 10})
    flushed = keep.flush()
    assert [v.version for v in flushed] == [1, 2]
    v2 = keep.get(f"{name}@2")
    assert [f.path for f in v2.files] == ["model.safetensors"]
    assert [p.version for p in v2.parents] == [1]
    assert v2.tags["metric.acc"] == "0.7"


def test_checkpoint_linked_to_active_mlflow_run(keep: modelkeep.Keep, tmp_path: Path,
                                                mlflow_sqlite_uri: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(mlflow_sqlite_uri)
    name = unique_name()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"weights")
    try:
        with mlflow.start_run() as active, modelkeep.track(name, keep=keep) as run:
            run.checkpoint(tmp_path / "ckpt", step=1)
    finally:
        mlflow.set_tracking_uri(None)
    version = keep.get(f"{name}@1")
    assert version.tags["modelkeep.run_id"] == active.info.run_id
    assert keep.registry.get_version(name, 1).run_id == active.info.run_id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unreachable_s3(registry: str) -> modelkeep.Keep:
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                              "region_name": "us-east-1"},
            "config_kwargs": {"connect_timeout": 1, "read_timeout": 2,
                              "retries": {"max_attempts": 1}}}
    return modelkeep.open(store="s3://bucket/models", registry=registry, store_options=opts)


@pytest.mark.timeout(60)
def test_unreachable_store_fails_at_flush_without_stalling(tmp_path: Path,
                                                           mlflow_sqlite_uri: str) -> None:
    keep = _unreachable_s3(mlflow_sqlite_uri)
    name = unique_name()
    model, opt, x, y = _setup()
    run = modelkeep.track(name, keep=keep, max_failures=2)
    started = time.perf_counter()
    for step in range(1, 6):
        _train_step(model, opt, x, y)
        _save(tmp_path / "ckpt", model, opt, step)
        run.checkpoint(tmp_path / "ckpt", step=step)  # never raises for the store
    assert time.perf_counter() - started < 5  # training did not wait on the dead endpoint
    with pytest.raises(CheckpointError, match=r"not registered.*unreachable") as info:
        run.close(timeout=30)
    assert isinstance(info.value.__cause__, StoreUnreachableError)
    assert info.value.failures and info.value.failures[0][0] is not None
    assert run.stats.registered == 0
    assert run.stats.failed + run.stats.skipped == 5
    assert name not in keep.models()  # nothing half-registered
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))


def test_context_exit_raises_flush_errors_and_keeps_training_errors(
        tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    keep = _unreachable_s3(mlflow_sqlite_uri)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"w")
    with pytest.raises(CheckpointError, match="unreachable"), \
            modelkeep.track(unique_name(), keep=keep) as run:
        run.checkpoint(tmp_path / "ckpt", step=1)
    # A training error stays the error raised; the upload failure is attached as a note.
    with pytest.raises(ZeroDivisionError) as info, \
            modelkeep.track(unique_name(), keep=keep) as run:
        run.checkpoint(tmp_path / "ckpt", step=1)
        _ = 1 / 0
    assert any("unreachable" in note for note in info.value.__notes__)


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(body)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=90)


def test_process_exit_flushes_and_reports(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    # One script, two trackers left unflushed: one registers at exit, one reports its failure.
    name = unique_name()
    result = _script(tmp_path, f"""
import modelkeep, pathlib, socket
keep = modelkeep.open(store="store", registry={mlflow_sqlite_uri!r})
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dead = modelkeep.open(store="s3://bucket/models", registry={mlflow_sqlite_uri!r}, store_options={{
    "key": "testing", "secret": "testing",
    "client_kwargs": {{"endpoint_url": f"http://127.0.0.1:{{port}}", "region_name": "us-east-1"}},
    "config_kwargs": {{"connect_timeout": 1, "retries": {{"max_attempts": 1}}}}}})
p = pathlib.Path("ckpt"); p.mkdir()
for step in range(3):
    (p / "w.bin").write_bytes(bytes([step]) * 1000)
    keep.checkpoint({name!r}, p, step=step)
dead.checkpoint("m-exit", p, step=1)
# no flush: the exit hook registers what is queued and reports what failed
""")
    assert result.returncode == 0, result.stderr
    assert "modelkeep: 1 checkpoint(s) of 'm-exit' were not registered" in result.stderr
    assert "unreachable" in result.stderr
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    assert [v.tags["step"] for v in keep.versions(name)] == ["0", "1", "2"]


def test_import_modelkeep_stays_light() -> None:
    code = ("import sys, modelkeep; assert callable(modelkeep.track); "
            "heavy = [m for m in ('mlflow', 'torch', 'fsspec') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # modelkeep.training loads the store (fsspec) only when a tracker opens one.
    assert out.stdout.strip() == "[]"
    out = subprocess.run([sys.executable, "-c", "import sys, modelkeep; "
                          "print('modelkeep.training' in sys.modules, 'fsspec' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_staging_copy_is_private_and_a_rewritten_link_is_detected(tmp_path: Path) -> None:
    from modelkeep.training import _stat_key, stage

    src = tmp_path / "ckpt.bin"
    src.write_bytes(b"a" * 4096)
    copied = stage(src, tmp_path / "copy", "copy")
    linked = stage(src, tmp_path / "link", "link")
    time.sleep(0.01)  # a distinct mtime for the rewrite
    with src.open("r+b") as f:  # what torch.save / h5py do to an existing path: rewrite in place
        f.write(b"b" * 4096)
    (copy_path, copy_key), = ((Path(p), k) for p, k in copied.items())
    (link_path, link_key), = ((Path(p), k) for p, k in linked.items())
    assert copy_path.read_bytes() == b"a" * 4096 and _stat_key(copy_path) == copy_key
    assert link_path.read_bytes() == b"b" * 4096  # a link shares the rewritten bytes ...
    assert _stat_key(link_path) != link_key  # ... and the tracker sees it changed
    # A writer that replaces the file (new inode), as Lightning and the callbacks arrange, leaves
    # the link intact.
    linked = stage(src, tmp_path / "link2", "link")
    replacement = tmp_path / "tmp.bin"
    replacement.write_bytes(b"c" * 4096)
    replacement.replace(src)
    (link_path, link_key), = ((Path(p), k) for p, k in linked.items())
    assert link_path.read_bytes() == b"b" * 4096 and _stat_key(link_path) == link_key


def test_gc_deletes_the_checkpoints_a_runs_retention_expired(keep: modelkeep.Keep,
                                                             tmp_path: Path) -> None:
    from datetime import timedelta

    from modelkeep.policy import retention_plan

    name = unique_name()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    losses = [3.0, 1.0, 2.0, 4.0, 5.0]  # step 2 is the best; 4 and 5 are the last two
    with modelkeep.track(name, keep=keep, every=1, monitor="loss", keep_last=2,
                         on_full="block") as run:
        for step, loss in enumerate(losses, start=1):
            (ckpt / "w.bin").write_bytes(os.urandom(30_000))
            run.checkpoint(ckpt, step=step, metrics={"loss": loss})
    untouched = unique_name()  # no run expired any of its versions
    keep.register(untouched, ckpt)
    (ckpt / "w.bin").write_bytes(os.urandom(100))
    keep.register(untouched, ckpt)
    # The same model's expired versions in another store are that store's to collect.
    elsewhere = modelkeep.open(store=str(tmp_path / "other"), registry=keep.registry.uri)
    assert retention_plan(elsewhere, name) == []

    plan = {i.version: (i.action, i.reasons) for i in retention_plan(keep, name)}
    assert {v: a for v, (a, _r) in plan.items()} == {
        1: "delete", 2: "keep", 3: "delete", 4: "keep", 5: "keep"}
    assert plan[1][1] == ("expired by its training run (keep_last of its tracker)",)
    assert any("aliased (best)" in r for r in plan[2][1])
    assert retention_plan(keep, untouched) == []
    dry = keep.gc(grace=timedelta(0), dry_run=True)
    assert sorted(dry.deleted_snapshots) == sorted(
        v.snapshot_id for v in keep.versions(name) if v.version in (1, 3))
    assert [v.version for v in keep.versions(name)] == [1, 2, 3, 4, 5]  # nothing deleted yet
    keep.gc(grace=timedelta(0))
    assert [v.version for v in keep.versions(name)] == [2, 4, 5]
    assert [v.version for v in keep.versions(untouched)] == [1, 2]
    assert keep.verify(f"{name}@2").ok


def test_registry_finds_the_models_a_run_expired_in_one_search(keep: modelkeep.Keep,
                                                               tmp_path: Path) -> None:
    name = unique_name()
    (tmp_path / "ckpt").mkdir()
    with modelkeep.track(name, keep=keep, every=1, keep_last=1, on_full="block") as run:
        for step in (1, 2):
            (tmp_path / "ckpt" / "w.bin").write_bytes(os.urandom(1000))
            run.checkpoint(tmp_path / "ckpt", step=step)
    found = keep.registry.models_tagged(RETENTION_TAG, "expired")
    assert name in found
    assert unique_name() not in found
