"""Faults matrix: register and pull through a fault-injecting proxy, on S3 (moto) and Azure
(Azurite), with the default retry policy.

    PYTHONPATH=$PWD/src .venv/bin/python bench/faults.py --size-mb 100 --runs 10

For each backend and fault mode, each run registers a fresh model into a fresh store through
tests/faultproxy.py, then pulls it, and checks the pulled bytes; the table gives failures, the
median register and pull times and their ratio to the no-fault run. A dead endpoint is timed to
its error, and after it a re-run (endpoint back) must send only what is missing. Writes
bench/RESULTS-faults.md (``--out`` to change). With ``MK_FAULTS_DEBUG=1`` it prints, after each
register and pull, the requests the proxy saw take longer than 1.5 s (what an operation waited on).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faultproxy import Fault, FaultProxy
from tests.helpers import tensors, tree_digest, write_model
from tests.servers import start_azurite, start_moto

import modelkeep

MODES: dict[str, Callable[[str], tuple[Fault, Fault]]] = {
    # (fault while registering, fault while pulling)
    "no fault": lambda b: (Fault(), Fault()),
    "20% 503": lambda b: (Fault("status", 0.2, 503),) * 2,
    "20% 429, Retry-After: 1": lambda b: (Fault("status", 0.2, 429, retry_after=1),) * 2,
    "20% SlowDown / ServerBusy": lambda b: (
        Fault("status", 0.2, 503, code="SlowDown" if b == "s3" else "ServerBusy"),) * 2,
    "20% resets mid-body": lambda b: (Fault("reset_upload", 0.2, methods=("PUT",)),
                                      Fault("reset_download", 0.2, methods=("GET",))),
    "5% stalled 30 s": lambda b: (Fault("stall", 0.05, stall=30),) * 2,
}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _show_waits(what: str, took: float, proxy: FaultProxy) -> None:
    if not os.environ.get("MK_FAULTS_DEBUG"):
        return
    log = list(proxy.log)
    t0 = min((r.start for r in log), default=0.0)
    print(f"  {what} {took:.1f} s, {len(log)} requests", flush=True)
    for r in log:
        end = r.end if r.end is not None else time.monotonic()
        if end - r.start > 1.5:
            print(f"    {r.start - t0:6.2f}+{end - r.start:5.2f} {r.fault:6} {r.method} "
                  f"{r.target[:110]}", flush=True)


def run(args: argparse.Namespace) -> str:
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="mk-faults-"))
    rows: list[str] = []
    try:
        rows_per_model = max(1, args.size_mb * 2)  # 512 KiB tensors
        model = write_model(work / "model", tensors(n=rows_per_model, rows=512, cols=512))
        size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        registry = f"sqlite:///{work / 'mlflow.db'}"
        for backend in args.backends:
            server: Any
            if backend == "s3":
                (work / "moto").mkdir()
                server = start_moto(work / "moto")
                proxy = FaultProxy("127.0.0.1", _port(server.endpoint_url))
                base = {**server.storage_options, "client_kwargs": {
                    "endpoint_url": proxy.url, "region_name": server.region}}
                place = server.make_bucket()
                scheme = "s3"
            else:
                (work / "azurite").mkdir()
                server = start_azurite(work / "azurite")
                proxy = FaultProxy("127.0.0.1", _port(server.blob_endpoint))
                port = _port(server.blob_endpoint)
                base = {"connection_string": server.connection_string.replace(
                    f":{port}/", f":{proxy.port}/")}
                place = server.make_container()
                scheme = "az"

            def new_url(i: int, scheme: str = scheme, place: str = place) -> str:
                return f"{scheme}://{place}/run{i}"

            counter = [0]
            try:
                baseline: tuple[float, float] | None = None
                for mode, faults in MODES.items():
                    if args.modes and mode != "no fault" and mode not in args.modes:
                        continue
                    reg_t: list[float] = []
                    pull_t: list[float] = []
                    failures: list[str] = []
                    for _ in range(args.runs):
                        counter[0] += 1
                        keep = modelkeep.open(store=new_url(counter[0]), registry=registry,
                                              store_options=base)
                        f_reg, f_pull = faults(backend)
                        out = work / f"out{counter[0]}"
                        try:
                            proxy.set(f_reg)
                            t = time.monotonic()
                            v = keep.register(f"m-{backend}-{counter[0]}", model)
                            reg_t.append(time.monotonic() - t)
                            _show_waits("register", reg_t[-1], proxy)
                            proxy.set(f_pull)
                            t = time.monotonic()
                            keep.pull(v.ref, out)
                            pull_t.append(time.monotonic() - t)
                            _show_waits("pull", pull_t[-1], proxy)
                            if tree_digest(out) != tree_digest(model):
                                failures.append("bytes differ")
                        except Exception as exc:
                            failures.append(str(exc).splitlines()[0][:160])
                        finally:
                            proxy.set()
                            shutil.rmtree(out, ignore_errors=True)
                    reg = statistics.median(reg_t) if reg_t else float("nan")
                    pul = statistics.median(pull_t) if pull_t else float("nan")
                    if baseline is None:
                        baseline = (reg, pul)
                    rows.append(
                        f"| {backend} | {mode} | {len(failures)}/{args.runs} | {reg:.1f} s "
                        f"({reg / baseline[0]:.1f}x) | {pul:.1f} s ({pul / baseline[1]:.1f}x) | "
                        f"{'; '.join(sorted(set(failures)))[:200]} |")
                    print(rows[-1], flush=True)
                if args.modes and "dead endpoint" not in args.modes:
                    continue
                rows.append(dead_endpoint(backend, proxy, new_url, registry, base, model,
                                          counter, rows_per_model // 2))
                print(rows[-1], flush=True)
            finally:
                proxy.stop()
                server.process.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "PYTHONPATH=$PWD/src .venv/bin/python bench/faults.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    return "\n".join([
        "# Faults: register and pull through a fault-injecting proxy",
        "",
        f"Command: `{command}`",
        f"Model: {size / 1e6:.0f} MB (safetensors, 512 KiB tensors, a config and a 300 kB "
        f"vocabulary), {args.runs} run(s) per mode, default retry policy, one process on a "
        "shared 2-core machine. Times are medians; the ratio is to the no-fault row. Load "
        f"average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| backend | fault | failed | register | pull | errors |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])


def dead_endpoint(backend: str, proxy: FaultProxy, new_url: Callable[[int], str],
                  registry: str, base: dict[str, Any], model: Path, counter: list[int],
                  kill_after: int) -> str:
    """The endpoint dies half-way through a register: time from its death to the error; then a
    re-run with the endpoint back must send only what is missing."""
    counter[0] += 1
    url = new_url(counter[0])
    keep = modelkeep.open(store=url, registry=registry, store_options=base)
    keep.store.ensure_initialized()
    killed: list[float] = []

    def kill() -> None:
        proxy.kill()
        killed.append(time.monotonic())

    def kill_when_half_sent() -> None:
        # Half the model's uploads: each tensor is one PUT of 512 KiB.
        while proxy.requests < kill_after and len(killed) == 0:
            time.sleep(0.005)
        kill()

    proxy.set()
    timer = threading.Thread(target=kill_when_half_sent)
    message = "no error"
    timer.start()
    try:
        keep.register(f"m-{backend}-{counter[0]}", model)
    except Exception as exc:
        message = str(exc).splitlines()[0]
    timer.join()
    took = time.monotonic() - killed[0] if killed else float("nan")
    proxy.revive()
    again = modelkeep.open(store=url, registry=registry, store_options=base).register(
        f"m-{backend}-{counter[0]}", model)
    sent = (again.bytes_added or 0) / max(1, again.size)
    return (f"| {backend} | endpoint dies mid-register | error {took:.1f} s after | re-run sent "
            f"{sent:.0%} of the model | | `{message[:170]}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backends", nargs="+", default=["s3", "az"], choices=["s3", "az"])
    parser.add_argument("--modes", nargs="+", default=[], metavar="MODE",
                        help="only these modes (and the no-fault baseline): "
                        # argparse formats help with %: the modes' percent signs doubled
                        + ", ".join(f"'{m}'" for m in [*MODES, "dead endpoint"][1:])
                        .replace("%", "%%"))
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "RESULTS-faults.md")
    args = parser.parse_args()
    report = run(args)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
