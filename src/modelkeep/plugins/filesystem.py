"""The ``modelkeep://`` fsspec filesystem: a version's files, read lazily, chunk by chunk.

Registered through the ``fsspec.specs`` entry point, so ``fsspec.open("modelkeep://…/@ID/f")``
works wherever modelkeep is installed. The URI grammar is the one MLflow sees as a version's
source (docs/format.md §6): ``modelkeep://PROTOCOL/STORE-PATH/@SNAPSHOT-ID[/FILE]``. Opening a
file fetches nothing; each read fetches, verifies and caches only the chunks it overlaps, so one
tensor of a large safetensors file on S3 costs about that tensor's bytes.

Versions are immutable, so the filesystem is read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem

from modelkeep.errors import NotFoundError
from modelkeep.plugins.versions import open_version
from modelkeep.store import parse_uri

if TYPE_CHECKING:
    from modelkeep.plugins.versions import VersionView
    from modelkeep.store import SnapshotFile

SCHEME = "modelkeep"


class ModelkeepFileSystem(AbstractFileSystem):
    """Read-only view of modelkeep versions (see the module docstring)."""

    protocol = SCHEME
    root_marker = ""

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):  # fsspec passes lists through here too
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith(f"{SCHEME}://"):
            path = path[len(SCHEME) + 3 :]
        return path.rstrip("/")

    def _view(self, path: str) -> VersionView:
        try:
            return open_version(f"{SCHEME}://{self._strip_protocol(path)}")
        except NotFoundError as exc:
            raise FileNotFoundError(str(exc)) from exc

    def _full(self, view: VersionView, rel: str) -> str:
        return f"{view.store.location.locator}/@{view.snapshot_id}" + (f"/{rel}" if rel else "")

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        view = self._view(path)
        entry = view.snapshot.file(view.path)
        if entry is not None:
            return {"name": self._full(view, view.path), "size": entry.size, "type": "file",
                    "mode": entry.mode, "digest": entry.digest}
        if view.is_dir(view.path):
            return {"name": self._full(view, view.path), "size": 0, "type": "directory"}
        raise FileNotFoundError(f"no file or folder {view.path!r} in this version")

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        view = self._view(path)
        if view.snapshot.file(view.path) is not None:
            entries = [self.info(path)]
        elif view.is_dir(view.path):
            entries = [
                {"name": self._full(view, rel), "size": e.size if e else 0,
                 "type": "file" if e else "directory"}
                for rel, e in view.children(view.path)
            ]
        else:
            raise FileNotFoundError(f"no file or folder {view.path!r} in this version")
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> SnapshotFile:
        if mode != "rb":
            raise PermissionError("modelkeep versions are immutable: open them for reading ('rb')")
        view = self._view(path)
        entry = view.snapshot.file(view.path)
        if entry is None:
            raise FileNotFoundError(f"no file {view.path!r} in this version")
        return view.store.open_entry(entry)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        with self._open(path) as f:
            size = f.entry.size
            start = 0 if start is None else (start if start >= 0 else max(0, size + start))
            end = size if end is None else (end if end >= 0 else max(0, size + end))
            f.seek(start)
            return f.read(max(0, min(end, size) - start))

    def ukey(self, path: str) -> str:
        # Content-addressed: the snapshot id and path identify the bytes forever.
        parsed = parse_uri(f"{SCHEME}://{self._strip_protocol(path)}")
        return f"{parsed.snapshot_id}/{parsed.path or ''}"

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("modelkeep versions are immutable; register a new version instead")

    mkdir = makedirs = rm = rm_file = rmdir = mv = cp_file = pipe_file = put_file = touch = (
        _readonly
    )
