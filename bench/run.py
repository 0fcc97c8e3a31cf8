"""Benchmark modelkeep against the tools people use today, side by side on the same files.

``make bench`` runs ``.venv/bin/python bench/run.py``. In one run, on the same generated float16
safetensors model (v1, v2 with 10% of tensors changed, v3 with 3 tensors inserted, v1 re-sharded
into 4 files) it measures, for ``cp``, modelkeep (store phase and full register), ``dvc add`` +
``dvc push``, MLflow ``log_artifacts`` + ``register_model`` and ``git lfs`` ``add`` + ``commit``:

* wall time of storing each version, best and median of the repeats, and the ratio of the best
  run to the best ``cp`` of the same bytes;
* bytes each tool's storage grows by per version;
* peak RSS (a fresh process per measurement);

plus ``modelkeep pull`` against ``cp -r`` (paired in one process), the store phase and pull of a
bf16 model of weight-like values of the same size (the default codec at full work: byte planes on
every tensor) against ``cp``, peak RSS of registering a 4x larger bf16 weight-like model, and
modelkeep to S3 (a local ``moto_server``) against ``s3fs.S3FileSystem.put_file``
of the same file. It prints the tables with the targets marked PASS/FAIL and writes them to
``bench/RESULTS.md``.

Method: no tool fsyncs; every source is read once before its timing (warm page cache for all) and
dirty pages are flushed (``sync``) before each measurement, outside the timing. A ``cp`` of the
same files precedes every tool's run, so the baseline is sampled as often as the tools are. A
tool that is not installed (git-lfs, dvc, moto) is skipped with a message. See
``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import _model
from _tasks import RESULT_MARK, rmtree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VERSIONS = ("v1", "v2", "v3", "reshard")
VERSION_LABEL = {
    "v1": "v1 (new)",
    "v2": "v2 (10% of tensors changed)",
    "v3": "v3 (3 tensors inserted)",
    "reshard": "v1 re-sharded (4 files)",
}
ALL_PEERS = ("cp", "modelkeep", "dvc", "mlflow", "gitlfs", "s3")
MARKER = ".modelkeep-bench-workdir"
KEEP_MARKER = "<!-- analysis: kept when the tables above are regenerated -->"
MIB = 1 << 20
GIB = 1 << 30

CP = "cp"
MK_STORE = "modelkeep store phase"
MK_REGISTER = "modelkeep register"
DVC = "dvc add + push"
MLFLOW = "mlflow log_artifacts + register_model"
GITLFS = "git-lfs add + commit"
MK_PULL = "modelkeep pull"
CP_PULL = "cp -r, beside the pull"
S3_PUT = "s3fs put_file"
S3_MK_REGISTER = "modelkeep register -> S3"

# Targets from the issue: storing a new 1 GiB version <= 2x cp (store phase); v2 stores <= 10% of
# v1's bytes, v3 <= 0.1%, re-shard <= 1%; pull <= 2x cp; peak RSS <= 300 MiB for a 4 GiB model;
# to S3 no slower than s3fs put_file. With the codecs: the bf16 weight-like model stores (store
# phase, default codec) in <= 2x cp and pulls in <= 1.3x cp.
TARGET_STORE_X = 2.0
TARGET_BYTES = {"v2": 0.10, "v3": 0.001, "reshard": 0.01}
TARGET_PULL_X = 2.0
TARGET_PULL_CODED_X = 1.3
# The column of the bf16 weight-like model (bench/_model.py write_weights).
WEIGHTS = "bf16"
# A file of 100,000 four-byte tensors (column TINY) against a file of one tensor of the same
# size (column ONE): the first stores in under 1,000 objects, no more bytes than the file, and
# at most 3x the time of the second (each run paired with the ONE run just before or after it).
TINY, ONE = "tiny", "one"
TARGET_TINY_X = 3.0
TARGET_TINY_OBJECTS = 1000
TARGET_RSS_MIB = 300.0
TARGET_S3_X = 1.0
# The `cp` a row is compared with, where it is not the CP row.
BASELINE = {MK_PULL: CP_PULL}
PULLS_PER_REPEAT = 8


class BenchError(RuntimeError):
    pass


@dataclass
class Sample:
    seconds: float  # the operation alone
    process: float  # the whole child process: interpreter start, imports, setup, operation
    rss_mib: float | None  # None where it cannot be told apart from another process's
    stored: int | None = None  # bytes the tool's storage grew by
    cp_seconds: float | None = None  # the `cp` of the same files this sample is paired with
    objects: int | None = None  # objects in the store afterwards, where counted


@dataclass
class Results:
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, row: str, col: str, sample: Sample) -> None:
        self.samples.setdefault((row, col), []).append(sample)

    def has(self, row: str, col: str) -> bool:
        return (row, col) in self.samples

    def median(self, row: str, col: str, attr: str = "seconds") -> float | None:
        values = [getattr(s, attr) for s in self.samples.get((row, col), [])]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def best(self, row: str, col: str) -> float | None:
        values = [s.seconds for s in self.samples.get((row, col), [])]
        return min(values) if values else None

    def cp_ratio(self, row: str, col: str) -> float | None:
        """Best run of *row* over the best `cp` of the same files."""
        return ratio(self.best(row, col), self.best(BASELINE.get(row, CP), col))

    def paired(self, row: str, col: str) -> list[float]:
        """Each run of *row* over the `cp` of the same files it is paired with."""
        return [s.seconds / s.cp_seconds for s in self.samples.get((row, col), [])
                if s.cp_seconds]

    def paired_median(self, row: str, col: str) -> float | None:
        values = self.paired(row, col)
        return statistics.median(values) if values else None

    def peak_rss(self, row: str, cols: Sequence[str] = VERSIONS) -> float | None:
        values = [s.rss_mib for c in cols for s in self.samples.get((row, c), [])
                  if s.rss_mib is not None]
        return max(values) if values else None


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def warm(*paths: Path) -> None:
    """Read every file under *paths* once, so that the timed tool finds it in the page cache."""
    buf = bytearray(16 * MIB)
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            with open(file, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def run(argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def replace_tree(src: Path, dest: Path) -> None:
    """Make *dest* a fresh copy of folder *src* (untimed workspace preparation)."""
    rmtree(dest)
    run(["cp", "-r", str(src), str(dest)])


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def fmt_x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def fmt_pct(frac: float | None) -> str:
    if frac is None:
        return "-"
    if frac == 0:
        return "0%"
    if frac < 0.001:
        return f"{frac * 100:.4f}%"
    return f"{frac * 100:.2f}%"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


class Bench:
    """One benchmark run: generated versions, tools found, measurements, report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.workdir.resolve()
        self.results = Results()
        self.versions: dict[str, _model.VersionInfo] = {}
        self.peers = set(args.peers)
        self.env = dict(os.environ)
        self.env.update(
            {
                "MODELKEEP_CACHE_DIR": str(self.work / "modelkeep-cache"),
                "DVC_NO_ANALYTICS": "1",
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "GIT_AUTHOR_NAME": "bench",
                "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                "GIT_COMMITTER_NAME": "bench",
                "GIT_COMMITTER_EMAIL": "bench@example.invalid",
                "GIT_CONFIG_GLOBAL": os.devnull,
            }
        )
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.dvc: list[str] | None = None
        self.moto: str | None = None
        self.s3_options: dict[str, Any] = {}
        self.last_cp: dict[str, float] = {}  # version -> seconds of the latest `cp` sample

    # -- tools -------------------------------------------------------------------------------

    def detect_tools(self) -> None:
        if "dvc" in self.peers:
            if self._importable("dvc"):
                self.dvc = [sys.executable, "-m", "dvc"]
            elif shutil.which("dvc"):
                self.dvc = [str(shutil.which("dvc"))]
            else:
                self.skip("dvc", 'not installed (pip install "modelkeep[dvc]")')
        if "gitlfs" in self.peers:
            lfs = subprocess.run(["git", "lfs", "version"], capture_output=True, text=True)
            if lfs.returncode != 0:
                self.skip("gitlfs", "git-lfs is not installed: its column is skipped")
        if "mlflow" in self.peers and not self._importable("mlflow"):
            self.skip("mlflow", "mlflow is not installed")
        if "s3" in self.peers:
            moto = Path(sys.executable).parent / "moto_server"
            if not moto.exists() or not self._importable("s3fs"):
                self.skip("s3", "moto_server or s3fs is not installed")
            else:
                self.moto = str(moto)

    def _importable(self, module: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return subprocess.run([sys.executable, "-c", code]).returncode == 0

    def skip(self, peer: str, why: str) -> None:
        self.peers.discard(peer)
        self.results.skipped.append(f"{peer}: {why}")
        log(f"skipped {peer}: {why}")

    # -- measuring ---------------------------------------------------------------------------

    def measure(self, spec: dict[str, Any], warm_paths: Sequence[Path] = ()) -> dict[str, Any]:
        """Flush dirty pages, warm the sources, then run *spec* in a fresh child process."""
        os.sync()
        warm(*warm_paths)
        argv = [sys.executable, str(HERE / "_tasks.py"), json.dumps(spec)]
        start = time.perf_counter()
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=3600)
        process = time.perf_counter() - start
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if proc.returncode != 0 or not lines:
            raise BenchError(
                f"task {spec['task']} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
        result["process"] = process
        # A Python task's own peak is what it used; a task that shells out reports its tools'.
        # (A fork of a Python process would report the parent's pages as its own, so the
        # children's figure is used only for command tasks.)
        kib = result["rss_children_kib"] if spec["task"] == "cmds" else result["rss_self_kib"]
        result["rss_mib"] = kib / 1024
        return result

    def record(
        self,
        row: str,
        col: str,
        res: dict[str, Any],
        stored: int | None = None,
        baseline: float | None = None,
        objects: int | None = None,
    ) -> None:
        """Keep one sample; *baseline* (default: the latest `cp` of *col*) is what it is paired
        with; *objects* what the store holds afterwards, where counted."""
        paired = baseline
        if paired is None and row not in (CP, CP_PULL):
            paired = self.last_cp.get(col)
        sample = Sample(res["seconds"], res["process"], res["rss_mib"], stored, paired, objects)
        self.results.add(row, col, sample)
        extra = f", +{fmt_bytes(stored)}" if stored is not None else ""
        rss = "-" if sample.rss_mib is None else f"{sample.rss_mib:.0f}"
        log(
            f"  {row:<40} {col:<8} {sample.seconds:7.2f} s  (process {sample.process:6.2f} s, "
            f"RSS {rss:>6} MiB{extra})"
        )

    # -- setup -------------------------------------------------------------------------------

    def prepare_workdir(self) -> None:
        if self.work.exists():
            if not (self.work / MARKER).exists() and any(self.work.iterdir()):
                raise BenchError(f"{self.work} exists and was not made by this benchmark")
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        (self.work / MARKER).write_text("scratch space of bench/run.py; safe to delete\n")

    def generate(self) -> None:
        log(f"generating v1, v2, v3 and re-shard (~{self.args.size_mib} MiB each)")
        start = time.perf_counter()
        self.versions = _model.write_versions(self.work / "versions", self.args.size_mib)
        from safetensors import safe_open

        for info in self.versions.values():
            for name in info.files:
                if name.endswith(".safetensors"):
                    with safe_open(str(info.path / name), "numpy") as f:  # header sanity check
                        assert len(list(f.keys())) > 0
        v1 = self.versions["v1"]
        log(
            f"  done in {time.perf_counter() - start:.1f} s: v1 {fmt_bytes(v1.size)}, "
            f"{v1.tensors} tensors"
        )
        if "modelkeep" in self.peers:
            start = time.perf_counter()
            info = _model.write_weights(self.work / "versions", WEIGHTS, self.args.size_mib)
            self.versions[WEIGHTS] = info
            log(f"  bf16 weight-like model: {fmt_bytes(info.size)} in "
                f"{time.perf_counter() - start:.1f} s")
            self.versions[TINY] = _model.write_tiny(self.work / "versions", TINY)
            self.versions[ONE] = _model.write_one_tensor(self.work / "versions", ONE,
                                                         self.versions[TINY].size)

    # -- baseline ----------------------------------------------------------------------------

    def cp_sample(self, v: str) -> None:
        """One `cp -r` of version *v*'s folder, run just before a tool's run of the same files.

        On this kind of machine a copy takes 0.4 s or 4 s depending on what ran in the seconds
        before, so `cp` is sampled as often as the tools are, in the same places.
        """
        src = self.versions[v].path
        out = self.work / "cp-out"
        rmtree(out)
        res = self.measure({"task": "cmds", "cmds": [["cp", "-r", str(src), str(out)]]}, [src])
        self.record(CP, v, res, _model.tree_size(out))
        self.last_cp[v] = res["seconds"]
        rmtree(out)

    # -- peers: setup(r), then step(v) for each version in order, then finish() ---------------

    def peers_for_repeat(self, r: int) -> list[Peer]:
        peers: list[Peer] = []
        if "modelkeep" in self.peers:
            peers += [ModelkeepStore(self, r), ModelkeepRegister(self, r)]
        if "dvc" in self.peers:
            peers.append(Dvc(self, r))
        if "mlflow" in self.peers:
            peers.append(Mlflow(self, r))
        if "gitlfs" in self.peers:
            peers.append(GitLfs(self, r))
        return peers

    # -- S3 ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def moto_server(self) -> Iterator[str]:
        assert self.moto is not None
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(self.work / "moto.log", "wb") as out:
            proc = subprocess.Popen(
                [self.moto, "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(endpoint + "/", timeout=2):
                        break
                except urllib.error.HTTPError:
                    break  # it answers
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise BenchError("moto_server did not start; see moto.log") from None
                    time.sleep(0.2)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run_s3(self, r: int) -> None:
        """modelkeep register to an s3fs store against s3fs put_file of the same file."""
        options = self.s3_options
        # A fresh prefix per repeat: the known-chunk cache must never vouch for deleted objects.
        prefix = f"bench/r{r}-{uuid.uuid4().hex[:8]}"
        v1 = self.versions["v1"].path
        res = self.measure(
            {"task": "s3_put", "src": str(v1), "dest": f"{prefix}/put", "options": options}, [v1]
        )
        self.record(S3_PUT, "v1", res)
        put_seconds = res["seconds"]
        registry = self.work / f"s3-reg-r{r}.db"
        for v in ("v1", "v2"):
            src = self.versions[v].path
            spec = {
                "task": "mk_register",
                "store": f"s3://{prefix}/store",
                "registry": f"sqlite:///{registry}",
                "src": str(src),
                "name": "bench",
                "options": options,
                "count": True,
                "parents": [] if v == "v1" else ["bench@1"],
            }
            res = self.measure(spec, [src])
            self.record(S3_MK_REGISTER, v, res, res["stored_delta"], baseline=put_seconds)
        self.measure({"task": "s3_admin", "action": "rm", "path": prefix, "options": options})
        rmtree(registry)

    # -- bf16 weight-like model --------------------------------------------------------------

    def run_weights(self, r: int) -> None:
        """Store phase of the bf16 weight-like model into a fresh store, right after a `cp` of
        it; then pulls of it, each paired with a `cp -r` in the same process (as for v1)."""
        info = self.versions[WEIGHTS]
        store = self.work / f"w-store-r{r}"
        self.cp_sample(WEIGHTS)
        spec = {"task": "mk_store", "store": str(store), "src": str(info.path), "name": "w"}
        res = self.measure(spec, [info.path])
        self.record(MK_STORE, WEIGHTS, res, _model.tree_size(store))
        rmtree(store)
        registry = self.work / f"w-reg-r{r}.db"
        spec = {"task": "mk_register", "store": str(store), "registry": f"sqlite:///{registry}",
                "src": str(info.path), "name": "w"}
        self.measure(spec, [info.path])
        outs = {"pull": self.work / f"w-pull-r{r}", "cp": self.work / "w-cp-pull"}
        for i in range(-1, PULLS_PER_REPEAT // 2):
            order = ["cp", "pull"] if (i + r) % 2 == 0 else ["pull", "cp"]
            spec = {"task": "mk_pull_pair", "store": str(store),
                    "registry": f"sqlite:///{registry}", "ref": "w@1", "src": str(info.path),
                    "outs": {k: str(v) for k, v in outs.items()}, "order": order}
            res = self.measure(spec, [store, info.path])
            if i < 0:
                continue  # the first pair leaves the outputs the recorded ones replace
            self.record(CP_PULL, WEIGHTS, dict(res, seconds=res["cp_seconds"], rss_mib=None))
            self.record(MK_PULL, WEIGHTS, res, baseline=res["cp_seconds"])
        for path in (*outs.values(), store, registry):
            rmtree(path)

    def run_tiny(self, r: int) -> None:
        """Store phase, then register, of the 100,000-tensor file and of the one-tensor file,
        each into a fresh store (and registry, warmed by a first untimed version of another
        model), the two back to back, which first alternating by repeat; each 100,000-tensor
        run is paired with the one-tensor run beside it."""
        for row, task in ((MK_STORE, "mk_store"), (MK_REGISTER, "mk_register")):
            got: dict[str, dict[str, Any]] = {}
            stored: dict[str, int] = {}
            objects: dict[str, int] = {}
            for col in (ONE, TINY) if r % 2 == 0 else (TINY, ONE):
                info = self.versions[col]
                store, registry = self.work / f"{col}-store", self.work / f"{col}.db"
                spec = {"task": task, "store": str(store), "registry": f"sqlite:///{registry}",
                        "src": str(info.path), "name": col, "warm": str(self.work / "warm")}
                got[col] = self.measure(spec, [info.path])
                stored[col] = _model.tree_size(store)
                objects[col] = sum(len(files) for _d, _s, files in os.walk(store)) - 1
                rmtree(store)
                rmtree(registry)
            self.record(row, ONE, got[ONE], stored[ONE])
            self.record(row, TINY, got[TINY], stored[TINY], baseline=got[ONE]["seconds"],
                        objects=objects[TINY])

    # -- large model -------------------------------------------------------------------------

    def run_large(self) -> None:
        mib = self.args.size_mib * 4
        log(f"large model: generating ~{mib} MiB of bf16 weight-like values for the memory "
            "measurement (the codecs at full work)")
        info = _model.write_weights(self.work / "large", "large", mib)
        self.versions["large"] = info
        if "modelkeep" in self.peers:
            store = self.work / "large-store"
            self.cp_sample("large")
            spec = {"task": "mk_store", "store": str(store), "src": str(info.path), "name": "large"}
            res = self.measure(spec, [info.path])
            self.record(MK_STORE, "large", res, _model.tree_size(store))
            rmtree(store)
            registry = self.work / "large.db"
            spec = {
                "task": "mk_register",
                "store": str(store),
                "registry": f"sqlite:///{registry}",
                "src": str(info.path),
                "name": "large",
            }
            self.cp_sample("large")
            res = self.measure(spec, [info.path])
            self.record(MK_REGISTER, "large", res, _model.tree_size(store))
            rmtree(store)
            rmtree(registry)
        rmtree(info.path.parent)

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        self.detect_tools()
        self.prepare_workdir()
        self.generate()
        with contextlib.ExitStack() as stack:
            if "s3" in self.peers:
                endpoint = stack.enter_context(self.moto_server())
                self.s3_options = {
                    "key": "testing",
                    "secret": "testing",
                    "client_kwargs": {"endpoint_url": endpoint},
                }
                self.measure(
                    {
                        "task": "s3_admin",
                        "action": "mkbucket",
                        "path": "bench",
                        "options": self.s3_options,
                    }
                )
            for r in range(self.args.repeat):
                log(f"repeat {r + 1}/{self.args.repeat}")
                peers = self.peers_for_repeat(r)
                for peer in peers:
                    peer.setup()
                # Version by version, each tool right after a `cp` of the same files; the order
                # of the tools rotates between repeats so that none always follows the same one.
                order = peers[r % len(peers) :] + peers[: r % len(peers)] if peers else []
                for v in VERSIONS:
                    for peer in order:
                        self.cp_sample(v)
                        peer.step(v)
                for peer in peers:
                    peer.finish()
                if WEIGHTS in self.versions:
                    self.run_weights(r)
                if TINY in self.versions:
                    self.run_tiny(r)
                if "s3" in self.peers:
                    self.run_s3(r)
        if self.args.rss_large:
            self.run_large()


class Peer:
    """A tool being measured: fresh state per repeat, then one version at a time, in order."""

    row = ""

    def __init__(self, bench: Bench, r: int) -> None:
        self.bench = bench
        self.r = r
        self.work = bench.work

    def setup(self) -> None:
        """Create the tool's empty store or repository (untimed)."""

    def step(self, v: str) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Extra measurements on the finished store, then delete it."""


class ModelkeepStore(Peer):
    row = MK_STORE

    def setup(self) -> None:
        self.store = self.work / f"mk-store-r{self.r}"
        self.v1_sid: str | None = None

    def step(self, v: str) -> None:
        src = self.bench.versions[v].path
        before = _model.tree_size(self.store)
        spec = {
            "task": "mk_store",
            "store": str(self.store),
            "src": str(src),
            "name": "bench",
            "parents": [self.v1_sid] if self.v1_sid else [],
        }
        res = self.bench.measure(spec, [src])
        self.v1_sid = self.v1_sid or res["snapshot"]
        self.bench.record(self.row, v, res, _model.tree_size(self.store) - before)

    def finish(self) -> None:
        rmtree(self.store)


class ModelkeepRegister(Peer):
    row = MK_REGISTER

    def setup(self) -> None:
        self.store = self.work / f"mk-reg-r{self.r}"
        self.db = self.work / f"mk-reg-r{self.r}.db"
        self.registry = f"sqlite:///{self.db}"

    def step(self, v: str) -> None:
        src = self.bench.versions[v].path
        before = _model.tree_size(self.store)
        spec = {
            "task": "mk_register",
            "store": str(self.store),
            "registry": self.registry,
            "src": str(src),
            "name": "bench",
            "parents": [] if v == "v1" else ["bench@1"],
            "message": v,
        }
        res = self.bench.measure(spec, [src])
        self.bench.record(self.row, v, res, _model.tree_size(self.store) - before)

    def finish(self) -> None:
        # Pull v1 back several times, each paired with a `cp -r` of the same folder run in the
        # same process (see _tasks.task_mk_pull_pair); which of the two runs first alternates.
        # A first pair, not recorded, leaves the outputs that the recorded ones replace.
        src = self.bench.versions["v1"].path
        outs = {"pull": self.work / f"pull-r{self.r}", "cp": self.work / "cp-pull"}
        for i in range(-1, PULLS_PER_REPEAT):
            order = ["cp", "pull"] if (i + self.r) % 2 == 0 else ["pull", "cp"]
            spec = {
                "task": "mk_pull_pair",
                "store": str(self.store),
                "registry": self.registry,
                "ref": "bench@1",
                "src": str(src),
                "outs": {k: str(v) for k, v in outs.items()},
                "order": order,
            }
            res = self.bench.measure(spec, [self.store, src])
            if i < 0:
                continue
            # Not cp's peak RSS: Linux counts what a child inherits from this large process as
            # the child's own (see _tasks.peak_rss_kib).
            self.bench.record(CP_PULL, "v1", dict(res, seconds=res["cp_seconds"], rss_mib=None))
            self.bench.record(MK_PULL, "v1", res, baseline=res["cp_seconds"])
        for path in outs.values():
            rmtree(path)
        for path in (self.store, self.db):
            rmtree(path)


class Dvc(Peer):
    row = DVC

    def setup(self) -> None:
        dvc, env = self.bench.dvc, self.bench.env
        assert dvc is not None
        self.repo = self.work / f"dvc-r{self.r}"
        self.remote = self.work / f"dvc-remote-r{self.r}"
        self.repo.mkdir()
        run(["git", "init", "-q"], self.repo, env)
        run([*dvc, "init", "-q"], self.repo, env)
        run([*dvc, "config", "core.analytics", "false"], self.repo, env)
        run([*dvc, "remote", "add", "-q", "-d", "local", str(self.remote)], self.repo, env)
        run(["git", "add", "-A"], self.repo, env)
        run(["git", "commit", "-q", "-m", "init"], self.repo, env)

    def _stored(self) -> int:
        return _model.tree_size(self.repo / ".dvc" / "cache") + _model.tree_size(self.remote)

    def step(self, v: str) -> None:
        dvc = self.bench.dvc
        assert dvc is not None
        replace_tree(self.bench.versions[v].path, self.repo / "model")
        before = self._stored()
        spec = {
            "task": "cmds",
            "cwd": str(self.repo),
            "cmds": [[*dvc, "add", "-q", "model"], [*dvc, "push", "-q"]],
        }
        res = self.bench.measure(spec, [self.repo / "model"])
        self.bench.record(self.row, v, res, self._stored() - before)
        run(["git", "add", "-A"], self.repo, self.bench.env)
        run(["git", "commit", "-q", "-m", v], self.repo, self.bench.env)

    def finish(self) -> None:
        rmtree(self.repo)
        rmtree(self.remote)


class Mlflow(Peer):
    row = MLFLOW

    def setup(self) -> None:
        self.root = self.work / f"mlflow-r{self.r}"
        self.root.mkdir()
        self.artifacts = self.root / "artifacts"

    def step(self, v: str) -> None:
        src = self.bench.versions[v].path
        before = _model.tree_size(self.artifacts)
        spec = {
            "task": "mlflow",
            "tracking": f"sqlite:///{self.root / 'mlflow.db'}",
            "artifacts": self.artifacts.as_uri(),
            "src": str(src),
            "name": "bench",
        }
        res = self.bench.measure(spec, [src])
        self.bench.record(self.row, v, res, _model.tree_size(self.artifacts) - before)

    def finish(self) -> None:
        rmtree(self.root)


class GitLfs(Peer):
    row = GITLFS

    def setup(self) -> None:
        env = self.bench.env
        self.repo = self.work / f"lfs-r{self.r}"
        self.repo.mkdir()
        run(["git", "init", "-q"], self.repo, env)
        run(["git", "lfs", "install", "--local"], self.repo, env)
        run(["git", "lfs", "track", "*.safetensors"], self.repo, env)
        run(["git", "add", ".gitattributes"], self.repo, env)
        run(["git", "commit", "-q", "-m", "init"], self.repo, env)
        self.objects = self.repo / ".git" / "lfs" / "objects"

    def step(self, v: str) -> None:
        replace_tree(self.bench.versions[v].path, self.repo / "model")
        before = _model.tree_size(self.objects)
        spec = {
            "task": "cmds",
            "cwd": str(self.repo),
            "cmds": [["git", "add", "-A"], ["git", "commit", "-q", "-m", v]],
        }
        res = self.bench.measure(spec, [self.repo / "model"])
        self.bench.record(self.row, v, res, _model.tree_size(self.objects) - before)

    def finish(self) -> None:
        rmtree(self.repo)


# -- report ------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(res: Results, versions: dict[str, _model.VersionInfo], repeat: int) -> str:
    """The tables, as Markdown. Times are compared best against best (see the note below)."""
    v1_size = versions["v1"].size
    out: list[str] = []

    def both(row: str, col: str) -> str:
        best, med = res.best(row, col), res.median(row, col)
        return "-" if best is None else f"{fmt_s(best)} / {fmt_s(med)}"

    # Targets.
    rows: list[list[str]] = []
    def paired_cell(row: str, col: str) -> str:
        pairs = ", ".join(f"{p:.2f}" for p in res.paired(row, col))
        cp = both(BASELINE.get(row, CP), col)
        return (f"**{fmt_x(res.paired_median(row, col))}** (pairs {pairs}; ratio of bests "
                f"{fmt_x(res.cp_ratio(row, col))}: {both(row, col)} vs `cp` {cp})")

    x = res.paired_median(MK_STORE, "v1")
    if x is not None:
        rows.append(
            [
                f"store a new {fmt_bytes(v1_size)} version (store phase) vs `cp`",
                paired_cell(MK_STORE, "v1"),
                f"<= {TARGET_STORE_X:g}x",
                verdict(x <= TARGET_STORE_X),
            ]
        )
    for v, limit in TARGET_BYTES.items():
        stored = res.median(MK_REGISTER, v, "stored") or res.median(MK_STORE, v, "stored")
        if stored is None:
            continue
        frac = stored / v1_size
        floor = versions[v].new_tensor_bytes / v1_size
        rows.append(
            [
                f"{VERSION_LABEL[v]}: new bytes stored / v1 size",
                f"{fmt_pct(frac)} ({fmt_bytes(stored)}; floor {fmt_pct(floor)})",
                f"<= {fmt_pct(limit)}",
                verdict(frac <= limit),
            ]
        )
    x = res.paired_median(MK_PULL, "v1")
    if x is not None:
        rows.append(
            [
                f"pull v1 ({fmt_bytes(v1_size)}) vs `cp -r` of its folder",
                paired_cell(MK_PULL, "v1"),
                f"<= {TARGET_PULL_X:g}x",
                verdict(x <= TARGET_PULL_X),
            ]
        )
    if WEIGHTS in versions:
        w_size = fmt_bytes(versions[WEIGHTS].size)
        x = res.paired_median(MK_STORE, WEIGHTS)
        if x is not None:
            stored = res.median(MK_STORE, WEIGHTS, "stored")
            rows.append(
                [
                    f"store a new bf16 weight-like {w_size} version (store phase, default "
                    f"codec; stored {fmt_pct(ratio(stored, versions[WEIGHTS].size))} of raw) "
                    "vs `cp`",
                    paired_cell(MK_STORE, WEIGHTS),
                    f"<= {TARGET_STORE_X:g}x",
                    verdict(x <= TARGET_STORE_X),
                ]
            )
        x = res.paired_median(MK_PULL, WEIGHTS)
        if x is not None:
            rows.append(
                [
                    f"pull the bf16 weight-like version ({w_size}, coded chunks) vs `cp -r`",
                    paired_cell(MK_PULL, WEIGHTS),
                    f"<= {TARGET_PULL_CODED_X:g}x",
                    verdict(x <= TARGET_PULL_CODED_X),
                ]
            )
    for row in (MK_STORE, MK_REGISTER):
        x = res.paired_median(row, TINY)
        stored = res.median(row, TINY, "stored")
        if x is None or stored is None or TINY not in versions:
            continue
        size = versions[TINY].size
        objects = max(s.objects or 0 for s in res.samples[(row, TINY)])
        pairs = ", ".join(f"{p:.2f}" for p in res.paired(row, TINY))
        rows.append(
            [
                f"{row}: a file of {versions[TINY].tensors:,} four-byte tensors "
                f"({fmt_bytes(size)}) vs a file of one tensor of the same size",
                f"**{fmt_x(x)}** (pairs {pairs}; {both(row, TINY)} vs {both(row, ONE)}); "
                f"stored {fmt_bytes(stored)} in {objects} objects",
                f"<= {TARGET_TINY_X:g}x, <= {fmt_bytes(size)}, < {TARGET_TINY_OBJECTS:,} objects",
                verdict(x <= TARGET_TINY_X and stored <= size and objects < TARGET_TINY_OBJECTS),
            ]
        )
    rss = res.peak_rss(MK_REGISTER, ["large"])
    if "large" in versions and rss is not None:
        store_rss = res.peak_rss(MK_STORE, ["large"]) or 0.0
        rows.append(
            [
                f"peak RSS, register of a {fmt_bytes(versions['large'].size)} bf16 "
                "weight-like model",
                f"{rss:.0f} MiB (store phase alone {store_rss:.0f} MiB)",
                f"<= {TARGET_RSS_MIB:g} MiB",
                verdict(rss <= TARGET_RSS_MIB),
            ]
        )
    x = res.paired_median(S3_MK_REGISTER, "v1")
    if x is not None:
        pairs = ", ".join(f"{p:.2f}" for p in res.paired(S3_MK_REGISTER, "v1"))
        bests = ratio(res.best(S3_MK_REGISTER, "v1"), res.best(S3_PUT, "v1"))
        rows.append(
            [
                "to S3: register v1 vs `s3fs put_file` of the same file",
                f"**{fmt_x(x)}** (pairs {pairs}; ratio of bests {fmt_x(bests)}: "
                f"{both(S3_MK_REGISTER, 'v1')} vs {both(S3_PUT, 'v1')})",
                f"<= {TARGET_S3_X:g}x",
                verdict(x <= TARGET_S3_X),
            ]
        )
    out.append("### Targets\n")
    out.append(
        table(
            ["target", "measured: median of paired ratios (each run over the `cp` of the same "
             "files beside it: just before, or for pulls in the same process; best / "
             f"median seconds of {repeat} repeats)", "limit", "result"],
            rows,
        )
    )

    # Time per version.
    rows = []
    for row in (CP, MK_STORE, MK_REGISTER, DVC, MLFLOW, GITLFS):
        if not any(res.has(row, v) for v in VERSIONS):
            continue
        cells = [row]
        for v in VERSIONS:
            x = res.cp_ratio(row, v)
            cells.append("-" if x is None else f"**{fmt_x(x)}** ({both(row, v)})")
        cells.append(fmt_s(res.median(row, "v1", "process")))
        peak = res.peak_rss(row)
        cells.append("-" if peak is None else f"{peak:.0f} MiB")
        rows.append(cells)
    out.append(
        "\n### Time to store each version, as a multiple of `cp` of the same files "
        "(best / median seconds)\n"
    )
    out.append(
        table(
            [
                "tool",
                *(VERSION_LABEL[v] for v in VERSIONS),
                "v1, whole process (median)",
                "peak RSS",
            ],
            rows,
        )
    )
    out.append(
        "\nA `cp` of the same files runs immediately before each tool's run, so `cp` has many "
        "samples. On this shared machine a 1 GiB copy takes 0.4 s or 4 s depending on the I/O of "
        "the seconds before, so this table compares best with best (the undisturbed speed of "
        "both), medians beside; the targets above are decided on the median of each run's ratio "
        "to the `cp` just before it. The tools' order "
        "rotates between repeats. The operation is timed inside a fresh process after imports "
        'and one-time setup (opening the registry, creating its schema); "whole process" adds '
        "interpreter start, imports and that setup. `dvc` and `git` are timed as the commands "
        "people run. Peak RSS is the process's own high-water mark (VmHWM; for `dvc`/`git`, the "
        "largest child process)."
    )

    # Bytes per version.
    rows = [
        [
            "floor: bytes of new or changed tensors",
            *(
                fmt_bytes(v1_size) if v == "v1" else fmt_pct(versions[v].new_tensor_bytes / v1_size)
                for v in VERSIONS
            ),
        ]
    ]
    for row in (CP, MK_STORE, MK_REGISTER, DVC, MLFLOW, GITLFS):
        if not any(res.has(row, v) for v in VERSIONS):
            continue
        cells = [row]
        for v in VERSIONS:
            stored = res.median(row, v, "stored")
            cells.append(
                fmt_bytes(stored)
                if v == "v1"
                else f"{fmt_pct(ratio(stored, v1_size))} ({fmt_bytes(stored)})"
            )
        rows.append(cells)
    out.append("\n### Bytes stored per version: growth of each tool's storage, as % of v1\n")
    out.append(table(["tool", *(VERSION_LABEL[v] for v in VERSIONS)], rows))
    out.append(
        "\n`cp`: the copy. modelkeep: the store folder (chunks, snapshot, descriptor). "
        "dvc: `.dvc/cache` plus the remote (DVC keeps both copies). MLflow: the artifact root. "
        "git-lfs: `.git/lfs/objects`."
    )

    # Pull, S3, large.
    rows = []
    if res.has(MK_PULL, "v1"):
        rows.append(
            [
                f"pull v1 ({fmt_bytes(v1_size)})",
                f"`cp -r`: {both(CP_PULL, 'v1')}",
                f"{MK_PULL}: {both(MK_PULL, 'v1')}",
                fmt_x(res.cp_ratio(MK_PULL, "v1")),
                f"{res.peak_rss(MK_PULL, ['v1']):.0f} MiB",
            ]
        )
    if res.has(MK_PULL, WEIGHTS):
        rows.append(
            [
                f"pull the bf16 weight-like model ({fmt_bytes(versions[WEIGHTS].size)})",
                f"`cp -r`: {both(CP_PULL, WEIGHTS)}",
                f"{MK_PULL}: {both(MK_PULL, WEIGHTS)}",
                fmt_x(res.cp_ratio(MK_PULL, WEIGHTS)),
                f"{res.peak_rss(MK_PULL, [WEIGHTS]):.0f} MiB",
            ]
        )
    if res.has(MK_STORE, WEIGHTS):
        rows.append(
            [
                f"store the bf16 weight-like model ({fmt_bytes(versions[WEIGHTS].size)})",
                f"`cp`: {both(CP, WEIGHTS)}",
                f"{MK_STORE}: {both(MK_STORE, WEIGHTS)} "
                f"(+{fmt_bytes(res.median(MK_STORE, WEIGHTS, 'stored'))})",
                fmt_x(res.cp_ratio(MK_STORE, WEIGHTS)),
                f"{res.peak_rss(MK_STORE, [WEIGHTS]):.0f} MiB",
            ]
        )
    for v in ("v1", "v2"):
        if not res.has(S3_MK_REGISTER, v) or not res.has(S3_PUT, "v1"):
            continue
        # put_file always uploads the whole file, so v2 costs what v1 did.
        stored = res.median(S3_MK_REGISTER, v, "stored")
        rows.append(
            [
                f"to S3: {VERSION_LABEL[v]}",
                f"{S3_PUT} of the whole file: {both(S3_PUT, 'v1')} "
                f"(RSS {res.peak_rss(S3_PUT, ['v1']):.0f} MiB)",
                f"{S3_MK_REGISTER}: {both(S3_MK_REGISTER, v)} (+{fmt_bytes(stored)})",
                fmt_x(ratio(res.best(S3_MK_REGISTER, v), res.best(S3_PUT, "v1"))),
                f"{res.peak_rss(S3_MK_REGISTER, [v]):.0f} MiB",
            ]
        )
    if "large" in versions:
        for row in (MK_STORE, MK_REGISTER):
            if res.has(row, "large"):
                rows.append(
                    [
                        f"large model ({fmt_bytes(versions['large'].size)}, once)",
                        f"`cp`: {both(CP, 'large')}",
                        f"{row}: {both(row, 'large')}",
                        fmt_x(res.cp_ratio(row, "large")),
                        f"{res.peak_rss(row, ['large']):.0f} MiB",
                    ]
                )
    if rows:
        out.append("\n### Pull, the bf16 weight-like model, S3 (local moto_server) and the large "
                   "model (best / median)\n")
        out.append(
            table(["case", "baseline", "modelkeep", "ratio of bests", "modelkeep peak RSS"], rows)
        )
    if res.skipped:
        out.append("\nSkipped: " + "; ".join(res.skipped) + ".")
    return "\n".join(out) + "\n"


def environment(bench: Bench) -> str:
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for dist in ("modelkeep", "mlflow", "dvc", "s3fs", "moto", "numpy", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    for argv in (["git", "--version"], ["git", "lfs", "version"], ["cp", "--version"]):
        with contextlib.suppress(OSError, BenchError):
            versions.append(run(argv).splitlines()[0].strip())
    python = (
        os.path.relpath(sys.executable, REPO)
        if sys.executable.startswith(str(REPO))
        else sys.executable
    )
    command = shlex.join([python, "bench/run.py", *sys.argv[1:]])
    fs = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(bench.work.parent)],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return "\n".join(
        [
            f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
            f"- Command: `{command}`",
            f"- Machine: {os.cpu_count()} CPUs ({cpu}), {mem / GIB:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}, work folder on {fs or 'local disk'}; "
            "a shared machine, so expect noise",
            f"- Python {platform.python_version()}; " + "; ".join(versions),
            f"- Model: {bench.versions['v1'].tensors} float16 tensors of random bits, "
            f"{fmt_bytes(bench.versions['v1'].size)} (v1); the same shapes in bf16 with "
            "weight-like values (normally distributed, spread of trained weights) for the codec "
            f"rows; {bench.args.repeat} repeats",
        ]
    )


def save_raw(path: Path, bench: Bench, env: str) -> None:
    """Every sample, so the tables can be rebuilt (``--report-from``) without re-running."""
    data = {
        "environment": env,
        "repeat": bench.args.repeat,
        "versions": {
            k: {**dataclasses.asdict(v), "path": str(v.path)} for k, v in bench.versions.items()
        },
        "samples": [
            {"row": row, "col": col, **dataclasses.asdict(s)}
            for (row, col), samples in bench.results.samples.items()
            for s in samples
        ],
        "skipped": bench.results.skipped,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def load_raw(path: Path) -> tuple[Results, dict[str, _model.VersionInfo], int, str]:
    data = json.loads(path.read_text())
    res = Results(skipped=list(data.get("skipped", [])))
    for s in data["samples"]:
        res.add(s["row"], s["col"], Sample(s["seconds"], s["process"], s["rss_mib"], s["stored"],
                                           s.get("cp_seconds"), s.get("objects")))
    versions = {
        k: _model.VersionInfo(**{**v, "path": Path(v["path"]), "files": tuple(v["files"])})
        for k, v in data["versions"].items()
    }
    return res, versions, int(data["repeat"]), str(data["environment"])


def write_results(env: str, body: str, path: Path) -> None:
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            "What is measured and how: see [README.md](README.md). Regenerate with `make bench`.",
            "",
            env,
            "",
            body,
        ]
    )
    # Hand-written analysis below the marker survives a re-run (it says which run it is about).
    with contextlib.suppress(OSError):
        previous = path.read_text()
        if KEEP_MARKER in previous:
            text = text.rstrip("\n") + "\n\n" + KEEP_MARKER + previous.split(KEEP_MARKER, 1)[1]
    path.write_text(text)
    log(f"wrote {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size-mib", type=int, default=1024, help="model size (default 1024)")
    p.add_argument("--repeat", type=int, default=3, help="repeats; medians quoted (default 3)")
    p.add_argument(
        "--peers",
        default=",".join(ALL_PEERS),
        help=f"comma-separated subset of {','.join(ALL_PEERS)}",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=HERE / "work",
        help="scratch folder (default bench/work; deleted at the end)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--rss-large",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also register a 4x larger model once for peak RSS (default: on)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=HERE / "RESULTS.md",
        help="where to write the tables (default bench/RESULTS.md; raw samples beside it, .json)",
    )
    p.add_argument("--no-results", action="store_true", help="print only, write no file")
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="JSON",
        help="rebuild the tables from the raw samples a run saved (RESULTS.json), run nothing",
    )
    args = p.parse_args(argv)
    peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(peers) - set(ALL_PEERS)
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))}")
    if "cp" not in peers:
        peers.insert(0, "cp")  # every ratio is to cp
    args.peers = peers
    if args.size_mib < 16 or args.repeat < 1:
        p.error("--size-mib must be >= 16 and --repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        res, versions, repeat, env = load_raw(args.report_from)
        body = report(res, versions, repeat)
        print(body)
        if not args.no_results:
            write_results(env, body, args.results)
        return 0
    bench = Bench(args)
    started = time.perf_counter()
    try:
        bench.run()
        body = report(bench.results, bench.versions, args.repeat)
        print(body)
        if not args.no_results:
            env = environment(bench)
            save_raw(args.results.with_suffix(".json"), bench, env)
            write_results(env, body, args.results)
    finally:
        if not args.keep and bench.work.exists() and (bench.work / MARKER).exists():
            shutil.rmtree(bench.work, ignore_errors=True)
    log(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
