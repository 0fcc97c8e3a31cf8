"""Reading by reference: first and second ``fetch`` of a 1 GiB version, ``pull --link``,
``pull``, beside ``cp -r`` and ``cp -al`` (hard links) of the same folder.

    PYTHONPATH=src .venv/bin/python bench/fetch.py --size-mib 1024 --rounds 3

``huggingface_hub``'s cache cannot be filled offline from a local folder (``snapshot_download``
needs a hub), so its two costs are stood in for by what they are on disk: a first download is a
copy of every byte (``cp -r``) and a second load links what is there (``cp -al``). Everything runs
in one process on a local store (SQLite registry), after ``sync``, the source in the page cache;
each round uses a fresh store and a fresh cache. Nothing is written outside ``--workdir``
(deleted at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _model


def _timed(fn: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _round(model: Path, round_dir: Path, rows: dict[str, list[float]],
           copied: dict[str, int]) -> None:
    os.environ["MODELKEEP_CACHE_DIR"] = str(round_dir / "cache")
    import modelkeep

    keep = modelkeep.open(store=str(round_dir / "store"),
                          registry=f"sqlite:///{round_dir / 'mlflow.db'}")
    ref = keep.register("bench", model).ref
    got = {}

    def first() -> None:
        got["first"] = keep.fetch_report(ref).downloaded_bytes

    def second() -> None:
        got["second"] = keep.fetch_report(ref).downloaded_bytes

    steps = {
        "cp -r": lambda: shutil.copytree(model, round_dir / "cp"),
        "cp -al (links)": lambda: subprocess.run(
            ["cp", "-al", str(model), str(round_dir / "al")], check=True),
        "fetch, first": first,
        "fetch, second": second,
        "pull --link": lambda: keep.pull(ref, round_dir / "linked", link=True),
        "pull (from the cache)": lambda: keep.pull(ref, round_dir / "pulled"),
        "pull --no-cache": lambda: keep.pull(ref, round_dir / "plain", cache=False),
    }
    for name, step in steps.items():
        rows.setdefault(name, []).append(_timed(step))
    copied["fetch, first"], copied["fetch, second"] = got["first"], got["second"]
    subprocess.run(["chmod", "-R", "u+w", str(round_dir)], check=True)
    shutil.rmtree(round_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelkeep-bench-fetch-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[float]] = {}
    copied: dict[str, int] = {}
    try:
        model = _model.write_single(work / "src", "model", args.size_mib).path
        for r in range(args.rounds):
            _round(model, work / f"r{r}", rows, copied)
        size = _model.tree_size(model)
        cp = statistics.median(rows["cp -r"])
        print(f"| {size / 2**30:.2f} GiB, {args.rounds} rounds | best s | median s | "
              "median / cp -r | bytes copied |")
        print("|---|---|---|---|---|")
        for name, times in rows.items():
            med = statistics.median(times)
            note = f"{copied[name]:,}" if name in copied else ""
            print(f"| {name} | {min(times):.3f} | {med:.3f} | {med / cp:.2f}x | {note} |")
    finally:
        if not args.keep:
            subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
