"""Real git and DVC repositories in temporary folders, for the lineage and pointer tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "DVC_NO_ANALYTICS": "1",
    "DVC_NO_UPDATER": "1",
}


def env(**extra: str) -> dict[str, str]:
    """The environment for git, dvc and modelkeep subprocesses: test identities, our venv first
    on PATH (so hooks find ``dvc``), no system git config."""
    out = {**os.environ, **ENV, **extra}
    out["PATH"] = f"{BIN}{os.pathsep}{out.get('PATH', '')}"
    return out


def run_result(cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=env(**extra), capture_output=True, text=True,
                          check=False)


def run(cwd: Path, *args: str, check: bool = True, **extra: str) -> str:
    out = run_result(cwd, *args, **extra)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n"
                             f"{out.stderr}")
    return out.stdout


def git(cwd: Path, *args: str, check: bool = True) -> str:
    return run(cwd, "git", *args, check=check)


def dvc(cwd: Path, *args: str, check: bool = True, **extra: str) -> str:
    return run(cwd, str(BIN / "dvc"), *args, check=check, **extra)


def init_git(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "commit.gpgsign", "false")
    return path


def commit(path: Path, message: str) -> str:
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return git(path, "rev-parse", "HEAD").strip()


def head(path: Path) -> str:
    return git(path, "rev-parse", "HEAD").strip()
