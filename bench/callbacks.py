"""Training-step overhead of the modelkeep framework callbacks, side by side in one run.

For each framework (PyTorch Lightning, Keras 3 on torch, Hugging Face Transformers) a tiny model
trains on the CPU with a checkpoint saved every step, once with the framework's own checkpoint
callback and once with modelkeep's (the same save, plus registering it: staging copy or link on
the training thread, upload and MLflow registration on the tracker's worker thread). The two
take turns, repeat after repeat, in one process; ``--burn N`` keeps N busy processes running
meanwhile, to measure on a loaded machine. Time per step is the interval between consecutive
step-end events (it includes the previous step's checkpoint save); the first steps of each run
are warm-up and left out. Reported: median and mean per step for each, their ratio,
checkpoints registered of those saved, and the time the final flush waited. Written to
``bench/RESULTS-callbacks.md``.

    .venv/bin/python bench/callbacks.py [--steps 60] [--repeats 3] [--frameworks lightning,...]
        [--burn N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
WARMUP = 5
TARGET = 0.05


@dataclass
class Run:
    steps: list[float] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)  # Tracker.checkpoint on the training thread
    saved: int = 0
    registered: int = 0
    flush_seconds: float = 0.0


@dataclass
class Variant:
    runs: list[Run] = field(default_factory=list)

    def samples(self) -> list[float]:
        return [s for r in self.runs for s in r.steps[WARMUP:]]


def _keep(work: Path) -> Any:
    import modelkeep

    keep = modelkeep.open(store=str(work / "store"), registry=f"sqlite:///{work / 'mlflow.db'}")
    # A new SQLite registry builds its schema on first use (seconds of CPU); a project's
    # registry exists before training starts, so do that outside the timed steps.
    keep.models()
    return keep


# -- Lightning ---------------------------------------------------------------------------------


def lightning_run(work: Path, steps: int, with_modelkeep: bool) -> Run:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from modelkeep.plugins.callbacks.lightning import ModelkeepCheckpoint

    run = Run()

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(),
                                           torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                           torch.nn.Linear(1024, 10))

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    class Clock(pl.Callback):
        last: float | None = None

        def on_train_batch_end(self, *args: Any) -> None:
            now = time.perf_counter()
            if self.last is not None:
                run.steps.append(now - self.last)
            self.last = now

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32 * steps, 256),
                                          torch.randint(0, 10, (32 * steps,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    common = {"dirpath": work / "ckpt", "every_n_train_steps": 1}
    if with_modelkeep:
        ckpt: ModelCheckpoint = ModelkeepCheckpoint(f"bench-{uuid.uuid4().hex[:8]}",
                                                    keep=_keep(work), **common)
    else:
        ckpt = ModelCheckpoint(**common)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=work, callbacks=[Clock(), ckpt])
    _fit_and_count(run, lambda: trainer.fit(Tiny(), loader), ckpt, steps)
    return run


# -- Keras -------------------------------------------------------------------------------------


def keras_run(work: Path, steps: int, with_modelkeep: bool) -> Run:
    import keras
    import numpy as np

    from modelkeep.plugins.callbacks.keras import ModelkeepCheckpoint

    run = Run()

    class Clock(keras.callbacks.Callback):
        last: float | None = None

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            now = time.perf_counter()
            if self.last is not None:
                run.steps.append(now - self.last)
            self.last = now

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024, activation="relu"),
                              keras.layers.Dense(1024, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer="adamw",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32 * steps, 256)).astype("float32")
    y = rng.integers(0, 10, 32 * steps)
    path = str(work / "ckpt" / "model.keras")
    ckpt: keras.callbacks.ModelCheckpoint
    if with_modelkeep:
        ckpt = ModelkeepCheckpoint(f"bench-{uuid.uuid4().hex[:8]}", path, keep=_keep(work),
                                   save_freq=1)
    else:
        ckpt = keras.callbacks.ModelCheckpoint(path, save_freq=1)
    _fit_and_count(run, lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                                          callbacks=[Clock(), ckpt]), ckpt, steps)
    return run


# -- Transformers ------------------------------------------------------------------------------


def transformers_run(work: Path, steps: int, with_modelkeep: bool) -> Run:
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from modelkeep.plugins.callbacks.transformers import ModelkeepCallback

    run = Run()

    class Clock(TrainerCallback):
        last: float | None = None

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            if self.last is not None:
                run.steps.append(now - self.last)
            self.last = now

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 8000, (n, 32), generator=g)
            self.labels = torch.randint(0, 2, (n,), generator=g)

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                    "labels": self.labels[i]}

    torch.manual_seed(0)
    config = BertConfig(vocab_size=8000, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=64)
    args = TrainingArguments(output_dir=str(work / "out"), max_steps=steps, save_steps=1,
                             save_total_limit=2, per_device_train_batch_size=8, logging_steps=1,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    callbacks: list[Any] = [Clock()]
    mk = None
    if with_modelkeep:
        mk = ModelkeepCallback(f"bench-{uuid.uuid4().hex[:8]}", keep=_keep(work))
        callbacks.append(mk)
    trainer = Trainer(model=BertForSequenceClassification(config), args=args,
                      train_dataset=Tokens(8 * steps), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the same in both columns; keeps output short
    _fit_and_count(run, trainer.train, mk, steps)
    return run


def _fit_and_count(run: Run, fit: Callable[[], Any], callback: Any, steps: int) -> None:
    """Train; for a modelkeep callback, time the flush at train end and count registrations."""
    from modelkeep.plugins.callbacks._common import TrackerOwner

    if callback is None or not hasattr(callback, "modelkeep"):
        fit()
        run.saved = steps
        return
    from modelkeep.training import Tracker

    close = TrackerOwner.close
    checkpoint = Tracker.checkpoint

    def timed_checkpoint(tracker: Tracker, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return checkpoint(tracker, *args, **kwargs)
        finally:
            run.calls.append(time.perf_counter() - started)

    def timed_close(owner: TrackerOwner) -> None:
        tracker = owner._tracker
        started = time.perf_counter()
        close(owner)
        run.flush_seconds = time.perf_counter() - started
        if tracker is not None:
            run.saved = tracker.stats.requested
            run.registered = tracker.stats.registered

    TrackerOwner.close = timed_close  # type: ignore[method-assign]
    Tracker.checkpoint = timed_checkpoint  # type: ignore[method-assign]
    try:
        fit()
    finally:
        TrackerOwner.close = close  # type: ignore[method-assign]
        Tracker.checkpoint = checkpoint  # type: ignore[method-assign]


RUNNERS: dict[str, Callable[[Path, int, bool], Run]] = {
    "lightning": lightning_run,
    "keras": keras_run,
    "transformers": transformers_run,
}
LABELS = {"lightning": "PyTorch Lightning (ModelCheckpoint every step)",
          "keras": "Keras 3, torch backend (ModelCheckpoint save_freq=1, .keras)",
          "transformers": "Transformers Trainer (save_steps=1), 2-layer BERT"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frameworks", default=",".join(RUNNERS))
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-callbacks.md")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steadier numbers on a shared machine)")
    parser.add_argument("--burn", type=int, default=0,
                        help="busy processes kept running meanwhile, to measure on a loaded "
                        "machine")
    opts = parser.parse_args(argv)
    frameworks = [f.strip() for f in opts.frameworks.split(",") if f.strip()]
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(opts.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(opts.burn)]
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="mk-bench-cb-", dir=opts.work))
    results: dict[str, dict[str, Variant]] = {}
    try:
        for fw in frameworks:
            results[fw] = {"without": Variant(), "with": Variant()}
            for rep in range(opts.repeats):
                order = ("without", "with") if rep % 2 == 0 else ("with", "without")
                for variant in order:
                    work = root / f"{fw}-{variant}-{rep}"
                    work.mkdir(parents=True)
                    run = RUNNERS[fw](work, opts.steps, variant == "with")
                    results[fw][variant].runs.append(run)
                    print(f"{fw:12} {variant:8} rep {rep}: median "
                          f"{statistics.median(run.steps[WARMUP:]) * 1e3:.2f} ms/step, "
                          f"registered {run.registered}/{run.saved}, "
                          f"flush {run.flush_seconds:.2f}s",
                          flush=True)
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for burner in burners:
            burner.kill()
            burner.wait()
    opts.load = (load_before, os.getloadavg()[0])
    report = _report(results, opts, argv)
    print(report)
    opts.out.write_text(report)
    return 0


def _version(pkg: str) -> str:
    try:
        return f"{pkg} {metadata.version(pkg)}"
    except metadata.PackageNotFoundError:
        return f"{pkg} (not installed)"


def _report(results: dict[str, dict[str, Variant]], opts: argparse.Namespace,
            argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    command = "python bench/callbacks.py" + ("" if not args else " " + shlex.join(args))
    lines = [
        "# Callback overhead: time per training step with and without modelkeep",
        "",
        f"Command: `{command}` ({opts.steps} steps per run, {opts.repeats} runs each, "
        f"first {WARMUP} steps of each run left out; torch on {opts.threads} thread(s)). "
        "A checkpoint is saved every step in both "
        "columns; the modelkeep column also registers it (staging on the training thread; "
        "upload and MLflow SQLite registration on the tracker's worker thread)."
        + (f" {opts.burn} busy process(es) ran meanwhile." if opts.burn else ""),
        "",
        f"- Machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        + ", ".join(_version(p) for p in ("torch", "lightning", "keras", "transformers",
                                          "mlflow")),
        f"- Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-minute load average "
        f"{opts.load[0]:.1f} at the start and {opts.load[1]:.1f} at the end (other work shares "
        "the machine: single runs vary by tens of percent, hence the paired ratios)",
        "",
        "| framework | without: median / mean ms per step | with modelkeep: median / mean | "
        "ratio (median of per-repeat ratios) | ratio of pooled medians | ratio of means | "
        "on the training thread per checkpoint (median) | "
        f"registered / saved | flush at end | target < {TARGET:.0%} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fw, variants in results.items():
        base, mk = variants["without"].samples(), variants["with"].samples()
        if not base or not mk:
            continue
        bmed, mmed = statistics.median(base), statistics.median(mk)
        bmean, mmean = statistics.fmean(base), statistics.fmean(mk)
        registered = sum(r.registered for r in variants["with"].runs)
        saved = sum(r.saved for r in variants["with"].runs)
        flush = statistics.median(r.flush_seconds for r in variants["with"].runs)
        # Each repeat runs both back to back: the ratio within a pair cancels the drift of a
        # shared machine's load, so the headline is the median of the per-pair ratios.
        pairs = [statistics.median(w.steps[WARMUP:]) / statistics.median(b.steps[WARMUP:])
                 for b, w in zip(variants["without"].runs, variants["with"].runs, strict=True)]
        pair_ratio = statistics.median(pairs)
        calls = [c for r in variants["with"].runs for c in r.calls]
        call = statistics.median(calls) * 1e3 if calls else float("nan")
        ratio = mmed / bmed
        verdict = "PASS" if pair_ratio - 1 < TARGET else "FAIL"
        lines.append(
            f"| {LABELS[fw]} | {bmed * 1e3:.2f} / {bmean * 1e3:.2f} | "
            f"{mmed * 1e3:.2f} / {mmean * 1e3:.2f} | **{pair_ratio:.3f}** | {ratio:.3f} | "
            f"{mmean / bmean:.3f} | {call:.2f} ms | {registered} / {saved} | {flush:.2f} s | "
            f"{verdict} |"
        )
    lines += [
        "",
        "Registered fewer than saved: when checkpoints arrive faster than the store and registry "
        "take them, queued checkpoints that are neither the newest nor the best are skipped "
        "(`on_full=\"skip\"`, the default; `\"block\"` registers all and waits instead). The "
        "newest is always registered by the flush at the end of training. In steady state the "
        "worker registers about once per `registration CPU time / cpu_budget` seconds (3%: a "
        "few seconds here); the first checkpoint is registered at once, which weighs more in "
        "short runs.",
        "",
        "A ratio below 1 is real, not only noise: with modelkeep the previous checkpoint's file "
        "is still hard-linked in staging when the framework deletes or truncates it, so no "
        "blocks are freed on the training thread; the worker frees them later.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
