"""Where a version's files are read from when they are not a local folder: any fsspec URL.

``register`` streams each file from the source filesystem into the store: the files are opened
one at a time and read sequentially by the ingest pipeline, so nothing is copied to local disk
first and memory stays bounded. This module lists the files (:func:`scan_fs`, :func:`scan_url`)
as :class:`~modelkeep.store.SourceFile` objects; the DVC adapter
(:mod:`modelkeep.plugins.dvc`) uses :func:`scan_fs` over ``dvc.api.DVCFileSystem``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, BinaryIO, cast

from modelkeep.errors import SourceError, UnsafePathError
from modelkeep.store import SourceFile, check_relpath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BLOCK = 4 << 20  # read-ahead per open file on remote filesystems; chunks are about this size


def is_url(text: str) -> bool:
    """True for ``scheme://…`` (a Windows drive path such as ``C:\\x`` is not a URL)."""
    return bool(_URL.match(text))


def scan_url(url: str, storage_options: Mapping[str, Any] | None = None) -> list[SourceFile]:
    """The files under *url* (a folder) or the file *url* names, on any fsspec filesystem."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {url!r}: {exc}",
                          hint="install the filesystem's package (s3fs, adlfs …)") from exc
    return scan_fs(fs, root, url)


def scan_fs(fs: Any, root: str, label: str) -> list[SourceFile]:
    """The files under *root* on fsspec filesystem *fs* (or the one file *root* names), sorted by
    path; *label* names the source in errors."""
    root = root.rstrip("/") or root
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise SourceError(f"{label!r} does not exist", hint="check the URL or path") from None
    if info.get("type") != "directory":
        name = root.rsplit("/", 1)[-1]
        return [_remote_file(fs, root, name, info)]
    found = fs.find(root, detail=True, withdirs=False)
    prefix = fs._strip_protocol(root).rstrip("/") + "/"
    files = []
    for path, item in sorted(found.items()):
        stripped = fs._strip_protocol(path)
        if not stripped.startswith(prefix):
            continue
        rel = stripped[len(prefix):]
        try:
            check_relpath(rel)
        except UnsafePathError:
            raise UnsafePathError(f"{label!r} holds a file with an unsafe name: {rel!r}",
                                  hint="rename it") from None
        files.append(_remote_file(fs, path, rel, item))
    if not files:
        raise SourceError(f"{label!r} has no files", hint="nothing to register")
    return files


def _remote_file(fs: Any, path: str, rel: str, info: Mapping[str, Any]) -> SourceFile:
    size = info.get("size")
    if not isinstance(size, int):
        size = _measure(fs, path, rel)
    mode = info.get("mode")
    mode = 0o755 if isinstance(mode, int) and mode & 0o111 else 0o644

    def opener() -> BinaryIO:
        return cast(BinaryIO, fs.open(path, "rb", block_size=_BLOCK))

    return SourceFile(rel, size, mode, opener)


def _measure(fs: Any, path: str, rel: str) -> int:
    """The size of a file whose listing has none (DVC lists files inside a tracked folder
    without sizes): seek to its end, which reads nothing on a seekable file."""
    try:
        with fs.open(path, "rb") as f:
            return int(f.seek(0, 2))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{rel!r} has no known size", hint="this filesystem cannot be read "
                          "as a model source") from exc


__all__ = ["is_url", "scan_fs", "scan_url"]
