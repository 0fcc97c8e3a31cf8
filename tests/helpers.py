"""Test helpers: small real models written with numpy, and tree comparison."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import save_file

if TYPE_CHECKING:
    from modelkeep.keep import Keep


def tensors(seed: int = 0, n: int = 20, rows: int = 256, cols: int = 512) -> dict[str, np.ndarray]:
    """A float16 model of *n* weight matrices (256 KiB each by default) plus small norms."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i in range(n):
        out[f"layers.{i:02d}.weight"] = rng.standard_normal((rows, cols)).astype(np.float16)
        out[f"layers.{i:02d}.norm"] = rng.standard_normal(cols).astype(np.float16)
    return out


def write_model(folder: Path, ts: dict[str, np.ndarray], *, extra: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(ts, str(folder / "model.safetensors"), metadata={"format": "np"})
    if extra:
        (folder / "config.json").write_text('{"hidden": 512, "layers": 20}\n')
        sub = folder / "tokenizer"
        sub.mkdir(exist_ok=True)
        (sub / "vocab.txt").write_bytes(os.urandom(300_000))
        (sub / "empty.txt").write_bytes(b"")
        run = folder / "run.sh"
        run.write_text("#!/bin/sh\necho serve\n")
        run.chmod(0o755)
    return folder


def change_fraction(ts: dict[str, np.ndarray], fraction: float, seed: int = 1) -> list[str]:
    """Overwrite *fraction* of the weight matrices in place; return their names."""
    names = sorted(k for k in ts if k.endswith(".weight"))
    count = max(1, round(len(names) * fraction))
    rng = np.random.default_rng(seed)
    changed = names[:: max(1, len(names) // count)][:count]
    for name in changed:
        ts[name] = rng.standard_normal(ts[name].shape).astype(np.float16)
    return changed


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mode bits)} of every file under *folder*."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o111)
    return out


def example_approval_plugin() -> ModuleType:
    """The example plugin of examples/plugins/approval, imported from its source folder: a test
    registers it with its own plugin manager, so it need not be installed (the environment every
    user gets does not install examples)."""
    import importlib.util
    import sys

    # Loaded from its file, not by putting its folder on sys.path: a pip install of the example
    # (tests/test_example_plugin.py) leaves an egg-info there, and on sys.path that would make
    # the plugin look installed to every later test in the process.
    name = "modelkeep_approval"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "examples/plugins/approval/src" / name
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def sqlite_project(root: Path) -> Keep:
    """A project folder on the local store and the SQLite default (its modelkeep.toml, as a
    person's project has it), and a Keep on the same store and registry without entry-point
    plugins; the registry file is made by the first register."""
    import modelkeep
    from modelkeep.hooks import make_plugin_manager

    (root / "modelkeep.toml").write_text('store = "./store"\nregistry = "sqlite:///mlflow.db"\n')
    return modelkeep.open(store=str(root / "store"), registry=f"sqlite:///{root / 'mlflow.db'}",
                          plugins=make_plugin_manager(entry_points=False))


SRC = Path(__file__).resolve().parents[1] / "src"
_IMPORT_PROBE = (
    "import sys\n"
    "from modelkeep.cli.main import main\n"
    "try:\n"
    "    rc = main(sys.argv[3:])\n"
    "finally:\n"
    "    found = [m for m in sys.argv[2].split(',') if m in sys.modules]\n"
    "    open(sys.argv[1], 'w').write(','.join(found))\n"
    "sys.exit(rc)\n"
)


def imports_of(args: list[str], cwd: Path, watched: Sequence[str],
               env: Mapping[str, str] | None = None, timeout: float = 120,
               ) -> tuple[subprocess.CompletedProcess[str], set[str] | None]:
    """Run ``modelkeep ARGS`` in a fresh interpreter (this checkout's source, no registry from
    the environment): the process, and which of *watched* it imported (None if it died before
    it could say)."""
    marker = cwd / f".probe-{time.monotonic_ns()}"
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        full_env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(marker), ",".join(watched),
                           *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    try:
        found = marker.read_text()
    except OSError:
        return proc, None
    marker.unlink()
    return proc, {m for m in found.split(",") if m}
