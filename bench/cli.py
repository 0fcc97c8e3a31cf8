"""Whole-process time of modelkeep's commands, beside the commands people compare them with.

Each command is run as its own process, as a person or a git hook runs it, on a registry holding
``--versions`` versions of one model: the SQLite default, and (unless ``--no-server``) an
``mlflow server`` backed by the machine's PostgreSQL (its tables analyzed, as autovacuum would).
Every read command is measured as typed and with ``--json``; ``list NAME`` and ``log`` show a
model's newest versions, and their ``--all`` forms (the whole history) are measured beside them.
Every sample of a command is paired with a ``modelkeep --help`` run right before it, so both see
the same state of a shared machine; the median of those paired ratios is the figure the fast-CLI
targets are judged on (<= 2x ``--help``). Beside them: ``git status``, ``dvc status`` and the
MLflow CLI's nearest read (``mlflow experiments search``).

Then ``modelkeep register`` of a new ``--register-mib`` model (bf16 weight-like values, and
random float16 bits that do not compress; bench/_model.py) into an empty store, beside
``dvc add`` + ``dvc push`` of the same folder to a local remote and ``cp -r`` of it, interleaved
round by round (the order rotates) so the three see the same machine; the figures are the median
of the paired ratios per round. Targets: register <= 0.3x DVC and <= 1.5x ``cp`` + 0.3 s.

Writes ``bench/RESULTS-cli.md``. Usage::

    .venv/bin/python bench/cli.py [--versions 1000] [--repeat 5] [--no-server] [--no-sqlite]
        [--only 'modelkeep log NAME' ...] [--register-mib 1024] [--register-only]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

BIN = Path(sys.executable).parent
MODEL = "llm-ft"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE would have every process compile modelkeep's source (src/ is not
    # installed, so nothing compiled it) anew: 70 ms of each command that no installed copy
    # pays. The first run writes the compiled modules; the measured ones reuse them.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["MLFLOW_ENABLE_TELEMETRY"] = "false"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return {**env, **(extra or {})}


def _wall(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):  # status and dvc status answer 1 for "differs"
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return elapsed


def _populate(project: Path, registry: str, versions: int) -> None:
    """Three real versions of a small model, then versions up to *versions* naming the same
    snapshots (what the read commands read is the registry, so this is what they scale with)."""
    import numpy as np

    import modelkeep
    from modelkeep.hooks import make_plugin_manager

    keep = modelkeep.open(store=str(project / "store"), registry=registry,
                          plugins=make_plugin_manager(entry_points=False))
    folder = project / "model"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    real = []
    for i in range(3):
        (folder / "weights.bin").write_bytes(rng.bytes(4 << 20))
        (folder / "config.json").write_text(f'{{"step": {i}}}')
        real.append(keep.register(MODEL, folder, aliases=["prod"] if i == 0 else (),
                                  message=f"checkpoint {i}"))
    first = keep.registry.get_version(MODEL, real[-1].version)
    for _ in range(versions - len(real)):
        keep.registry.create_version(MODEL, first.source, tags=dict(first.tags),
                                     description=first.description, run_id="")


def _commands(registry: str, with_peers: bool) -> dict[str, list[str]]:
    mk = [str(BIN / "modelkeep"), "--registry", registry]
    cmds: dict[str, list[str]] = {}
    # Every read command, as a person types it and with --json as a script does.
    for label, args in (("list", ["list"]),
                        ("list NAME", ["list", MODEL]),
                        ("show NAME@latest", ["show", f"{MODEL}@latest"]),
                        ("show NAME@prod", ["show", f"{MODEL}@prod"]),
                        ("log NAME", ["log", MODEL]),
                        ("lineage NAME@latest", ["lineage", f"{MODEL}@latest"]),
                        ("status", ["status"])):
        cmds[f"modelkeep {label}"] = [*mk, *args]
        cmds[f"modelkeep --json {label}"] = [*mk, "--json", *args]
    # The whole history, which `list NAME` and `log` leave to --all.
    cmds["modelkeep list NAME --all"] = [*mk, "list", MODEL, "--all"]
    cmds["modelkeep log NAME --all"] = [*mk, "log", MODEL, "--all"]
    cmds["modelkeep register (unchanged)"] = [*mk, "register", MODEL, "model"]
    cmds["mlflow experiments search"] = [str(BIN / "mlflow"), "experiments", "search"]
    if with_peers:
        cmds["git status"] = ["git", "status", "--short"]
        cmds["dvc status"] = [str(BIN / "dvc"), "status"]
    return cmds


def _measure(project: Path, registry: str, repeat: int, with_peers: bool,
             only: Sequence[str] = ()) -> list[dict[str, object]]:
    env = _env({"MLFLOW_TRACKING_URI": registry})
    help_cmd = [str(BIN / "modelkeep"), "--help"]
    rows = []
    helps: list[float] = []
    for label, cmd in _commands(registry, with_peers).items():
        if only and label not in only:
            continue
        _wall(cmd, project, env)  # warm the page cache
        walls, ratios = [], []
        for _ in range(repeat):
            base = _wall(help_cmd, project, env)
            wall = _wall(cmd, project, env)
            helps.append(base)
            walls.append(wall)
            ratios.append(wall / base)
        rows.append({"command": label, "median": statistics.median(walls),
                     "ratio": statistics.median(ratios)})
    rows.insert(0, {"command": "modelkeep --help", "median": statistics.median(helps),
                    "ratio": 1.0})
    return rows


REGISTER_KINDS = ("bf16 weight-like", "f16 random bits")
CP_ALLOWANCE = 0.3  # seconds: the start-up a whole process may add to cp (the target's "+ 0.3 s")


def _models(root: Path, size_mib: int) -> dict[str, Path]:
    """The models a new-version register is measured on, written once."""
    import _model

    return {
        REGISTER_KINDS[0]: _model.write_weights(root, "bf16", size_mib).path,
        REGISTER_KINDS[1]: _model.write_single(root, "f16", size_mib).path,
    }


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _timed(cmds: Sequence[Sequence[str]], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, every thread and child) of *cmds* run one after
    another, after a ``sync`` so that the writes of whatever ran before are not flushed inside
    the measurement. On a shared machine the CPU time is the steadier of the two."""
    os.sync()
    cpu = _cpu()
    started = time.perf_counter()
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return time.perf_counter() - started, _cpu() - cpu


def _dvc_repo(repo: Path, remote: Path, model: Path, env: dict[str, str]) -> None:
    dvc = str(BIN / "dvc")
    repo.mkdir(parents=True)
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"],
                [dvc, "config", "core.analytics", "false"],
                [dvc, "remote", "add", "-q", "-d", "local", str(remote)]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    shutil.copytree(model, repo / "model")


def _measure_register(project: Path, registry: str, models: dict[str, Path], repeat: int,
                      with_peers: bool) -> list[dict[str, object]]:
    """``modelkeep register`` of each model as a new version into an empty store, whole
    process; with *with_peers*, ``dvc add`` + ``dvc push`` and ``cp -r`` of the same folder in
    the same rounds."""
    env = _env({"MLFLOW_TRACKING_URI": registry, "DVC_NO_ANALYTICS": "1"})
    mk = [str(BIN / "modelkeep"), "--registry", registry]
    scratch = project.parent / "register-scratch"
    rows: list[dict[str, object]] = []
    for kind, model in models.items():
        walls: dict[str, list[float]] = {"modelkeep": [], "dvc": [], "cp": []}
        cpus: dict[str, list[float]] = {"modelkeep": [], "dvc": [], "cp": []}
        vs_dvc, vs_cp = [], []
        tools = ["modelkeep", "dvc", "cp"] if with_peers else ["modelkeep"]
        for r in range(repeat):
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            _dvc_repo(scratch / "dvc", scratch / "dvc-remote", model, env)
            got: dict[str, tuple[float, float]] = {}
            for tool in tools[r % len(tools):] + tools[:r % len(tools)]:
                if tool == "modelkeep":
                    got[tool] = _timed([[*mk, "--store", str(scratch / "store"), "register",
                                         f"new-{kind.split()[0]}-{r}-{time.time_ns()}",
                                         str(model)]], project, env)
                elif tool == "dvc":
                    dvc = str(BIN / "dvc")
                    got[tool] = _timed([[dvc, "add", "-q", "model"], [dvc, "push", "-q"]],
                                       scratch / "dvc", env)
                else:
                    got[tool] = _timed([["cp", "-r", str(model), str(scratch / "cp")]],
                                       project, env)
            for tool, (wall, cpu) in got.items():
                walls[tool].append(wall)
                cpus[tool].append(cpu)
            if with_peers:
                vs_dvc.append(got["modelkeep"][0] / got["dvc"][0])
                vs_cp.append(got["modelkeep"][0] / (got["cp"][0] + CP_ALLOWANCE))
        shutil.rmtree(scratch, ignore_errors=True)
        row: dict[str, object] = {"model": kind,
                                  **{t: statistics.median(w) for t, w in walls.items() if w},
                                  **{f"{t}_cpu": statistics.median(c)
                                     for t, c in cpus.items() if c}}
        if with_peers:
            row["vs_dvc"] = statistics.median(vs_dvc)
            row["vs_cp"] = statistics.median(vs_cp)
        rows.append(row)
    return rows


def _project(root: Path, registry: str, versions: int) -> Path:
    project = root / "project"
    project.mkdir(parents=True)
    (project / "modelkeep.toml").write_text(f'store = "./store"\nregistry = "{registry}"\n')
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=project, check=True, env=_env())
    _populate(project, registry, versions)
    return project


def _analyze(database: str) -> None:
    """Table statistics, as PostgreSQL's autovacuum gathers them a minute after the tables were
    filled. A database without them (autovacuum off, as on a test machine) plans MLflow's
    version search as a nested loop over every tag of the model for each version: 5 s instead
    of 1.5 s for a thousand versions, which no server in use would show."""
    import psycopg2
    from tests.servers import POSTGRES

    conn = psycopg2.connect(dbname=database, connect_timeout=10, **POSTGRES)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("ANALYZE")
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-server", action="store_true",
                        help="skip the mlflow server on PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite default")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL",
                        help="measure only this command (its label in the table); repeatable")
    parser.add_argument("--register-mib", type=int, default=1024,
                        help="size of the models a new-version register is measured on "
                        "(0: skip)")
    parser.add_argument("--register-only", action="store_true",
                        help="measure only the new-version register (no read commands)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS-cli.md")
    args = parser.parse_args(argv)

    tables: dict[str, list[dict[str, object]]] = {}
    registers: dict[str, list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="mk-bench-cli-") as tmp:
        root = Path(tmp)
        models = _models(root / "models", args.register_mib) if args.register_mib else {}
        if not args.no_sqlite:
            started = time.perf_counter()
            db_file = root / "sqlite" / "project" / "mlflow.db"
            project = _project(root / "sqlite", f"sqlite:///{db_file}", args.versions)
            print(f"SQLite registry with {args.versions} versions ready "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
            if not args.register_only:
                tables["SQLite default"] = _measure(project, f"sqlite:///{db_file}",
                                                    args.repeat, True, args.only)
            if models:
                registers["SQLite default"] = _measure_register(
                    project, f"sqlite:///{db_file}", models, args.repeat, True)
        if not args.no_server:
            from tests.servers import create_database, start_mlflow_server

            database = create_database("postgresql")
            (root / "server").mkdir()
            server = start_mlflow_server(root / "server", database.uri)
            try:
                project = _project(root / "pg", server.url, args.versions)
                _analyze(database.name)
                if not args.register_only:
                    tables["mlflow server on PostgreSQL"] = _measure(
                        project, server.url, args.repeat, False, args.only)
                if models:
                    registers["mlflow server on PostgreSQL"] = _measure_register(
                        project, server.url, models, args.repeat, True)
            finally:
                server.process.stop()
                database.drop()
    _write(args.out, tables, args.versions, args.repeat, registers, args.register_mib)
    print(args.out.read_text())
    return 0


def _write(out: Path, tables: dict[str, list[dict[str, object]]], versions: int,
           repeat: int, registers: dict[str, list[dict[str, object]]] | None = None,
           register_mib: int = 0) -> None:
    lines = [
        "# Read commands, whole process (bench/cli.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}; one model with "
        f"{versions} versions; median of {repeat} runs each, and the median of the ratios to a "
        "`modelkeep --help` run right before each sample. Target: read commands <= 2x `--help`.",
        "",
    ]
    for title, rows in tables.items():
        lines += [f"## {title}", "", "| command | median | x `--help` (paired) |", "|---|---|---|"]
        for row in rows:
            lines.append(f"| `{row['command']}` | {row['median']:.2f} s | {row['ratio']:.2f}x |")
        lines.append("")
    for title, rows in (registers or {}).items():
        lines += [
            f"## `modelkeep register` of a new {register_mib} MiB version, whole process: "
            f"{title}", "",
            "Into an empty store; `dvc add` + `dvc push` to a local remote and `cp -r` of the same "
            "folder in the same rounds, interleaved. Targets: <= 0.3x DVC, <= 1.5x "
            f"(`cp` + {CP_ALLOWANCE} s).", "",
            "Wall time, then CPU time (user + system) in brackets.", "",
            "| model | modelkeep register | dvc add + push | cp -r | x DVC (paired) "
            "| x (`cp` + 0.3 s) (paired) |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['model']} | {row['modelkeep']:.2f} s ({row['modelkeep_cpu']:.2f} s) "
                f"| {row['dvc']:.2f} s ({row['dvc_cpu']:.2f} s) "
                f"| {row['cp']:.2f} s ({row['cp_cpu']:.2f} s) "
                f"| {row['vs_dvc']:.2f}x | {row['vs_cp']:.2f}x |")
        lines.append("")
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    if shutil.which("git") is None:
        raise SystemExit("bench/cli.py needs git")
    sys.exit(main())
