"""Built-in default plugin ``modelkeep.pointers``: pointer files that tie git commits to versions.

A pointer file sits beside the folder (or file) it describes, named like it with ``.modelkeep``
added, the way DVC writes ``data.dvc`` beside ``data``: ``models/llm`` is described by
``models/llm.modelkeep``. It is small YAML, committed with the code, while the folder itself is
listed in the ``.gitignore`` beside it::

    # modelkeep pointer: `modelkeep checkout` makes llm match this version
    format: 1
    model: llm
    version: 3
    snapshot: 5c3f…   (64 hex characters)
    uri: modelkeep://file/srv/store/@5c3f…
    kind: folder      (or file)
    size: 1073741824
    files: 4

The URI (and the snapshot id in it) is authoritative: it resolves without the registry.
``model`` and ``version`` say which registry entry it was, for people and for the pre-push check.

Comparing the workspace with a pointer costs a ``stat`` per file when nothing changed: the file
digest of each file (modelkeep's BLAKE3 of its chunk list, as in the snapshot) is remembered in a
cache in the git folder keyed by path, size, mtime and inode, and recomputed (one local read, no
download) only when those change. Checkout writes only the files whose digest differs.

The plugin's hook updates the pointer beside a registered path when the model matches, so
``modelkeep register llm models/llm`` after training moves ``models/llm.modelkeep`` forward.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.errors import (
    DirtyWorkspaceError,
    Hint,
    InvalidInputError,
    ModelkeepError,
    NotFoundError,
    Option,
)
from modelkeep.hooks._markers import hookimpl

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.store import FileEntry, Snapshot, Store

SUFFIX = ".modelkeep"
FORMAT = 1
_KEYS = ("format", "model", "version", "snapshot", "uri", "kind", "size", "files")


@dataclass(frozen=True)
class Pointer:
    """One pointer file."""

    file: Path
    name: str  # the model's (the file's own key is ``model``)
    version: int
    snapshot_id: str
    uri: str
    kind: str  # "folder" or "file"
    size: int
    files: int

    @property
    def target(self) -> Path:
        return self.file.with_name(self.file.name[: -len(SUFFIX)])

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def text(self) -> str:
        name = self.target.name
        return (
            f"# modelkeep pointer: `modelkeep checkout` makes {name} match this version\n"
            f"format: {FORMAT}\n"
            f"model: {self.name}\n"
            f"version: {self.version}\n"
            f"snapshot: {self.snapshot_id}\n"
            f"uri: {self.uri}\n"
            f"kind: {self.kind}\n"
            f"size: {self.size}\n"
            f"files: {self.files}\n"
        )

    def to_json(self) -> dict[str, Any]:
        # The --json names (docs/json.md); the pointer file itself keeps its own (_KEYS).
        return {"pointer": str(self.file), "path": str(self.target), "name": self.name,
                "version": self.version, "ref": self.ref, "snapshot_id": self.snapshot_id,
                "uri": self.uri, "kind": self.kind, "size": self.size, "files": self.files}


def pointer_file(target: Path) -> Path:
    """The pointer file describing *target*."""
    if target.name.endswith(SUFFIX):
        return target
    return target.with_name(target.name + SUFFIX)


def read_pointer(file: Path) -> Pointer:
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise NotFoundError(f"no pointer file {str(file)!r}",
                            hint="create it with `modelkeep track NAME PATH`") from None
    return parse_pointer(text, file)


def parse_pointer(text: str, file: Path) -> Pointer:
    """The pointer in *text*, which is (or was, at some commit) the content of *file*."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"pointer file {str(file)!r} is not valid YAML: {exc}",
                                hint="restore it from git") from None
    if not isinstance(data, dict) or any(k not in data for k in _KEYS):
        raise InvalidInputError(f"pointer file {str(file)!r} is malformed",
                                hint="restore it from git")
    if data["format"] != FORMAT:
        raise InvalidInputError(f"pointer file {str(file)!r} has format {data['format']}",
                                hint="upgrade modelkeep")
    if data["kind"] not in ("folder", "file"):
        raise InvalidInputError(f"pointer file {str(file)!r} has an unknown kind")
    return Pointer(file, str(data["model"]), int(data["version"]), str(data["snapshot"]),
                   str(data["uri"]), str(data["kind"]), int(data["size"]), int(data["files"]))


def write_pointer(target: Path, version: ModelVersion, kind: str) -> Pointer:
    pointer = Pointer(pointer_file(target).absolute(), version.name, version.version,
                      version.snapshot_id, version.uri, kind, version.size, len(version.files))
    tmp = pointer.file.with_name(f".{pointer.file.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(pointer.text())
    os.replace(tmp, pointer.file)
    _gitignore(pointer.target)
    return pointer


def _gitignore(target: Path) -> None:
    """List *target* in the ``.gitignore`` beside it (as ``dvc add`` does), once."""
    ignore = target.parent / ".gitignore"
    line = f"/{target.name}"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    if line not in lines:
        with open(ignore, "a") as f:
            if lines and not ignore.read_text().endswith("\n"):
                f.write("\n")
            f.write(line + "\n")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=False, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def find_pointers(start: Path, paths: Sequence[Path] = ()) -> list[Pointer]:
    """The pointers for *paths* (targets or pointer files), or every pointer of the git work tree
    containing *start* (tracked or not ignored), else under *start*."""
    if paths:
        return [read_pointer(pointer_file(Path(p).absolute())) for p in paths]
    root_out = _git(start, "rev-parse", "--show-toplevel")
    if root_out is not None:
        root = Path(root_out.strip())
        listed = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                      "--", f":(glob)**/*{SUFFIX}")
        if listed is not None:
            names = sorted({n for n in listed.split("\0") if n})
            return [read_pointer(root / n) for n in names if (root / n).is_file()]
    found: list[Path] = []
    for folder, dirs, files in os.walk(start):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files) if f.endswith(SUFFIX))
    return [read_pointer(f.absolute()) for f in found]


def pointers_at(start: Path, rev: str) -> list[Pointer]:
    """Every pointer file in commit *rev* of the git repository containing *start*, read from
    git's objects (the pre-push check looks at what is pushed, not at the work tree)."""
    root_out = _git(start, "rev-parse", "--show-toplevel")
    if root_out is None:
        raise InvalidInputError("not inside a git repository", hint="run it in the work tree")
    root = Path(root_out.strip())
    # ls-tree takes no glob pathspecs: list the tree (fast, from objects) and filter here.
    listed = _git(root, "ls-tree", "-r", "-z", "--name-only", rev)
    if listed is None:
        raise NotFoundError(f"no commit {rev!r} in {str(root)!r}", hint="check the revision")
    out = []
    for name in sorted(n for n in listed.split("\0") if n.endswith(SUFFIX)):
        text = _git(root, "show", f"{rev}:{name}")
        if text is not None:
            out.append(parse_pointer(text, root / name))
    return out


# -- comparing the workspace with a pointer --------------------------------------------------------


def chunk_list(path: Path, relpath: str, store: Store | None = None) -> list[tuple[str, int]]:
    """The chunks a store would cut *path* into, hashed (with *store*'s ids: an encrypted store's
    are keyed), without storing anything: the store's own cutting (``store.chunk_list``)."""
    from modelkeep.store import chunk_list as cut

    return cut(path, relpath, store.object_id if store is not None else None)


class DigestCache:
    """File digests of workspace files by (size, mtime, inode), kept in the git folder."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:
                self.entries = {}

    @classmethod
    def near(cls, start: Path) -> DigestCache:
        out = _git(start, "rev-parse", "--absolute-git-dir")
        if out is None:
            return cls(None)
        return cls(Path(out.strip()) / "modelkeep" / "digests.json")

    @staticmethod
    def _key(st: os.stat_result) -> list[Any]:
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    @staticmethod
    def _ns(store: Store | None) -> str:
        # Digests depend on the store's ids (keyed in an encrypted store): one remembered for
        # another id scheme is not reused. The id of no bytes names the scheme.
        return "" if store is None or not store.encrypted else store.object_id(b"")[:16]

    def digest(self, path: Path, relpath: str, store: Store | None = None) -> str:
        from modelkeep.store.snapshot import file_digest

        st = path.stat()
        ns = self._ns(store)
        cached = self.entries.get(str(path))
        if cached is not None and cached[:3] == self._key(st) and \
                (cached[4] if len(cached) > 4 else "") == ns:
            return str(cached[3])
        digest = file_digest(chunk_list(path, relpath, store))
        self.remember(path, digest, store)
        return digest

    def remember(self, path: Path, digest: str, store: Store | None = None) -> None:
        ns = self._ns(store)
        self.entries[str(path)] = [*self._key(path.stat()), digest, *([ns] if ns else [])]
        self.changed = True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        live = {k: v for k, v in self.entries.items() if Path(k).exists()}
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(live))
        os.replace(tmp, self.path)
        self.changed = False


@dataclass
class PointerState:
    """How the workspace differs from one pointer."""

    pointer: Pointer
    missing: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def status(self) -> str:
        if self.modified or self.extra:
            return "modified"
        if self.missing:
            return "missing" if not self.unchanged else "modified"
        return "ok"

    def to_json(self) -> dict[str, Any]:
        return {**self.pointer.to_json(), "status": self.status, "missing": self.missing,
                "modified": self.modified, "extra": self.extra, "unchanged": self.unchanged}


def _local_path(pointer: Pointer, relpath: str) -> Path:
    if pointer.kind == "file":
        return pointer.target
    return pointer.target.joinpath(*relpath.split("/"))


def _local_files(pointer: Pointer) -> Iterator[str]:
    target = pointer.target
    if not target.is_dir():
        return
    for folder, dirs, files in os.walk(target):
        dirs.sort()
        rel = Path(folder).relative_to(target).as_posix()
        for f in sorted(files):
            yield f if rel == "." else f"{rel}/{f}"


def _matches(entry: FileEntry, path: Path, cache: DigestCache, store: Store | None) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
        return False
    if bool(st.st_mode & 0o111) != bool(entry.mode & 0o111):
        return False
    return cache.digest(path, entry.path, store) == entry.digest


def compare(snapshot: Snapshot, pointer: Pointer, cache: DigestCache,
            store: Store | None = None) -> PointerState:
    state = PointerState(pointer)
    expected = {f.path: f for f in snapshot.files}
    for rel, entry in expected.items():
        local = _local_path(pointer, rel)
        if not local.exists():
            state.missing.append(rel)
        elif _matches(entry, local, cache, store):
            state.unchanged += 1
        else:
            state.modified.append(rel)
    if pointer.kind == "folder":  # a file pointer's one file is the target, whatever its name
        state.extra = [rel for rel in _local_files(pointer) if rel not in expected]
    return state


def status(keep: Keep, pointers: Sequence[Pointer]) -> list[PointerState]:
    if not pointers:
        return []
    cache = DigestCache.near(pointers[0].file.parent)
    try:
        return [compare(snap, p, cache, store)
                for p in pointers for store, snap in [keep.snapshot_at(p.uri)]]
    finally:
        cache.save()


# -- checkout --------------------------------------------------------------------------------------


def _stored(store: Store, path: Path, relpath: str) -> bool:
    """Whether every chunk of the local file *path* is in *store* (then overwriting loses
    nothing: some version holds it, or held it)."""
    return all(store.has_chunk(cid) for cid, _n in chunk_list(path, relpath, store))


def checkout(keep: Keep, pointers: Sequence[Pointer], *, force: bool = False
             ) -> list[PointerState]:
    """Make each pointer's target match its version, writing only files that differ.

    Local content that differs and is not in the store (work not registered yet) is not
    overwritten without *force*: :class:`DirtyWorkspaceError`, nothing changed for that pointer.
    """
    if not pointers:
        return []
    cache = DigestCache.near(pointers[0].file.parent)
    results = []
    try:
        for pointer in pointers:
            store, snap = keep.snapshot_at(pointer.uri)
            state = compare(snap, pointer, cache, store)
            if state.status != "ok":
                _apply(store, snap, pointer, state, cache, force)
            results.append(state)
    finally:
        cache.save()
    return results


def _apply(store: Store, snap: Snapshot, pointer: Pointer, state: PointerState,
           cache: DigestCache, force: bool) -> None:
    if not force:
        for rel in state.modified + state.extra:
            local = _local_path(pointer, rel)
            if local.is_file() and not _stored(store, local, rel):
                raise DirtyWorkspaceError(
                    f"{str(local)!r} has changes that are in no stored version",
                    hint=Hint(f"register them (`modelkeep register {pointer.name} "
                              f"{pointer.target}`) or pass {{force}} to discard them",
                              force=Option(api="force=True", cli="--force")))
    # The store (fsspec among it) is imported when a pointer is applied: the plugin manager
    # loads this module for every command, `modelkeep --help` among them.
    from modelkeep.store.materialize import safe_join

    # The workspace exists and is the user's: a folder in it may be a link leading out. Every
    # path is checked before anything changes.
    writes = {rel: pointer.target if pointer.kind == "file" else safe_join(pointer.target, rel)
              for rel in state.missing + state.modified}
    target = pointer.target
    if pointer.kind == "folder" and target.exists() and not target.is_dir():
        target.unlink()
    for rel in state.extra:
        _local_path(pointer, rel).unlink()
    if pointer.kind == "folder":
        # Bottom-up, so a folder emptied by removing its empty subfolders goes too.
        for folder, _dirs, _files in os.walk(target, topdown=False):
            if folder != str(target) and not os.listdir(folder):
                os.rmdir(folder)
    entries = {f.path: f for f in snap.files}
    for rel in state.missing + state.modified:
        entry = entries[rel]
        local = writes[rel]
        if local.is_dir():
            shutil.rmtree(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.modelkeep-{uuid.uuid4().hex[:8]}")
        try:
            with store.open_file(snap, rel) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 4 << 20)
            tmp.chmod(entry.mode)
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        cache.remember(local, entry.digest, store)


# -- tracking --------------------------------------------------------------------------------------


def track(keep: Keep, name_or_ref: str, target: Path) -> Pointer:
    """Point *target* at a version and write its pointer file.

    ``NAME@REF`` points at that version and materialises it at *target*. ``NAME`` alone
    registers *target* (reusing the newest version when identical) when it exists, else points
    at the newest version and materialises it.
    """
    from modelkeep.refs import parse_ref

    target = target.absolute()
    ref = parse_ref(name_or_ref)
    explicit = "@" in name_or_ref
    if not explicit and target.exists():
        version = keep.register(ref.name, target)
    else:
        version = keep.get(name_or_ref)
    kind = "file" if target.is_file() or (not target.exists() and _one_file(version, target)
                                          ) else "folder"
    pointer = write_pointer(target, version, kind)
    checkout(keep, [pointer])
    return pointer


def _one_file(version: ModelVersion, target: Path) -> bool:
    """Whether a version materialises as the file *target* rather than a folder: it holds one
    file, at its root, with *target*'s name or at least its extension (``.safetensors``)."""
    if len(version.files) != 1 or "/" in version.files[0].path:
        return False
    name = version.files[0].path
    return name == target.name or (bool(target.suffix) and Path(name).suffix == target.suffix)


@hookimpl
def modelkeep_after_register(version: ModelVersion, source: Path | str) -> None:
    """Move the pointer beside the registered path forward, when it names this model."""
    if not isinstance(source, Path):
        return
    file = pointer_file(source.absolute())
    if not file.is_file():
        return
    try:
        current = read_pointer(file)
    except ModelkeepError:
        return  # a damaged pointer is reported by status/checkout, not by a registration
    if current.name == version.name:
        write_pointer(source.absolute(), version, current.kind)


__all__ = [
    "SUFFIX",
    "DigestCache",
    "Pointer",
    "PointerState",
    "checkout",
    "find_pointers",
    "parse_pointer",
    "pointer_file",
    "pointers_at",
    "read_pointer",
    "status",
    "track",
    "write_pointer",
]
