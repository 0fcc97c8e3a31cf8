"""Built-in default plugin ``modelkeep.dvc``: the DVC data versions a version was trained on.

On register it answers ``modelkeep_collect_lineage`` with a ``dvc`` section read straight from
the DVC project that contains the registered path (the working folder for a URL source). Files
are read as YAML; DVC itself is not imported (it takes seconds to import), so capture costs
milliseconds. The section (also in docs/format.md §5.2.2):

``status``
    ``"ok"``, ``"not-a-repository"`` (no ``.dvc/`` folder above) or ``"error"``.
``remote`` / ``remote_name``
    The default remote's URL (``.dvc/config``, overridden by ``config.local``), credentials
    removed, and its name.
``stages``
    Every ``dvc.lock`` stage, as ``"train"`` or ``"sub/dir/dvc.yaml:train"``: ``cmd``, ``deps``,
    ``outs`` (``path``, ``hash``, ``md5``/``etag``/``checksum``, ``size``, ``nfiles`` as DVC wrote
    them) and ``params``.
``files``
    Every ``.dvc`` file, by path: its ``outs`` (and ``deps`` for imports), entries as above.
``params``
    The values in the project's ``params.yaml``.
``metrics``
    Every metrics file ``dvc.yaml`` declares (top-level ``metrics`` and stage ``metrics`` outs),
    by path, with its values.

Paths are relative to the DVC project root, as DVC writes them. Snapshots hold no floating-point
numbers, so non-integer numbers (learning rates, accuracies) are recorded as their shortest
decimal text (``"0.001"``).

The module also reads a DVC-tracked path at a git revision (:func:`dvc_sources`), through
``dvc.api.DVCFileSystem``, for ``modelkeep register --rev``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from modelkeep.errors import Hint, MissingExtraError, Option, SourceError
from modelkeep.hooks._markers import hookimpl
from modelkeep.plugins.git import existing_dir, strip_credentials

METRICS_MAX = 1 << 20  # a metrics file larger than this is not metrics; leave it out
WALK_MAX = 20_000  # folders visited looking for DVC files outside git; beyond, stop and say so
_ENTRY_KEYS = ("path", "hash", "md5", "etag", "checksum", "size", "nfiles", "isexec", "repo")
_SECTION = re.compile(r"^\s*\[+\s*'?(?P<name>[^\]']*?)'?\s*\]+\s*$")
_PRUNE = {".git", ".dvc", "node_modules", "__pycache__", ".venv", "venv"}


def find_root(start: Path) -> Path | None:
    """The DVC project containing *start*: the nearest folder at or above holding ``.dvc/``."""
    here = existing_dir(start)
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _yaml() -> Any:
    import yaml

    return yaml


def _load_yaml(data: bytes) -> Any:
    yaml = _yaml()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster when present
    return yaml.load(data, Loader=loader)


class _WorkTree:
    """The DVC project's files as they are on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> tuple[list[str], bool]:
        return _dvc_files(self.root)

    def read(self, rel: str, limit: int | None = None) -> bytes | None:
        path = self.root / rel
        try:
            if not path.is_file() or (limit is not None and path.stat().st_size > limit):
                return None
            return path.read_bytes()
        except OSError:
            return None


class _Revision:
    """The DVC project's files at a git revision, read from git's objects."""

    def __init__(self, root: Path, rev: str) -> None:
        self.root, self.rev = root, rev

    def _git(self, *args: str) -> bytes | None:
        out = subprocess.run(["git", *args], cwd=self.root, capture_output=True, timeout=30,
                             check=False)
        return out.stdout if out.returncode == 0 else None

    def names(self) -> tuple[list[str], bool]:
        # Run in the project's folder, ls-tree lists that folder, with paths relative to it.
        listed = self._git("ls-tree", "-r", "-z", "--name-only", self.rev) or b""
        names = [n for n in listed.decode("utf-8", "replace").split("\0")
                 if n.endswith(".dvc") or n.rpartition("/")[2] in ("dvc.lock", "dvc.yaml")]
        return sorted(names), True

    def read(self, rel: str, limit: int | None = None) -> bytes | None:
        if rel.startswith(".dvc/config"):
            return _WorkTree(self.root).read(rel, limit)  # config.local is never committed
        data = self._git("show", f"{self.rev}:./{rel}")
        if data is None or (limit is not None and len(data) > limit):
            return None
        return data


def plain(value: Any) -> Any:
    """*value* as JSON a snapshot can hold: floats (and dates) become text."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _entry(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping) or "path" not in raw:
        return None
    return {k: plain(raw[k]) for k in _ENTRY_KEYS if k in raw}


def _entries(raw: Any) -> list[dict[str, Any]]:
    return [e for e in map(_entry, raw or []) if e is not None] if isinstance(raw, list) else []


def read_config(tree: Any) -> tuple[str | None, str | None]:
    """(default remote name, its URL) from ``.dvc/config`` and ``.dvc/config.local``."""
    sections: dict[str, dict[str, str]] = {}
    for name in ("config", "config.local"):
        raw = tree.read(f".dvc/{name}")
        if raw is None:
            continue
        current: dict[str, str] | None = None
        for line in raw.decode("utf-8", "replace").splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", ";")):
                continue
            m = _SECTION.match(stripped)
            if m:
                current = sections.setdefault(" ".join(m.group("name").split()), {})
            elif current is not None and "=" in stripped:
                key, _, value = stripped.partition("=")
                current[key.strip()] = value.strip().strip("'\"")
    remote = sections.get("core", {}).get("remote")
    if remote is None:
        return None, None
    url = sections.get(f'remote "{remote}"', {}).get("url")
    return remote, strip_credentials(url) if url else None


def _dvc_files(root: Path) -> tuple[list[str], bool]:
    """Paths (relative to *root*, POSIX) of every ``.dvc``, ``dvc.lock`` and ``dvc.yaml`` file,
    and whether the listing is complete.

    Inside git, the index answers (``git ls-files``, tracked and untracked-but-not-ignored
    files) without walking data folders DVC keeps out of git; elsewhere, a bounded walk.
    """
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
             ":(glob)**/*.dvc", ":(glob)**/dvc.lock", ":(glob)**/dvc.yaml"],
            cwd=root, capture_output=True, timeout=10, check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
        if out.returncode == 0:
            names = sorted({p for p in out.stdout.decode("utf-8", "replace").split("\0") if p})
            return names, True
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pass
    found: list[str] = []
    for visited, (folder, dirs, files) in enumerate(os.walk(root), 1):
        if visited > WALK_MAX:
            return sorted(found), False
        dirs[:] = sorted(d for d in dirs if d not in _PRUNE and not d.startswith("."))
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        found.extend(prefix + f for f in files
                     if f.endswith(".dvc") or f in ("dvc.lock", "dvc.yaml"))
    return sorted(found), True


def _stage_name(file: str, stage: str) -> str:
    folder = file.rpartition("/")[0]
    return f"{folder}/dvc.yaml:{stage}" if folder else stage


def _metrics_paths(dvc_yaml: Any, folder: str) -> Iterator[str]:
    if not isinstance(dvc_yaml, Mapping):
        return
    prefix = f"{folder}/" if folder else ""
    for item in dvc_yaml.get("metrics") or []:
        if isinstance(item, str):
            yield prefix + item
    for stage in (dvc_yaml.get("stages") or {}).values():
        if not isinstance(stage, Mapping):
            continue
        for item in stage.get("metrics") or []:
            if isinstance(item, str):
                yield prefix + item
            elif isinstance(item, Mapping):
                yield from (prefix + str(k) for k in item)


def dvc_lineage(repo_dir: Path) -> dict[str, Any]:
    """The ``dvc`` lineage section for the DVC project containing *repo_dir*."""
    root = find_root(repo_dir)
    if root is None:
        return {"status": "not-a-repository"}
    return _lineage_of(_WorkTree(root))


def dvc_lineage_at(root: Path, rev: str) -> dict[str, Any]:
    """The ``dvc`` lineage section of the DVC project at *root* as of git revision *rev*."""
    return _lineage_of(_Revision(root, rev))


def _lineage_of(tree: Any) -> dict[str, Any]:
    try:
        return _read_project(tree)
    except Exception as exc:  # a broken file must not stop a registration; record what failed
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def _read_project(tree: Any) -> dict[str, Any]:
    remote_name, remote = read_config(tree)
    names, complete = tree.names()
    stages: dict[str, Any] = {}
    files: dict[str, Any] = {}
    metrics_paths: list[str] = []
    for name in names:
        raw = tree.read(name)
        if raw is None:
            continue  # listed by git but deleted in the working tree
        base = name.rpartition("/")[2]
        data = _load_yaml(raw)
        if not isinstance(data, Mapping):
            continue
        if base == "dvc.lock":
            for stage, body in (data.get("stages") or {}).items():
                if not isinstance(body, Mapping):
                    continue
                entry: dict[str, Any] = {"cmd": plain(body.get("cmd")),
                                         "deps": _entries(body.get("deps")),
                                         "outs": _entries(body.get("outs"))}
                if body.get("params"):
                    entry["params"] = plain(body["params"])
                stages[_stage_name(name, str(stage))] = entry
        elif base == "dvc.yaml":
            metrics_paths.extend(_metrics_paths(data, name.rpartition("/")[0]))
        else:
            record: dict[str, Any] = {"outs": _entries(data.get("outs"))}
            if data.get("deps"):
                record["deps"] = _entries(data.get("deps"))
            files[name] = record
    params: dict[str, Any] = {}
    raw_params = tree.read("params.yaml")
    if raw_params is not None:
        loaded = _load_yaml(raw_params)
        params = plain(loaded) if isinstance(loaded, Mapping) else {}
    metrics = {}
    for rel in sorted(set(metrics_paths)):
        raw = tree.read(rel, METRICS_MAX)
        if raw is not None:
            try:
                metrics[rel] = plain(_load_yaml(raw))
            except Exception:  # JSON and YAML parse here; anything else is not recorded
                continue
    section: dict[str, Any] = {
        "status": "ok",
        "remote": remote,
        "remote_name": remote_name,
        "stages": stages,
        "files": files,
        "params": params,
        "metrics": metrics,
    }
    if not complete:
        section["incomplete"] = True
    return section


@hookimpl(trylast=True)
def modelkeep_collect_lineage(repo_dir: Path) -> dict[str, Any]:
    return {"dvc": dvc_lineage(repo_dir)}


# -- reading a DVC-tracked path at a revision -----------------------------------------------------


def dvc_sources(path: str, repo: str | None, rev: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The files of DVC-tracked *path* in *repo* (a local folder or git URL; default: the
    project around the working folder) at git revision *rev*, streamed from the DVC cache or
    remote; and the lineage describing that origin (a ``source`` section, and a ``git`` section
    naming the revision's commit)."""
    try:
        from dvc.api import DVCFileSystem
    except ImportError:
        raise MissingExtraError("dvc", "dvc") from None
    from modelkeep.sources import scan_fs

    repo_arg = repo or str(find_root(Path.cwd()) or Path.cwd())
    try:
        fs = DVCFileSystem(repo_arg, rev=rev)
        # The repository opens lazily; open it here so that a bad --repo or --rev is reported
        # as such. get_rev(): the revision's commit, not the work tree's HEAD.
        commit = fs.repo.get_rev()
    except Exception as exc:
        raise SourceError(f"cannot open DVC repository {repo_arg!r} at {rev or 'HEAD'!r}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          hint=Hint("check {repo} and {rev}", repo=Option(api="repo", cli="--repo"),
                                    rev=Option(api="rev", cli="--rev"))) from None
    label = f"{path} at {rev or 'HEAD'}"
    # At a revision DVC's own root_dir is virtual ("/"): read git from the real folder, the
    # project's for a local repository, the temporary clone's for a URL.
    local = None if "://" in repo_arg else find_root(Path(repo_arg))
    project = local or Path(fs.repo.scm.root_dir)
    data = dvc_lineage_at(project, commit) if commit else None
    sources = scan_fs(fs, path.strip("/") or "/", label)
    origin = repo_arg if "://" not in repo_arg else strip_credentials(repo_arg)
    lineage = {
        "source": {"type": "dvc", "repo": origin, "rev": rev, "commit": commit, "path": path},
        "git": {"status": "ok", "commit": commit, "branch": None, "detached": True,
                "dirty": False, "remote": origin if "://" in origin else None,
                "shallow": False, "path": path},
    }
    if data is not None:
        lineage["dvc"] = data
    return sources, lineage


__all__ = ["dvc_lineage", "dvc_lineage_at", "dvc_sources", "find_root", "plain", "read_config"]
