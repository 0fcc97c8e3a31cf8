"""Synthetic float16 safetensors models for the benchmark, written without holding them in memory.

The model is shaped like a small decoder-only transformer (197 tensors at every size): token and
position embeddings, 16 layers of q/k/v/o projections (q/k/v with biases), a gated MLP
(gate/up/down) and two norms each, a final norm and an untied LM head. The hidden size is solved
for the requested size, so ``--size-mib 1024`` gives the 1.03 GiB model the store was designed on.

Tensor contents are pseudo-random float16 bits (finite values, ``|x| < 2``) from a counter-based
generator keyed by ``(tensor name, variant)``: the same tensor is bit-identical in every version
that keeps it, a changed tensor differs everywhere, and no two tensors share a chunk. Random bits
do not compress, so these models measure chunking and dedup, not the codecs.

:func:`write_weights` writes the same shapes as bfloat16 *weight-like* values instead: normally
distributed, with the spread of trained weights (standard deviation ``1/sqrt(fan in)`` for
matrices and embeddings, norms near 1, biases near 0), rounded to bf16 as torch does. Their
exponent bytes compress as real weights' do (about a third), so the default codec does its full
work on them: the model the codec speed targets are measured on.

The versions written by :func:`write_versions`:

* ``v1``: the model, one ``model.safetensors`` file.
* ``v2``: 10% of the tensors have new contents: the q/k/v/o projection weights of five layers
  spread through the model (20 of 197 tensors, 8.5% of the bytes at 1 GiB), as a partial
  fine-tune would leave them.
* ``v3``: v1 with three small adapter tensors inserted in the middle of the file, shifting every
  byte after them.
* ``reshard``: v1's tensors split into four files plus ``model.safetensors.index.json``, the
  layout Hugging Face uses for sharded checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYERS = 16
VOCAB = 32000
POSITIONS = 2048
DTYPE = "F16"
_PIECE_WORDS = 8 << 20  # 64 MiB of uint64 per generator call: bounds memory for huge tensors
_FINITE_F16 = np.uint64(0xBFFF_BFFF_BFFF_BFFF)  # clears each half's top exponent bit: no inf/NaN


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    variant: int = 0  # contents are a function of (name, variant)

    dtype: str = DTYPE  # F16 (random bits) or BF16 (weight-like values)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 2


@dataclass(frozen=True)
class VersionInfo:
    """What was written for one version: its folder, files, size and the bytes that are new
    relative to v1 (the lower bound any store can reach)."""

    name: str
    path: Path
    files: tuple[str, ...]
    size: int
    tensors: int
    new_tensor_bytes: int


def hidden_size(size_mib: int) -> int:
    """Hidden size whose model is about *size_mib* MiB (rounded to a multiple of 64)."""
    params = size_mib * (1 << 20) / 2
    # params ~= LAYERS * 12 h^2 (attention 4 h^2, MLP 3 h * 8h/3) + (2 VOCAB + POSITIONS) h
    a, b = LAYERS * 12, 2 * VOCAB + POSITIONS
    h = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    return max(64, round(h / 64) * 64)


def model_specs(size_mib: int) -> list[TensorSpec]:
    """The 197 tensors of the model, in file order."""
    h = hidden_size(size_mib)
    inter = max(64, round(h * 8 / 3 / 64) * 64)
    specs = [
        TensorSpec("model.embed_tokens.weight", (VOCAB, h)),
        TensorSpec("model.embed_positions.weight", (POSITIONS, h)),
    ]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        specs += [
            TensorSpec(p + "input_layernorm.weight", (h,)),
            TensorSpec(p + "self_attn.q_proj.weight", (h, h)),
            TensorSpec(p + "self_attn.q_proj.bias", (h,)),
            TensorSpec(p + "self_attn.k_proj.weight", (h, h)),
            TensorSpec(p + "self_attn.k_proj.bias", (h,)),
            TensorSpec(p + "self_attn.v_proj.weight", (h, h)),
            TensorSpec(p + "self_attn.v_proj.bias", (h,)),
            TensorSpec(p + "self_attn.o_proj.weight", (h, h)),
            TensorSpec(p + "post_attention_layernorm.weight", (h,)),
            TensorSpec(p + "mlp.gate_proj.weight", (inter, h)),
            TensorSpec(p + "mlp.up_proj.weight", (inter, h)),
            TensorSpec(p + "mlp.down_proj.weight", (h, inter)),
        ]
    specs += [
        TensorSpec("model.norm.weight", (h,)),
        TensorSpec("model.norm.bias", (h,)),
        TensorSpec("lm_head.weight", (VOCAB, h)),
    ]
    return specs


def _key(spec: TensorSpec) -> int:
    digest = hashlib.blake2b(f"{spec.name}\0{spec.variant}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def _tensor_pieces(spec: TensorSpec) -> Iterable[np.ndarray]:
    gen = np.random.Philox(key=_key(spec))
    words = spec.nbytes // 8
    while words > 0:
        n = min(words, _PIECE_WORDS)
        block = gen.random_raw(n)
        np.bitwise_and(block, _FINITE_F16, out=block)
        yield block
        words -= n
    tail = spec.nbytes % 8
    if tail:
        yield np.frombuffer(gen.random_raw(1).tobytes()[:tail], dtype=np.uint8)


def _weight_pieces(spec: TensorSpec) -> Iterable[np.ndarray]:
    """bf16 bits of normally distributed values shaped like trained weights."""
    gen = np.random.Generator(np.random.Philox(key=_key(spec)))
    count = math.prod(spec.shape)
    leaf = spec.name.rsplit(".", 2)[-2:]
    if len(spec.shape) > 1:
        mean, std = 0.0, 1.0 / math.sqrt(spec.shape[-1])
    elif "norm" in spec.name and leaf[-1] == "weight":
        mean, std = 1.0, 0.05
    else:
        mean, std = 0.0, 0.02
    done = 0
    while done < count:
        n = min(count - done, _PIECE_WORDS)
        x = gen.standard_normal(n, dtype=np.float32)
        x *= std
        x += mean
        bits = x.view(np.uint32)
        # Round to nearest even, as torch's float32 -> bfloat16 conversion does.
        bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        yield (bits >> np.uint32(16)).astype(np.uint16)
        done += n


def write_safetensors(path: Path, specs: list[TensorSpec], metadata: dict[str, str]) -> int:
    """Write *specs* in the given order (the format allows any order); returns the file size."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # pad so the data section is 8-byte aligned, as HF does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            pieces = _weight_pieces(spec) if spec.dtype == "BF16" else _tensor_pieces(spec)
            for piece in pieces:
                f.write(memoryview(piece).cast("B"))
    return 8 + len(raw) + offset


def _shards(specs: list[TensorSpec], n: int) -> list[list[TensorSpec]]:
    total = sum(s.nbytes for s in specs)
    out: list[list[TensorSpec]] = [[] for _ in range(n)]
    acc = 0
    for spec in specs:
        # By the tensor's midpoint, so that a large last tensor still gets a shard of its own.
        index = min(n - 1, (acc + spec.nbytes // 2) * n // total)
        out[index].append(spec)
        acc += spec.nbytes
    return [shard for shard in out if shard]


def _write_version(
    root: Path, name: str, specs: list[TensorSpec], base: dict[str, TensorSpec], shards: int = 1
) -> VersionInfo:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}
    files: list[str] = []
    size = 0
    if shards == 1:
        size += write_safetensors(folder / "model.safetensors", specs, meta)
        files.append("model.safetensors")
    else:
        groups = _shards(specs, shards)
        weight_map: dict[str, str] = {}
        for i, group in enumerate(groups, 1):
            fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            size += write_safetensors(folder / fname, group, meta)
            files.append(fname)
            weight_map.update({s.name: fname for s in group})
        index = {
            "metadata": {"total_size": sum(s.nbytes for s in specs)},
            "weight_map": dict(sorted(weight_map.items())),
        }
        index_path = folder / "model.safetensors.index.json"
        index_path.write_text(json.dumps(index, indent=2) + "\n")
        size += index_path.stat().st_size
        files.append(index_path.name)
    new = sum(s.nbytes for s in specs if base.get(s.name) != s)
    return VersionInfo(name, folder, tuple(files), size, len(specs), new)


def write_versions(root: Path, size_mib: int) -> dict[str, VersionInfo]:
    """Write v1, v2, v3 and the re-sharded v1 under *root* (one folder each)."""
    v1 = model_specs(size_mib)
    base = {s.name: s for s in v1}
    # A partial fine-tune: the attention projections of every third layer, from layer 3 up.
    tuned = re.compile(r"model\.layers\.(3|6|9|12|15)\.self_attn\.[qkvo]_proj\.weight")
    v2 = [TensorSpec(s.name, s.shape, 1) if tuned.fullmatch(s.name) else s for s in v1]
    h = v1[2].shape[0]
    middle = 2 + (LAYERS // 2) * 12  # after layer LAYERS/2 - 1
    adapter = f"model.layers.{LAYERS // 2 - 1}.adapter."
    inserted = [
        TensorSpec(adapter + "lora_A.weight", (16, h)),
        TensorSpec(adapter + "lora_B.weight", (h, 16)),
        TensorSpec(adapter + "scale", (h,)),
    ]
    v3 = v1[:middle] + inserted + v1[middle:]
    out = {
        "v1": _write_version(root, "v1", v1, base),
        "v2": _write_version(root, "v2", v2, base),
        "v3": _write_version(root, "v3", v3, base),
        "reshard": _write_version(root, "reshard", v1, base, shards=4),
    }
    return out


def write_single(root: Path, name: str, size_mib: int) -> VersionInfo:
    """Write one model of about *size_mib* MiB (used for the large-model memory measurement)."""
    specs = model_specs(size_mib)
    return _write_version(root, name, specs, {})


def write_weights(root: Path, name: str, size_mib: int) -> VersionInfo:
    """Write one bf16 model of about *size_mib* MiB with weight-like values (see above)."""
    specs = [TensorSpec(s.name, s.shape, dtype="BF16") for s in model_specs(size_mib)]
    return _write_version(root, name, specs, {})


def write_tiny(root: Path, name: str, count: int = 100_000) -> VersionInfo:
    """A file of *count* float32 tensors of shape (1,) named ``layers.{i}.w`` (value ``i``), as
    ``safetensors`` writes it: a header of some 75 bytes per tensor before 4 bytes of data."""
    from safetensors.numpy import save_file

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    values = np.arange(count, dtype=np.float32)
    path = folder / "model.safetensors"
    save_file({f"layers.{i}.w": values[i : i + 1] for i in range(count)}, str(path))
    size = path.stat().st_size
    return VersionInfo(name, folder, ("model.safetensors",), size, count, size)


def write_one_tensor(root: Path, name: str, size: int) -> VersionInfo:
    """A file of one float32 tensor of normally distributed values, *size* bytes long to within
    a header's length: the same bytes as :func:`write_tiny`'s file, in one tensor."""
    from safetensors.numpy import save_file

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    values = np.random.default_rng(0).standard_normal((size - 128) // 4, dtype=np.float32)
    path = folder / "model.safetensors"
    save_file({"w": values}, str(path))
    size = path.stat().st_size
    return VersionInfo(name, folder, ("model.safetensors",), size, 1, size)


def tree_size(path: str | os.PathLike[str]) -> int:
    """Apparent size of every regular file under *path* (0 if it does not exist)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def cp_seconds(model: Path, out: Path) -> float:
    """Wall time of ``cp -r`` of *model* to *out* (removed again), after a ``sync`` so that
    earlier writes are not flushed inside the timed copy."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(model), str(out)], check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return seconds
