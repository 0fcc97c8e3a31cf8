"""Start-up of the commonest commands, whole process, per code variant.

What a command costs before and after its own work (the interpreter, imports, the plugins, the
command line, opening the store and the registry) is most of a read command and a fixed part of
every register. This runs ``modelkeep --help``, ``register`` of a small folder (unchanged, and a
new version), ``list`` and ``show NAME@latest`` in a project on a local store and the SQLite
default, each as its own process, for each variant (a ``src`` folder, as in bench/ab.py),
interleaved round by round so the variants see the same machine::

    git archive HEAD src | tar -x -C /tmp/before     # the code before a change
    .venv/bin/python bench/startup.py --rounds 9 /tmp/before/src src

It prints per command and variant the median wall time and the median CPU time of the process
(user + system): on a shared machine the CPU time is the steadier. The first round (not counted)
warms the page cache and writes each variant's compiled modules, which the others reuse, as an
installed copy's are (``PYTHONDONTWRITEBYTECODE`` is dropped). Nothing is written outside
``--workdir``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "--help": ["--help"],
    "register (unchanged)": ["register", "m", "model"],
    "register (new)": ["register", "n", "new"],
    "list": ["list"],
    "show NAME@latest": ["show", "m@latest"],
}


def _env(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PYTHONDONTWRITEBYTECODE")}
    return {**env, "PYTHONPATH": str(src.resolve()), "MLFLOW_ENABLE_TELEMETRY": "false"}


def _run(args: list[str], project: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of ``modelkeep ARGS`` in *project*."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "modelkeep"), *args], cwd=project, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"modelkeep {' '.join(args)} failed: {proc.stderr[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _project(root: Path, env: dict[str, str]) -> Path:
    """A project holding model ``m`` (256 KiB of random bytes and a config) and model ``n``."""
    project = root / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "model").mkdir(parents=True)
    (project / "new").mkdir()
    (project / "modelkeep.toml").write_text('store = "./store"\nregistry = "sqlite:///mlflow.db"\n')
    (project / "model" / "weights.bin").write_bytes(os.urandom(256 << 10))
    (project / "model" / "config.json").write_text('{"step": 1}')
    (project / "new" / "config.json").write_text('{"step": 2}')
    for args in (["register", "m", "model"], ["register", "n", "new"]):
        _run(args, project, env)
    return project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=Path, help="src folders to compare")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mk-bench-startup"))
    args = parser.parse_args(argv)

    envs = {src: _env(src) for src in args.variants}
    project = _project(args.workdir, envs[args.variants[0]])
    samples: dict[tuple[str, Path], list[tuple[float, float]]] = {}
    for r in range(args.rounds + 1):
        order = args.variants if r % 2 else args.variants[::-1]
        for label, command in COMMANDS.items():
            for src in order:
                if label == "register (new)":  # new content each time: a new version
                    (project / "new" / "weights.bin").write_bytes(os.urandom(64 << 10))
                got = _run(command, project, envs[src])
                if r:
                    samples.setdefault((label, src), []).append(got)
    print(f"{args.rounds} rounds, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"| command | {' | '.join(str(v) for v in args.variants)} |")
    print(f"|---|{'---|' * len(args.variants)}")
    for label in COMMANDS:
        cells = []
        for src in args.variants:
            got = samples[(label, src)]
            cells.append(f"{statistics.median(w for w, _ in got):.3f} s "
                         f"({statistics.median(c for _, c in got):.3f} s)")
        print(f"| `modelkeep {label}` | {' | '.join(cells)} |")
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
