"""Private copies out of the read cache: reflink libraries beside a byte copy and a hard link.

    PYTHONPATH=src .venv/bin/python bench/clones.py DIR [DIR ...] --size-mib 1024 --rounds 5

For each folder (put one on a filesystem with reflinks, e.g. an XFS image: ``truncate -s 4G
x.img && mkfs.xfs -m reflink=1 x.img && mount -o loop x.img /mnt/x``, as root), one file of
``--size-mib`` random bytes is copied by each method, the median of ``--rounds`` runs after a
``sync``, with the disk space each copy took (``statvfs``). Methods: ``shutil.copyfile`` (what a
private pull did before; sendfile on Linux), ``os.link`` (what ``pull --link`` does; not a private
file), ``clone_or_copy`` (modelkeep's, through ``reflink-copy``), ``reflink`` (the other PyPI
package, if installed) and a raw ``FICLONE`` ioctl (the hand-written way, Linux only). The
paired methods run in the same process one after the other, so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelkeep.store.readcache import clone_or_copy

Method = Callable[[Path, Path], object]


def _ficlone(src: Path, dst: Path) -> None:
    import fcntl

    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fcntl.ioctl(fo.fileno(), 0x40049409, fi.fileno())  # FICLONE


def _methods() -> dict[str, Method]:
    methods: dict[str, Method] = {
        "shutil.copyfile": shutil.copyfile,
        "os.link": os.link,
        "clone_or_copy (reflink-copy)": clone_or_copy,
    }
    try:
        import reflink  # type: ignore[import-not-found]  # measured only, not a dependency

        methods["reflink 0.2 (PyPI reflink)"] = lambda s, d: reflink.reflink(str(s), str(d))
    except ImportError:
        pass
    if sys.platform == "linux":
        methods["ioctl FICLONE"] = _ficlone
    return methods


def _used(folder: Path) -> int:
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def measure(folder: Path, size_mib: int, rounds: int) -> list[tuple[str, str, str]]:
    src = folder / "modelkeep-reflink-src.bin"
    dst = folder / "modelkeep-reflink-dst.bin"
    with open(src, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    rows = []
    try:
        for name, method in _methods().items():
            times, extra = [], []
            try:
                for _ in range(rounds):
                    dst.unlink(missing_ok=True)
                    subprocess.run(["sync"], check=True)
                    before = _used(folder)
                    start = time.perf_counter()
                    method(src, dst)
                    times.append(time.perf_counter() - start)
                    subprocess.run(["sync"], check=True)
                    extra.append(_used(folder) - before)
            except Exception as exc:  # each library says "not supported" its own way
                rows.append((name, f"fails: {type(exc).__name__} {exc}", ""))
                continue
            rows.append((name, f"{statistics.median(times) * 1000:.2f}",
                         f"{statistics.median(extra) / 2**20:.0f}"))
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", type=Path, nargs="+")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for folder in args.dirs:
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(folder)], capture_output=True,
                            text=True, check=False).stdout.strip()
        print(f"\n{folder} ({fs}), {args.size_mib} MiB, median of {args.rounds}\n")
        print("| method | ms | disk MiB |")
        print("|---|---|---|")
        for name, ms, mib in measure(folder, args.size_mib, args.rounds):
            print(f"| {name} | {ms} | {mib} |")


if __name__ == "__main__":
    main()
