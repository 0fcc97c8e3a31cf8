"""Scanning files for what plugins find in them (``modelkeep_scan_file``): the files being
registered, or a registered version's files read through the store."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelkeep.errors import InvalidInputError
from modelkeep.hooks import Finding
from modelkeep.ops._common import load, resolve

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.store import Snapshot, Store


@dataclass(frozen=True)
class _StoredSource:
    """A stored file presented to scanners like a file being registered."""

    relpath: str
    size: int
    open: Callable[[], Any]


def scan_sources(keep: Keep, name: str, sources: Sequence[Any]) -> list[Finding]:
    caller = keep.hook.modelkeep_scan_file
    if not caller.get_hookimpls():  # spare a call per file when no scanner is installed
        return []
    findings: list[Finding] = []
    for src in sources:
        for answer in caller(name=name, path=src.relpath, size=src.size, opener=src.open):
            findings.extend(answer or ())
    for f in findings:
        if not isinstance(f, Finding):
            raise InvalidInputError(f"a scanner returned {f!r}, not a Finding",
                                    hint="return modelkeep.hooks.Finding objects")
    return findings


def scan(keep: Keep, ref: str) -> list[Finding]:
    """The findings of every ``modelkeep_scan_file`` plugin over a registered version's
    files, read through the store (only the chunks a scanner reads are fetched): what a
    register of the same files would get, without trusting the version's tags."""
    rv = resolve(keep, ref)
    store, snap, _sid = load(keep, rv)
    return scan_stored(keep, rv.name, store, snap)


def scan_stored(keep: Keep, name: str, store: Store, snap: Snapshot) -> list[Finding]:
    # Buffered: scanners read small pieces (pickle opcodes), each a call into the store.
    sources = [_StoredSource(f.path, f.size,
                             lambda f=f: io.BufferedReader(  # type: ignore[misc]
                                 store.open_file(snap, f.path), 1 << 20))
               for f in snap.files]
    return scan_sources(keep, name, sources)


