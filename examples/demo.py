"""The modelkeep demo: two versions of a small model, deduplicated, pulled back and verified.

Runs on the embedded defaults: a local store under ./demo-work/.modelkeep/store and a local MLflow
SQLite registry (./demo-work/mlflow.db). Run it with `make demo`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

import modelkeep

WORK = Path(__file__).resolve().parent.parent / "demo-work"
DTYPE = "F16"


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a safetensors file with numpy alone (the format is a JSON header + raw bytes)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, array in tensors.items():
        header[name] = {"dtype": DTYPE, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())


def build_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A small transformer-shaped model in float16: an embedding and 12 layers of width 512
    (the demo prints its size when it registers it)."""
    d = 512
    tensors = {"embed.weight": rng.standard_normal((4000, d)).astype(np.float16)}
    for i in range(12):
        for part, shape in (("attn.qkv", (3 * d, d)), ("attn.out", (d, d)),
                            ("mlp.up", (4 * d, d)), ("mlp.down", (d, 4 * d)), ("norm", (d,))):
            tensors[f"layers.{i}.{part}.weight"] = rng.standard_normal(shape).astype(np.float16)
    return tensors


def mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.1f} MiB"


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    os.chdir(WORK)
    (WORK / "modelkeep.toml").write_text(
        'store = ".modelkeep/store"\nregistry = "sqlite:///mlflow.db"\n'
    )
    keep = modelkeep.open()
    print(f"store:    {keep.store.url}\nregistry: {keep.registry.uri}\n")

    rng = np.random.default_rng(7)
    tensors = build_model(rng)
    model = WORK / "model"
    model.mkdir()
    save_safetensors(model / "model.safetensors", tensors)
    (model / "config.json").write_text('{"layers": 12, "hidden": 512}\n')

    v1 = keep.register("demo-llm", model, aliases=["champion"], tags={"stage": "pretrain"},
                       message="first training run")
    print(f"registered {v1.ref}: {mib(v1.size)}, stored {mib(v1.bytes_added)}")

    # Fine-tune: change 10% of the weight tensors.
    names = [n for n in tensors if n.endswith(".weight") and "norm" not in n]
    changed = names[:: 10][: max(1, len(names) // 10)]
    for name in changed:
        tensors[name] = rng.standard_normal(tensors[name].shape).astype(np.float16)
    save_safetensors(model / "model.safetensors", tensors)
    v2 = keep.register("demo-llm", model, parents=[v1.ref], tags={"stage": "finetune"},
                       message=f"fine-tuned {len(changed)} of {len(tensors)} tensors")
    share = 100 * (v2.bytes_added or 0) / v2.size
    print(f"registered {v2.ref}: {mib(v2.size)}, stored only {mib(v2.bytes_added)} "
          f"({share:.1f}% of the version; a whole-file copy would store 100%)")

    d = keep.diff(v1.ref, v2.ref)
    for f in d.files:
        if f.tensors is not None:
            print(f"diff {v1.ref} -> {v2.ref}: {f.path}: {len(f.tensors.changed)} tensors "
                  f"changed, {f.tensors.unchanged} unchanged")

    out = keep.pull(v2.ref, WORK / "pulled")
    same = (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    report = keep.verify(v2.ref)
    print(f"pulled {v2.ref} to {out}: byte-identical={same}, "
          f"verify={'ok' if report.ok else 'FAILED'} ({report.chunks} chunks checked)")

    print("\nregistry:")
    for v in keep.versions("demo-llm"):
        aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
        print(f"  {v.ref}{aliases}  {mib(v.size)}  added {mib(v.bytes_added)}  {v.message}")

    print("\nTry the CLI here:  cd demo-work && ../.venv/bin/modelkeep log demo-llm")
    print("See it in MLflow:  make ui   (adds MLflow's UI to the venv, then open "
          "http://127.0.0.1:5000, Models)")
    return 0 if same and report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
