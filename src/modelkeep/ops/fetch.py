"""Reading by reference: a version's local, read-only folder through the shared read cache, and
pulls that link to it or copy from it.

The cache itself (layout, atomicity, concurrency) is :mod:`modelkeep.store.readcache`; this module
decides when it is used: not when the caller says ``cache=False``, nor for a store whose
``read_cache`` option is false (the cache holds plaintext, docs/loading.md). A fetch without the
cache materialises the version into a new private temporary folder, which the caller owns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.errors import Hint, InvalidInputError, Option
from modelkeep.ops._common import load, resolve, version_of
from modelkeep.store.readcache import ReadCache, clone_or_copy, link_or_copy

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.store import FileEntry, Snapshot, Store

Progress = Callable[[int], None]


@dataclass(frozen=True)
class FetchResult:
    """Where a fetched version is, and what fetching it cost."""

    name: str
    version: int
    path: Path
    downloaded_bytes: int  # bytes read from the store by this fetch
    linked_bytes: int  # bytes the cache already held
    snapshot_id: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "ref": self.ref,
                "snapshot_id": self.snapshot_id, "path": str(self.path),
                "downloaded_bytes": self.downloaded_bytes, "linked_bytes": self.linked_bytes}


def _uses_cache(store: Store, cache: bool) -> bool:
    return cache and store.read_cache


def fetch(
    keep: Keep, ref: str, *, cache: bool = True, progress: Progress | None = None
) -> FetchResult:
    """The version *ref* names as a local folder: the cache's read-only folder (the same one on
    every call, built once), or without the cache a new private folder of its own."""
    rv = resolve(keep, ref)
    store, snap, sid = load(keep, rv)
    if not _uses_cache(store, cache):
        dest = Path(tempfile.mkdtemp(prefix=f"modelkeep-{rv.name}-{rv.version}-"))
        try:
            store.materialize(snap, dest, overwrite=True, progress=progress)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return FetchResult(rv.name, rv.version, dest.resolve(), snap.size, 0, sid)
    got = store.fetch_cached(snap, progress=progress, ref=f"{rv.name}@{rv.version}")
    return FetchResult(rv.name, rv.version, got.path.resolve(), got.downloaded_bytes,
                       got.linked_bytes, sid)


def pull(
    keep: Keep,
    ref: str,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    link: bool = False,
    cache: bool = True,
) -> Path:
    """Materialise the version in *dest*. With *link*, its files are links into the cache
    (read-only; copies where *dest* is on another filesystem); otherwise private, writable
    copies, taken from the cache for the files it holds and from the store for the rest."""
    rv = resolve(keep, ref)
    store, snap, sid = load(keep, rv)
    use_cache = _uses_cache(store, cache)
    if link and not use_cache:
        raise InvalidInputError("a linked pull needs the read cache, which is off for this pull",
                                hint=Hint("drop {link} for a private copy, or {cache}",
                                          link=Option(api="link=True", cli="--link"),
                                          cache=Option(api="cache=False", cli="--no-cache")))
    place = _linker(store, snap) if link else _copier() if use_cache else None
    out = store.materialize(snap, dest, overwrite=overwrite, progress=progress, place=place)
    if keep.hook.modelkeep_after_pull.get_hookimpls():
        keep.hook.modelkeep_after_pull(version=version_of(rv, snap, sid), dest=out, keep=keep)
    return out


def _linker(store: Store, snap: Snapshot) -> Callable[[FileEntry, Path], bool]:
    folder = store.fetch_cached(snap).path

    def place(entry: FileEntry, target: Path) -> bool:
        link_or_copy(folder.joinpath(*entry.path.split("/")), target)
        return True

    return place


def _copier() -> Callable[[FileEntry, Path], bool]:
    rc = ReadCache()

    def place(entry: FileEntry, target: Path) -> bool:
        src = rc.cached_file(entry)
        if src is None:
            return False
        try:
            clone_or_copy(src, target)  # a reflink where the filesystem has them
        except FileNotFoundError:
            return False  # pruned meanwhile: fetched from the store instead
        os.chmod(target, entry.mode)
        return True

    return place
