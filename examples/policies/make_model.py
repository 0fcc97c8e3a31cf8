"""Write a small model folder for the policy example: safetensors weights, a config, a vocab.

    python make_model.py out/v1 --seed 1
    python make_model.py out/bad --pickle      # adds a pickled optimizer state (optim.bin)

Only the standard library: the safetensors format is a JSON header and raw little-endian bytes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import struct
from pathlib import Path


def save_safetensors(path: Path, tensors: dict[str, list[float]]) -> None:
    header: dict[str, object] = {}
    offset = 0
    for name, values in tensors.items():
        size = 4 * len(values)
        header[name] = {"dtype": "F32", "shape": [len(values)],
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for values in tensors.values():
            f.write(struct.pack(f"<{len(values)}f", *values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pickle", action="store_true", help="add a pickle file (optim.bin)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(args.folder / "model.safetensors",
                     {f"layer{i}.weight": [rng.gauss(0, 1) for _ in range(4096)]
                      for i in range(4)})
    (args.folder / "config.json").write_text(json.dumps({"layers": 4, "seed": args.seed}) + "\n")
    (args.folder / "vocab.txt").write_text("\n".join(f"token{i}" for i in range(500)) + "\n")
    if args.pickle:
        (args.folder / "optim.bin").write_bytes(pickle.dumps({"step": 100, "lr": 3e-4},
                                                             protocol=4))


if __name__ == "__main__":
    main()
