"""A/B loop for speed: `cp`, store phase, pull, register and `list` of one model, per code variant.

``make bench`` answers "does modelkeep meet its targets against its peers"; this answers "is
this change to ``store/`` faster than the code before it", which on a shared two-core machine
needs the variants interleaved in one loop, each run paired with a ``cp`` of the same file taken
just before it. Each variant is a ``src`` folder (a copy of ``src/`` with the change applied); each
measurement runs in a fresh process with that folder first on ``sys.path``::

    cp -r src /tmp/before-src            # then edit src/ (or the copy)
    .venv/bin/python bench/ab.py --model-mib 1024 --rounds 5 /tmp/before-src src

``--ops`` picks what is measured: ``store`` and ``pull`` (the store alone, as above);
``register`` (a new version through ``modelkeep.open(...).register`` into a fresh store and
SQLite registry, after imports and the registry's creation), ``unchanged`` (registering the same
folder again), ``keep-pull`` (``Keep.pull`` of that version) and ``list`` (the whole
``modelkeep list`` process, CPU of the child): the code above the store, for changes there.

``tiny`` measures the store phase and the register of a file of 100,000 four-byte tensors
against a file of one tensor of the same size (``_model.write_tiny`` and ``write_one_tensor``,
the files of ``make bench``'s "many tiny tensors" rows), each into a fresh store, the two back to
back, which first alternating by round; it reports the medians of both and the median of the
paired ratios (100,000 tensors over one tensor), of wall and of CPU seconds. It needs no
``--model-mib`` model and no ``cp``::

    .venv/bin/python bench/ab.py --ops tiny --rounds 7 /tmp/before-src src

``--weights`` uses the bf16 model of weight-like values instead of random float16 bits, so that
the default codec does its full work (byte planes on every chunk).

It prints every sample, then per variant and operation the median seconds, the median of the
paired ratios to ``cp`` and the median CPU seconds (user + system, all threads): on a loaded
machine the wall time follows the load, the CPU time much less. Nothing is written outside
``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _model

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, resource, sys, time
from modelkeep.store import Snapshot, Store, scan_local, utc_now

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

spec = json.loads(sys.argv[1])
if spec["op"] in ("register", "unchanged", "keep-pull"):
    import modelkeep
    keep = modelkeep.open(store=spec["store"], registry=spec["registry"])
    import modelkeep.store.coding
    if spec["op"] == "register":
        keep.register("warm", spec["warm"])  # the registry's one-time creation, not timed
    start, cpu0 = time.perf_counter(), cpu()
    if spec["op"] == "keep-pull":
        keep.pull("ab@1", spec["dest"])
        sid = ""
    else:
        sid = keep.register("ab", spec["src"]).snapshot_id
    print("AB-RESULT", json.dumps({"seconds": time.perf_counter() - start,
                                   "cpu": cpu() - cpu0, "sid": sid}))
    raise SystemExit(0)
store = Store.open(spec["store"])
if spec["op"] == "store":
    store.ensure_initialized()
    import modelkeep.store.coding  # imports before the timing, as bench/_tasks.py does
    start, cpu0 = time.perf_counter(), cpu()
    files, _stats = store.ingest(scan_local(spec["src"]))
    sid = store.save_snapshot(Snapshot(name="ab", files=files, created=utc_now()))
else:
    snap = store.load_snapshot(spec["sid"])
    import modelkeep.store.coding
    start, cpu0 = time.perf_counter(), cpu()
    store.materialize(snap, spec["dest"])
    sid = spec["sid"]
print("AB-RESULT", json.dumps({"seconds": time.perf_counter() - start, "cpu": cpu() - cpu0,
                               "sid": sid}))
"""


def _cli(variant: Path, args: list[str], cache: Path) -> dict[str, float | str]:
    """A whole ``modelkeep`` process: wall seconds and its CPU seconds."""
    env = dict(os.environ, PYTHONPATH=str(variant), MODELKEEP_CACHE_DIR=str(cache))
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "modelkeep", *args], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = os.times()
    if proc.returncode:
        raise SystemExit(f"{variant}: modelkeep {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system)
    return {"seconds": seconds, "cpu": cpu, "sid": ""}


def _child(variant: Path, spec: dict[str, str], cache: Path) -> dict[str, float | str]:
    env = dict(os.environ, PYTHONPATH=str(variant), MODELKEEP_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AB-RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{variant}: {spec['op']} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float | str] = json.loads(lines[-1][len("AB-RESULT "):])
    return result


def _tiny_round(variant: Path, r: int, work: Path, files: dict[str, Path], warm: Path,
                samples: dict[tuple[str, str], list[tuple[float, float]]],
                cpus: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
    """One round of ``tiny``: the store phase, then the register, of the one-tensor file and
    the 100,000-tensor file, each into a fresh store, the order alternating by round. The
    one-tensor run is the 100,000-tensor run's baseline (rows ``one-*`` have none)."""
    key = str(variant)
    for phase in ("store", "register"):
        got: dict[str, dict[str, float | str]] = {}
        for col in ("one", "tiny") if r % 2 == 0 else ("tiny", "one"):
            store = work / f"store-{col}"
            shutil.rmtree(store, ignore_errors=True)
            Path(f"{store}.db").unlink(missing_ok=True)
            os.sync()
            spec = {"op": phase, "store": str(store), "registry": f"sqlite:///{store}.db",
                    "src": str(files[col]), "warm": str(warm)}
            got[col] = _child(variant, spec, work / "cache")
            print(f"round {r} {phase}-{col:4} {key}: {float(got[col]['seconds']):.3f} s, "
                  f"{float(got[col]['cpu']):.3f} CPU-s", flush=True)
        one, tiny = got["one"], got["tiny"]
        samples.setdefault((key, f"{phase}-one"), []).append((float(one["seconds"]), 0.0))
        cpus.setdefault((key, f"{phase}-one"), []).append((float(one["cpu"]), 0.0))
        samples.setdefault((key, f"{phase}-tiny"), []).append(
            (float(tiny["seconds"]), float(one["seconds"])))
        cpus.setdefault((key, f"{phase}-tiny"), []).append(
            (float(tiny["cpu"]), float(one["cpu"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("variants", nargs="+", type=Path, help="src folders to compare")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", default="store,pull",
                        help="comma-separated: store, pull, register, unchanged, keep-pull, "
                             "list, tiny")
    parser.add_argument("--model-mib", type=int, default=1024)
    parser.add_argument("--weights", action="store_true",
                        help="a bf16 model of weight-like values (the codecs at full work) "
                             "instead of float16 random bits")
    parser.add_argument("--workdir", type=Path, default=HERE / "work-ab")
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = work / ("weights" if args.weights else "model")
    if not model.exists() and any(op != "tiny" for op in ops):
        write = _model.write_weights if args.weights else _model.write_single
        write(work, model.name, args.model_mib)
    warm = work / "warm"
    warm.mkdir(exist_ok=True)
    (warm / "config.json").write_text('{"warm": true}\n')
    files: dict[str, Path] = {}
    if "tiny" in ops:
        for col in ("tiny", "one"):
            files[col] = work / f"tensors-{col}"
        if not (files["tiny"] / "model.safetensors").exists():
            size = _model.write_tiny(work, files["tiny"].name).size
            _model.write_one_tensor(work, files["one"].name, size)
    # Per (variant, operation): (seconds, baseline seconds), the baseline a `cp` of the model
    # or, for the 100,000-tensor file, the one-tensor file's run beside it (0: none).
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    cpus: dict[tuple[str, str], list[tuple[float, float]]] = {}
    sids: dict[str, str] = {}
    for r in range(args.rounds):
        shift = r % len(args.variants)  # rotate, so no variant always runs first
        for variant in args.variants[shift:] + args.variants[:shift]:
            key = str(variant)
            store = work / f"store-{args.variants.index(variant)}"
            for op in ops:
                if op == "tiny":
                    _tiny_round(variant, r, work, files, warm, samples, cpus)
                    continue
                cp = _model.cp_seconds(model, work / "cp-out")
                os.sync()
                registry = f"sqlite:///{store}.db"
                if op == "store":
                    shutil.rmtree(store, ignore_errors=True)
                    spec = {"op": "store", "store": str(store), "src": str(model)}
                elif op == "register":
                    shutil.rmtree(store, ignore_errors=True)
                    Path(f"{store}.db").unlink(missing_ok=True)
                    spec = {"op": op, "store": str(store), "registry": registry,
                            "src": str(model), "warm": str(warm)}
                elif op in ("unchanged", "keep-pull", "list"):
                    if not Path(f"{store}.db").exists():
                        raise SystemExit(f"{op} needs a version: put 'register' before it")
                    dest = work / "pull-out"
                    shutil.rmtree(dest, ignore_errors=True)
                    spec = {"op": op, "store": str(store), "registry": registry,
                            "src": str(model), "dest": str(dest)}
                else:
                    if key not in sids:
                        raise SystemExit("pull needs a store: put 'store' before 'pull' in --ops")
                    dest = work / "pull-out"
                    shutil.rmtree(dest, ignore_errors=True)
                    spec = {"op": "pull", "store": str(store), "sid": sids[key],
                            "dest": str(dest)}
                if op == "list":
                    res = _cli(variant, ["--store", str(store), "--registry", registry, "list"],
                               work / "cache")
                else:
                    res = _child(variant, spec, work / "cache")
                if op == "store":
                    sids[key] = str(res["sid"])
                seconds = float(res["seconds"])
                samples.setdefault((key, op), []).append((seconds, cp))
                cpus.setdefault((key, op), []).append((float(res["cpu"]), 0.0))
                print(f"round {r} {op:5} {key}: {seconds:.2f} s, {float(res['cpu']):.2f} "
                      f"CPU-s (cp {cp:.2f} s)", flush=True)
    print()
    for (key, op), pairs in samples.items():
        med = statistics.median(s for s, _ in pairs)
        cpu_med = statistics.median(c for c, _ in cpus[key, op])
        if op.endswith("-one"):
            print(f"{op:13} {key}: median {med:.3f} s, {cpu_med:.3f} CPU-s")
        elif op.endswith("-tiny"):
            ratio = statistics.median(s / b for s, b in pairs)
            cpu_ratio = statistics.median(c / b for c, b in cpus[key, op])
            print(f"{op:13} {key}: median {med:.3f} s, {cpu_med:.3f} CPU-s; paired median "
                  f"{ratio:.2f}x one tensor (pairs {', '.join(f'{s / b:.2f}' for s, b in pairs)})"
                  f", CPU {cpu_ratio:.2f}x")
        else:
            ratio = statistics.median(s / c for s, c in pairs)
            print(f"{op:5} {key}: median {med:.2f} s, paired median {ratio:.2f}x cp "
                  f"(pairs {', '.join(f'{s / c:.2f}' for s, c in pairs)}); median "
                  f"{cpu_med:.2f} CPU-s (user + system)")
    shutil.rmtree(work / "pull-out", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
