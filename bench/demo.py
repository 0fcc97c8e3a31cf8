"""`make demo` from a fresh clone: wall time and the size of the virtualenv it builds.

Two revisions side by side in one run (by default the one before the demo got its own light
environment, and this checkout's HEAD), each cloned into a temporary folder and set up from
nothing with `make demo`, in alternating order. pip's download cache is shared by both, as on any
machine that has installed Python packages before; the first run on a new machine also downloads.

Writes its section into bench/RESULTS.md below the analysis marker (the tables `bench/run.py`
regenerates stay as they are). Run: `.venv/bin/python bench/demo.py [--before REV] [--runs N]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
KEEP_MARKER = "<!-- analysis: kept when the tables above are regenerated -->"
START, END = "<!-- make-demo:start -->", "<!-- make-demo:end -->"
# The last revision whose `make demo` built the whole test environment.
DEFAULT_BEFORE = "b7319f5"


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def dir_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def fresh_demo(rev: str, workdir: Path) -> tuple[float, int]:
    """Clone REV, run `make demo` in it; (seconds, venv bytes)."""
    clone = workdir / f"clone-{rev}"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    t0 = time.perf_counter()
    done = subprocess.run(["make", "demo", "PY=python3"], cwd=clone, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"make demo failed at {rev}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    size = dir_bytes(clone / ".venv")
    shutil.rmtree(clone)
    return seconds, size


def section(before: str, after: str, runs: dict[str, list[tuple[float, int]]]) -> str:
    b_t = statistics.median(s for s, _ in runs[before])
    a_t = statistics.median(s for s, _ in runs[after])
    b_size = max(v for _, v in runs[before])
    a_size = max(v for _, v in runs[after])
    load = os.getloadavg()[0]
    lines = [
        START,
        "## `make demo` from a fresh clone",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: "
        f"`.venv/bin/python bench/demo.py --before {before} --runs {len(runs[after])}`; "
        f"load average at the end {load:.1f} (2 cores)",
        "- Each run clones the revision into a new folder and runs `make demo` there (venv, "
        "install, demo); pip's download cache is shared, so neither pays downloads.",
        "",
        "| revision | what `make demo` installs | wall time (median; runs) | venv size |",
        "|---|---|---|---|",
        f"| {before} | torch, the test and framework extras | {b_t:.0f} s "
        f"({', '.join(f'{s:.0f}' for s, _ in runs[before])}) | {b_size / 2**20:.0f} MiB |",
        f"| {after} | modelkeep and MLflow's client (`[mlflow-client]`) | {a_t:.0f} s "
        f"({', '.join(f'{s:.0f}' for s, _ in runs[after])}) | {a_size / 2**20:.0f} MiB |",
        "",
        f"Ratio of medians: **{a_t / b_t:.2f}x** the time (target <= 0.5x), venv "
        f"**{a_size / 2**20:.0f} MiB** (target < 800 MB).",
        END,
    ]
    return "\n".join(lines) + "\n"


def write(text: str) -> None:
    current = RESULTS.read_text()
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + text.rstrip("\n") + rest.split(END, 1)[1]
    elif KEEP_MARKER in current:
        head, tail = current.split(KEEP_MARKER, 1)
        current = head + KEEP_MARKER + "\n\n" + text + tail
    else:
        current = current.rstrip("\n") + "\n\n" + KEEP_MARKER + "\n\n" + text
    RESULTS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the revision to compare with")
    parser.add_argument("--after", default="HEAD", help="default: this checkout's HEAD")
    parser.add_argument("--runs", type=int, default=1, help="fresh set-ups of each revision")
    args = parser.parse_args()
    before = git("rev-parse", "--short", args.before)
    after = git("rev-parse", "--short", args.after)
    runs: dict[str, list[tuple[float, int]]] = {before: [], after: []}
    with tempfile.TemporaryDirectory(prefix="modelkeep-demo-bench-") as tmp:
        for i in range(args.runs):
            order = (after, before) if i % 2 == 0 else (before, after)
            for rev in order:
                seconds, size = fresh_demo(rev, Path(tmp))
                runs[rev].append((seconds, size))
                print(f"{rev}: {seconds:.1f} s, venv {size / 2**20:.0f} MiB", flush=True)
    text = section(before, after, runs)
    print(text)
    write(text)


if __name__ == "__main__":
    main()
