"""Built-in default plugin ``modelkeep.git``: the git commit of the code a version came from.

On register it answers ``modelkeep_collect_lineage`` with a ``git`` section describing the
repository that contains the registered path (the working folder for a URL source):

``status``
    ``"ok"``, ``"not-a-repository"``, ``"git-missing"`` (no ``git`` executable) or ``"error"``.
``commit``
    ``HEAD``'s full hash, ``null`` before the first commit.
``branch`` / ``detached``
    The checked-out branch (``null`` when detached) and whether HEAD is detached.
``dirty``
    Tracked files differ from ``HEAD`` (untracked files do not count: the model being registered
    usually is one).
``remote``
    The URL of the branch's upstream remote, else ``origin``, else the first remote; user names,
    passwords and tokens removed. ``null`` without remotes.
``shallow``
    The clone is shallow (``git clone --depth``): the commit is exact, its history is not local.
``path``
    The registered path relative to the repository root (POSIX), ``null`` when outside it.

Three ``git`` calls, none of which walks history, so it stays fast on large repositories.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from modelkeep.hooks._markers import hookimpl

TIMEOUT = 10.0


class _GitFailed(Exception):
    pass


def _git(cwd: Path, *args: str) -> str:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock (and race a user's git).
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=TIMEOUT, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise _GitFailed(f"git {args[0]} took longer than {TIMEOUT:.0f} s") from exc
    if out.returncode != 0:
        raise _GitFailed(out.stderr.strip() or f"git {args[0]} failed")
    return out.stdout


def strip_credentials(url: str) -> str:
    """*url* without user name, password or query (tokens live there); scp-like ``user@host:path``
    addresses keep their user, which names an account, not a secret."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def existing_dir(path: Path) -> Path:
    """The nearest existing folder at or above *path*."""
    path = path.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def git_lineage(repo_dir: Path, source: Path | str | None = None) -> dict[str, Any]:
    """The ``git`` lineage section for the repository containing *repo_dir*."""
    cwd = existing_dir(repo_dir)
    try:
        top, shallow = _git(cwd, "rev-parse", "--show-toplevel",
                            "--is-shallow-repository").splitlines()[:2]
    except FileNotFoundError:
        return {"status": "git-missing"}
    except _GitFailed as exc:
        if "not a git repository" in str(exc).lower():
            return {"status": "not-a-repository"}
        return {"status": "error", "error": str(exc).splitlines()[0]}
    root = Path(top)
    try:
        status = _git(root, "status", "--porcelain=v2", "--branch", "--untracked-files=no",
                      "--ignore-submodules=dirty")
        remotes = _remotes(root)
    except _GitFailed as exc:
        return {"status": "error", "error": str(exc).splitlines()[0]}
    commit = branch = upstream = None
    dirty = False
    for line in status.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2]
            commit = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2]
            branch = None if head == "(detached)" else head
        elif line.startswith("# branch.upstream "):
            upstream = line.split(" ", 2)[2].split("/", 1)[0]
        elif line and not line.startswith("#"):
            dirty = True
    remote = None
    for name in (upstream, "origin", *sorted(remotes)):
        if name in remotes:
            remote = strip_credentials(remotes[name])
            break
    rel = None
    if isinstance(source, Path):
        try:
            rel = source.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = None
    return {
        "status": "ok",
        "commit": commit,
        "branch": branch,
        "detached": branch is None and commit is not None,
        "dirty": dirty,
        "remote": remote,
        "shallow": shallow.strip() == "true",
        "path": rel,
    }


def _remotes(root: Path) -> dict[str, str]:
    try:
        out = _git(root, "config", "--get-regexp", r"^remote\..*\.url$")
    except _GitFailed:
        return {}  # exit code 1: no remote configured
    remotes = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        remotes[key[len("remote."):-len(".url")]] = value
    return remotes


@hookimpl(trylast=True)
def modelkeep_collect_lineage(source: Path | str, repo_dir: Path) -> dict[str, Any]:
    return {"git": git_lineage(repo_dir, source)}


__all__ = ["existing_dir", "git_lineage", "strip_credentials"]
