"""The command line: every command, --json output, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelkeep.cli.main import main
from tests.backends import unique_name
from tests.helpers import change_fraction, tensors, write_model


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    assert main(["init", "--registry", mlflow_sqlite_uri]) == 0
    return tmp_path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    capsys.readouterr()
    assert main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_init_writes_config_and_creates_store(project: Path) -> None:
    text = (project / "modelkeep.toml").read_text()
    assert 'store = ".modelkeep/store"' in text
    assert (project / ".modelkeep" / "store" / "modelkeep-store.json").is_file()
    assert main(["init"]) == 2  # refuses to overwrite


def test_full_cycle(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ts = tensors(n=10)
    src = write_model(project / "model", ts)
    name = unique_name()
    v1 = run_json(capsys, "register", name, str(src), "--tag", "lr=3e-4", "--alias",
                  "candidate", "-m", "first run")
    assert v1["version"] == 1 and v1["tags"]["lr"] == "3e-4" and v1["aliases"] == ["candidate"]
    changed_names = change_fraction(ts, 0.2)
    write_model(src, ts)
    v2 = run_json(capsys, "register", name, str(src), "--parent", f"{name}@1")
    assert v2["version"] == 2 and v2["bytes_added"] < v2["size"] * 0.4  # 2 tensors + new vocab
    assert v2["parents"][0]["version"] == 1

    again = run_json(capsys, "register", name, str(src))
    assert again["reused"] is True and again["version"] == 2

    models = run_json(capsys, "list")
    [model] = [m for m in models if m["name"] == name]
    # aliases: where each points, whichever version that is (candidate is on version 1)
    assert model["latest"] == 2 and model["aliases"] == {"candidate": 1}
    listed = run_json(capsys, "list", name)
    assert [v["version"] for v in listed["versions"]] == [1, 2] and not listed["truncated"]
    shown = run_json(capsys, "show", f"{name}@candidate")
    assert shown["version"] == 1 and shown["message"] == "first run"
    log = run_json(capsys, "log", name)
    assert [v["version"] for v in log["versions"]] == [2, 1]
    assert [(e["alias"], e["version"]) for e in log["alias_history"]] == [("candidate", 1)]
    d = run_json(capsys, "diff", f"{name}@1", f"{name}@2")
    [changed] = [f for f in d["files"] if f["path"] == "model.safetensors"]
    assert changed["status"] == "changed" and changed["tensors"]["changed"] == changed_names

    pulled = run_json(capsys, "pull", f"{name}@latest", str(project / "out"))
    assert pulled["files"] == 5
    assert (project / "out" / "model.safetensors").read_bytes() == (
        src / "model.safetensors").read_bytes()
    report = run_json(capsys, "verify")
    assert report["ok"] is True and report["snapshots"] == 2

    capsys.readouterr()
    assert main(["-q", "verify", f"{name}@1"]) == 0
    assert capsys.readouterr().out == ""

    # human output mentions what was added
    assert main(["register", name, str(src), "--force"]) == 0
    assert "added 0 B" in capsys.readouterr().out


def test_cat_streams_one_file(project: Path) -> None:
    src = write_model(project / "model", tensors(n=2))
    name = unique_name()
    assert main(["-q", "register", name, str(src)]) == 0
    out = subprocess.run([sys.executable, "-m", "modelkeep", "cat", name, "config.json"],
                         capture_output=True, cwd=project, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (src / "config.json").read_bytes()


def test_errors_are_one_line_with_exit_codes(project: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["register", "bad name", str(project)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid model name") and err.count("\n") == 1
    assert main(["show", "nosuch@3"]) == 3
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
    assert main(["register", "m", str(project / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["register", "m", str(project), "--tag", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_debug_env_shows_traceback(project: Path) -> None:
    env = {**os.environ, "MODELKEEP_DEBUG": "1"}
    out = subprocess.run([sys.executable, "-m", "modelkeep", "show", "nosuch@3"],
                         capture_output=True, text=True, cwd=project, env=env, timeout=120)
    assert out.returncode == 3 and "Traceback" in out.stderr and "error: " in out.stderr


def test_verify_exit_code_on_damage(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_model(project / "model", tensors(n=3), extra=False)
    name = unique_name()
    v = run_json(capsys, "register", name, str(src))
    store = project / ".modelkeep" / "store"
    [victim] = [p for p in (store / "chunks").rglob("*") if p.is_file()][:1]
    victim.chmod(0o644)
    blob = bytearray(victim.read_bytes())
    blob[-1] ^= 0xFF
    victim.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(["verify", f"{name}@{v['version']}"]) == 4  # type: ignore[index]
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "model.safetensors" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def _git_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    subprocess.run(["git", "init", "-q"], check=True)
    return tmp_path


def test_init_in_a_git_work_tree_keeps_store_and_registry_out_of_git(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    project = _git_project(tmp_path, monkeypatch)
    (project / ".gitignore").write_text("*.pyc\n/mlflow.db")  # one entry there, no newline
    assert main(["init"]) == 0
    out = capsys.readouterr().out
    assert "added /.modelkeep/store/ to" in out  # mlflow.db was listed already
    lines = (project / ".gitignore").read_text().splitlines()
    assert lines == ["*.pyc", "/mlflow.db", "/.modelkeep/store/"]
    # Registering writes the store and the registry file; git sees neither.
    model = write_model(project / "m", tensors(n=2))
    assert main(["register", unique_name(), str(model)]) == 0
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout
    assert ".modelkeep" not in status and "mlflow.db" not in status
    assert "modelkeep.toml" in status and "m/model.safetensors" in status
    # A second init (after removing the settings) adds nothing twice.
    (project / "modelkeep.toml").unlink()
    assert main(["init"]) == 0
    assert (project / ".gitignore").read_text().splitlines() == lines


def test_init_no_gitignore_and_outside_git(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    project = _git_project(tmp_path / "repo", monkeypatch)
    assert main(["init", "--no-gitignore"]) == 0
    assert not (project / ".gitignore").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    assert main(["init"]) == 0
    assert not (plain / ".gitignore").exists()  # not a git work tree: nothing to ignore


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    import modelkeep

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"modelkeep {modelkeep.__version__}"


def test_the_process_command_line_leaves_its_objects_to_the_exit(tmp_path: Path) -> None:
    """``main()`` run as the process's command line freezes the collector's generations before
    returning (the shutdown then skips walking every object); called with arguments, as a
    library or a test calls it, it leaves the collector alone."""
    import gc

    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
             "from modelkeep.cli.main import main\n"
             "sys.argv = ['modelkeep', '--version']\n"
             "sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("modelkeep ")
    assert int(out.stdout.split("frozen ")[1]) > 10_000
    before = gc.get_freeze_count()
    assert main(["--version"]) == 0
    assert gc.get_freeze_count() == before
