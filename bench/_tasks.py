"""One measured operation per process: the child side of ``bench/run.py``.

``python bench/_tasks.py '<json>'`` runs the task the JSON names and prints one line
``BENCH-RESULT {...}`` with the operation's wall time (measured around the operation only, after
imports and one-time setup), whatever the task reports (bytes added, ids) and the peak resident
set size of this process and of every process it waited for. A fresh process per measurement
makes the peak RSS that of one operation, not of the whole benchmark.

Only the standard library is imported at module level, so a task that shells out to ``cp``,
``dvc`` or ``git`` measures them and not us.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

RESULT_MARK = "BENCH-RESULT "
Task = Callable[[dict[str, Any]], dict[str, Any]]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def task_cmds(spec: dict[str, Any]) -> dict[str, Any]:
    """Run shell-free commands one after another in ``cwd``; time them together."""
    each: list[float] = []

    def run_all() -> None:
        for argv in spec["cmds"]:
            start = time.perf_counter()
            proc = subprocess.run(argv, cwd=spec.get("cwd"), capture_output=True, text=True)
            each.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
                )

    seconds, _ = _timed(run_all)
    return {"seconds": seconds, "each": each}


def _store_bytes(store: Any) -> int:
    from modelkeep.store import Kind

    return int(store.stored_bytes(Kind.CHUNK) + store.stored_bytes(Kind.SNAPSHOT))


def _import_codecs() -> None:
    """Import the chunk codecs (numpy, zstandard) before the timing, like every other import:
    the store imports them on the first chunk it codes or decodes."""
    import modelkeep.store.coding  # noqa: F401


def task_mk_store(spec: dict[str, Any]) -> dict[str, Any]:
    """modelkeep's store phase: ingest the folder's chunks, then write the snapshot object."""
    from modelkeep.store import Parent, Snapshot, Store, scan_local, utc_now

    store = Store.open(spec["store"], spec.get("options") or None)
    store.ensure_initialized()
    _import_codecs()
    before = _store_bytes(store) if spec.get("count") else 0

    def op() -> tuple[str, Any]:
        files, stats = store.ingest(scan_local(spec["src"]))
        snap = Snapshot(
            name=spec["name"],
            files=files,
            created=utc_now(),
            parents=tuple(Parent(sid) for sid in spec.get("parents", [])),
        )
        return store.save_snapshot(snap), stats

    seconds, (sid, stats) = _timed(op)
    out = {
        "seconds": seconds,
        "snapshot": sid,
        "bytes_added": stats.bytes_added,
        "bytes_total": stats.bytes_total,
    }
    if spec.get("count"):
        out["stored_delta"] = _store_bytes(store) - before
    return out


def task_mk_register(spec: dict[str, Any]) -> dict[str, Any]:
    """modelkeep's full register: store phase plus the MLflow Model Registry entry."""
    import modelkeep

    keep = modelkeep.open(
        store=spec["store"], registry=spec["registry"], store_options=spec.get("options") or None
    )
    # Opens the registry. A read never creates one: a new SQLite file is made by the first
    # register, from the schema script shipped for the installed MLflow (milliseconds; with
    # MLflow's own set-up, on a revision without a script, 2-3 s), inside the measurement, as
    # a person's first register pays it.
    keep.models()
    keep.store.ensure_initialized()
    _import_codecs()
    if spec.get("warm"):
        # A first version of another model, untimed: the registry client's first write
        # (MLflow's import and tables, some 10 s here) is then not part of the measurement.
        folder = os.path.join(spec["warm"], "warm")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "README"), "w") as f:
            f.write("warm\n")
        keep.register("warm", folder)
    before = _store_bytes(keep.store) if spec.get("count") else 0
    seconds, v = _timed(
        lambda: keep.register(
            spec["name"], spec["src"], parents=spec.get("parents", []), message=spec.get("message")
        )
    )
    out = {
        "seconds": seconds,
        "version": v.version,
        "bytes_added": v.bytes_added,
        "snapshot": v.snapshot_id,
    }
    if spec.get("count"):
        out["stored_delta"] = _store_bytes(keep.store) - before
    return out


def rmtree(path: str | os.PathLike[str]) -> None:
    """Remove the folder or file at *path*, if there is one."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _same_tree(a: str, b: str) -> bool:
    names = sorted(os.listdir(a))
    return names == sorted(os.listdir(b)) and all(
        filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names
    )


def task_mk_pull_pair(spec: dict[str, Any]) -> dict[str, Any]:
    """``modelkeep pull`` and ``cp -r`` of the same folder, back to back in this one process.

    Both run after this process's start and imports, and each right after the removal of its
    own previous output (``outs``, left by the pair before), so that each finds memory as a
    loop of that same tool leaves it: on a virtual machine that hands freed memory back to its
    host, a 1 GiB write takes 0.3 s or 3 s depending on what was freed in the seconds before
    it. ``order`` says which runs first. The pulled folder is compared with the source, untimed.
    """
    import modelkeep

    keep = modelkeep.open(
        store=spec["store"], registry=spec["registry"], store_options=spec.get("options") or None
    )
    keep.get(spec["ref"])  # resolves the registry once, outside the measurement
    _import_codecs()
    outs: dict[str, str] = spec["outs"]
    ops: dict[str, Callable[[], Any]] = {
        "pull": lambda: keep.pull(spec["ref"], outs["pull"]),
        "cp": lambda: subprocess.run(["cp", "-r", spec["src"], outs["cp"]], check=True),
    }
    seconds: dict[str, float] = {}
    for op in spec["order"]:
        rmtree(outs[op])
        seconds[op], _ = _timed(ops[op])
    if not _same_tree(spec["src"], outs["pull"]):
        raise RuntimeError("modelkeep pull returned different bytes")
    return {"seconds": seconds["pull"], "cp_seconds": seconds["cp"]}


def task_mlflow(spec: dict[str, Any]) -> dict[str, Any]:
    """MLflow as people use it for model files: log_artifacts in a run, then register_model.

    A folder of weights has no MLmodel file, so the version's source is the run's artifact URI
    (MLflow 3 resolves ``runs:/`` sources only for logged models)."""
    import logging

    import mlflow
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uri = spec["tracking"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("bench")
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment("bench", artifact_location=spec["artifacts"])
    )
    client.search_registered_models(max_results=1)  # schema ready before timing

    def op() -> int:
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_artifacts(spec["src"], "model")
        mv = mlflow.register_model(f"{run.info.artifact_uri}/model", spec["name"])
        return int(mv.version)

    seconds, version = _timed(op)
    return {"seconds": seconds, "version": version}


def _s3fs(spec: dict[str, Any]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **spec["options"])


def task_s3_put(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline for object stores: ``s3fs.S3FileSystem.put_file`` of each file."""
    fs = _s3fs(spec)
    names = sorted(os.listdir(spec["src"]))

    def op() -> None:
        for name in names:
            fs.put_file(os.path.join(spec["src"], name), f"{spec['dest']}/{name}")

    seconds, _ = _timed(op)
    return {"seconds": seconds}


def task_s3_admin(spec: dict[str, Any]) -> dict[str, Any]:
    """Create the bucket, or delete a prefix (frees the emulator's memory between repeats)."""
    fs = _s3fs(spec)
    if spec["action"] == "mkbucket":
        fs.mkdir(spec["path"])
    elif fs.exists(spec["path"]):
        fs.rm(spec["path"], recursive=True)
    return {"seconds": 0.0}


TASKS: dict[str, Task] = {
    "cmds": task_cmds,
    "mk_store": task_mk_store,
    "mk_register": task_mk_register,
    "mk_pull_pair": task_mk_pull_pair,
    "mlflow": task_mlflow,
    "s3_put": task_s3_put,
    "s3_admin": task_s3_admin,
}


def peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM) in KiB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's peak across fork and
    exec into it, so a child of a large process would report the parent's memory as its own.
    """
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    result = TASKS[spec["task"]](spec)
    result["rss_self_kib"] = peak_rss_kib()
    # The largest of the waited-for processes (cp, dvc, git), in KiB. They are started from this
    # small process, so what they inherit from it is a few MiB at most.
    result["rss_children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
