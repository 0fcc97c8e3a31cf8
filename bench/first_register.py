"""Whole-process time of the first ``modelkeep register`` into a SQLite registry that does not
exist yet: what a new project waits for, the registry file's creation included.

Each sample is a fresh interpreter registering a small folder (a 1 MiB file and a config) into a
new store and a new ``sqlite:///`` file, as a person types it. With several ``--src`` trees (for
instance the source before and after a change) the trees take turns sample by sample, so they
see the same machine. Prints, per tree, the median and the spread of the wall time and of the CPU
time (user + system of the process), and the load average before and after. Usage::

    .venv/bin/python bench/first_register.py [--repeat 7] [--src LABEL=DIR ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PYTHONPATH"] = str(src)
    env["MLFLOW_ENABLE_TELEMETRY"] = "false"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _folder(where: Path) -> Path:
    folder = where / "model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(os.urandom(1 << 20))
    (folder / "config.json").write_text('{"hidden": 64}\n')
    return folder


def _sample(src: Path, work: Path, folder: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one first register into a new registry under *work*."""
    cmd = [sys.executable, "-m", "modelkeep", "--store", str(work / "store"),
           "--registry", f"sqlite:///{work / 'reg' / 'mlflow.db'}", "register", "demo",
           str(folder)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=work, env=_env(src), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--src", action="append", default=[], metavar="LABEL=DIR",
                        help="a source tree to run (default: this checkout's src)")
    args = parser.parse_args(argv)
    trees = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.src] or [
        ("src", ROOT / "src")]
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in trees}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp))
        for round_ in range(args.repeat + 1):  # round 0 warms the page cache, not counted
            order = trees[round_ % len(trees):] + trees[:round_ % len(trees)]
            for label, src in order:
                work = Path(tmp) / f"{label}-{round_}"
                work.mkdir()
                wall, cpu = _sample(src, work, folder)
                if round_:
                    samples[label].append((wall, cpu))
    load_after = os.getloadavg()
    print(f"first `modelkeep register` of a 1 MiB folder into a new SQLite registry, "
          f"median of {args.repeat} (min-max); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print("| source | wall | CPU (user + system) |")
    print("|---|---|---|")
    for label, _ in trees:
        walls = [w for w, _ in samples[label]]
        cpus = [c for _, c in samples[label]]
        print(f"| {label} | {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f})"
              f" | {statistics.median(cpus):.2f} s ({min(cpus):.2f}-{max(cpus):.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
