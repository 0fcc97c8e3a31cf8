"""What lineage capture adds to a register, on a large git + DVC repository.

Issue target: capturing git and DVC lineage never slows a register by more than a fraction of a
second on a large repository. This builds one (``--files`` committed files, ``--dvc-files`` ``.dvc``
files, a ``dvc.lock`` with ``--stages`` stages, params and a DVC remote), then registers the same
small model from inside it in fresh processes, alternating with and without the built-in git and
DVC plugins (``MODELKEEP_PLUGINS=-modelkeep.git,-modelkeep.dvc``), and prints the medians and the
median of the paired differences::

    .venv/bin/python bench/lineage.py            # 20,000 files, 300 .dvc files, 50 stages
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}
NO_LINEAGE = "-modelkeep.git,-modelkeep.dvc"

_CHILD = r"""
import json, sys, time
import modelkeep
spec = json.loads(sys.argv[1])
keep = modelkeep.open(store=spec["store"], registry=spec["registry"])
keep.models()  # registry schema and imports, outside the measurement
start = time.perf_counter()
v = keep.register(spec["name"], spec["src"], force=True)
print("LINEAGE-RESULT", json.dumps({"seconds": time.perf_counter() - start,
                                    "git": v.lineage.get("git", {}).get("status"),
                                    "dvc": v.lineage.get("dvc", {}).get("status")}))
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **ENV}, check=True,
                   capture_output=True)


def build_repo(repo: Path, files: int, dvc_files: int, stages: int) -> None:
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "remote", "add", "origin", "https://example.com/org/big.git")
    for i in range(files):
        folder = repo / "src" / f"pkg{i % 200:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n")
    for i in range(dvc_files):
        (repo / "data" / f"set{i:03d}").mkdir(parents=True, exist_ok=True)
        (repo / "data" / f"set{i:03d}.dvc").write_text(
            f"outs:\n- md5: {i:032x}.dir\n  size: {1000 + i}\n  nfiles: 3\n"
            f"  hash: md5\n  path: set{i:03d}\n"
        )
    lock = ["schema: '2.0'", "stages:"]
    for i in range(stages):
        lock += [f"  stage{i:02d}:", f"    cmd: python step.py {i}", "    deps:",
                 f"    - path: data/set{i:03d}", f"      md5: {i:032x}.dir", "      size: 1000",
                 "    outs:", f"    - path: out/stage{i:02d}", f"      md5: {i + 1:032x}",
                 "      size: 10"]
    (repo / "dvc.lock").write_text("\n".join(lock) + "\n")
    (repo / ".dvc").mkdir()
    (repo / ".dvc" / "config").write_text(
        "[core]\n    remote = store\n['remote \"store\"']\n    url = /srv/dvc-remote\n")
    (repo / "params.yaml").write_text("train:\n  lr: 0.001\n  epochs: 10\n")
    (repo / ".gitignore").write_text("/model\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "big repository")
    (repo / "model").mkdir()
    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((512, 512)).astype(np.float16)},
              str(repo / "model" / "model.safetensors"))


def measure(repo: Path, work: Path, plugins: str, name: str) -> dict[str, object]:
    spec = {"store": str(work / "store"), "registry": f"sqlite:///{work / 'registry.db'}",
            "name": name, "src": str(repo / "model")}
    env = {**os.environ, **ENV, "MODELKEEP_PLUGINS": plugins,
           "MODELKEEP_CACHE_DIR": str(work / "cache")}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], cwd=repo, env=env,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("LINEAGE-RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"register failed:\n{proc.stderr[-3000:]}")
    result: dict[str, object] = json.loads(lines[-1][len("LINEAGE-RESULT "):])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dvc-files", type=int, default=300)
    parser.add_argument("--stages", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=HERE / "work-lineage")
    args = parser.parse_args(argv)
    work: Path = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    repo = work / "repo"
    build_repo(repo, args.files, args.dvc_files, args.stages)
    with_l: list[float] = []
    without: list[float] = []
    try:
        for r in range(args.rounds):
            a = measure(repo, work, "", "with-lineage")
            b = measure(repo, work, NO_LINEAGE, "without-lineage")
            if (a["git"], a["dvc"], b["git"]) != ("ok", "ok", None):
                raise SystemExit(f"unexpected lineage: with {a}, without {b}")
            with_l.append(float(a["seconds"]))  # type: ignore[arg-type]
            without.append(float(b["seconds"]))  # type: ignore[arg-type]
            print(f"round {r}: register with lineage {with_l[-1]:.3f} s, "
                  f"without {without[-1]:.3f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra = statistics.median(a - b for a, b in zip(with_l, without, strict=True))
    print(f"\n{args.files} files, {args.dvc_files} .dvc files, {args.stages} stages: register "
          f"median {statistics.median(with_l):.3f} s with lineage, "
          f"{statistics.median(without):.3f} s without; lineage adds {extra:.3f} s "
          f"(median of paired differences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
