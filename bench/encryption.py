"""What encryption costs: a new 1 GiB version (and its pull) on an encrypted and a plain local
store, side by side in one run.

    .venv/bin/python bench/encryption.py --rounds 5            # make bench-encryption

Both stores get the same generated float16 safetensors model (``bench/_model.py``). Each round
stores it into a fresh plain store and a fresh encrypted store (the order alternates between
rounds), then pulls it back from each; every measurement runs in a fresh process, after ``sync``,
with the source in the page cache. The encrypted/plain ratio is taken per round (the two runs
next to each other saw the same state of a shared machine) and its median is the figure quoted
against the target (under 1.3x for storing a new version). The CPU time of each run (all threads,
user and system) is printed beside it: it moves far less with other work on the machine than the
wall time does. A ``cp`` of the model per round is printed for scale, and the load average
before, after and between rounds, since other work on the machine moves every figure. Nothing is
written outside ``--workdir`` (deleted at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import _model

HERE = Path(__file__).resolve().parent
TARGET = 1.3

_CHILD = r"""
import json, sys, time
from modelkeep.store import Snapshot, Store, scan_local, utc_now

spec = json.loads(sys.argv[1])
options = {"key_file": spec["key_file"]} if spec.get("key_file") else {}
store = Store.open(spec["store"], options)
if spec["op"] == "store":
    store.ensure_initialized()
    store.db.cipher  # the key object is read before the clock starts, as a long-lived process has
    start, cpu = time.perf_counter(), time.process_time()
    files, _stats = store.ingest(scan_local(spec["src"]))
    sid = store.save_snapshot(Snapshot(name="bench", files=files, created=utc_now()))
else:
    snap = store.load_snapshot(spec["sid"])
    start, cpu = time.perf_counter(), time.process_time()
    store.materialize(snap, spec["dest"])
    sid = spec["sid"]
print("BENCH-RESULT", json.dumps({"seconds": time.perf_counter() - start,
                                  "cpu": time.process_time() - cpu, "sid": sid}))
"""


def _child(spec: dict[str, str], cache: Path) -> dict[str, float | str]:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"), MODELKEEP_CACHE_DIR=str(cache))
    env.pop("MODELKEEP_KEY", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{spec['op']} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float | str] = json.loads(lines[-1][len("BENCH-RESULT "):])
    return result


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _warm(model: Path) -> None:
    for path in model.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(16 << 20):
                    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=HERE / "work-encryption")
    parser.add_argument("--keep", action="store_true", help="keep --workdir afterwards")
    args = parser.parse_args(argv)
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not model.exists():
        _model.write_single(work, "model", args.model_mib)
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    key_file = work / "bench.key"
    if not key_file.exists():
        key_file.write_text(os.urandom(32).hex() + "\n")
    variants = {"plain": "", "encrypted": str(key_file)}
    print(f"model: {size / 2**30:.2f} GiB, {args.rounds} rounds; load average {_load()} "
          f"(1, 5, 15 min) on {os.cpu_count()} cores", flush=True)
    samples: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    cps: list[float] = []
    try:
        for r in range(args.rounds):
            _warm(model)
            cps.append(_model.cp_seconds(model, work / "cp-out"))
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            sids: dict[str, str] = {}
            for op in ("store", "pull"):
                for name in order:
                    store = work / f"store-{name}"
                    if op == "store":
                        shutil.rmtree(store, ignore_errors=True)
                        _warm(model)
                        spec = {"op": "store", "store": str(store), "src": str(model),
                                "key_file": variants[name]}
                    else:
                        dest = work / "pull-out"
                        shutil.rmtree(dest, ignore_errors=True)
                        spec = {"op": "pull", "store": str(store), "sid": sids[name],
                                "dest": str(dest), "key_file": variants[name]}
                    os.sync()
                    res = _child(spec, work / "cache")
                    if op == "store":
                        sids[name] = str(res["sid"])
                    seconds = float(res["seconds"])
                    samples.setdefault((name, op), []).append(seconds)
                    cpu.setdefault((name, op), []).append(float(res["cpu"]))
                    print(f"round {r} {op:5} {name:9}: {seconds:6.2f} s "
                          f"({size / seconds / 2**30:.2f} GiB/s), CPU {res['cpu']:.2f} s",
                          flush=True)
            print(f"round {r} cp             : {cps[-1]:6.2f} s; load average {_load()}",
                  flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"cp of the model: median {statistics.median(cps):.2f} s")
    failed = False
    for op in ("store", "pull"):
        plain, enc = samples[("plain", op)], samples[("encrypted", op)]
        ratios = [e / p for e, p in zip(enc, plain, strict=True)]
        ratio = statistics.median(ratios)
        verdict = ""
        if op == "store":
            verdict = f"  target < {TARGET}x: {'PASS' if ratio < TARGET else 'FAIL'}"
            failed = ratio >= TARGET
        print(f"{op:5}: plain median {statistics.median(plain):.2f} s, encrypted median "
              f"{statistics.median(enc):.2f} s, paired median ratio {ratio:.2f}x "
              f"(pairs {', '.join(f'{x:.2f}' for x in ratios)}){verdict}")
        pc, ec = cpu[("plain", op)], cpu[("encrypted", op)]
        print(f"{'':5}  CPU (user + system, all threads): plain median {statistics.median(pc):.2f}"
              f" s, encrypted median {statistics.median(ec):.2f} s, paired median ratio "
              f"{statistics.median(e / p for e, p in zip(ec, pc, strict=True)):.2f}x")
    print(f"load average at the end: {_load()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
