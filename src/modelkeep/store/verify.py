"""Checking stored content against its ids: every chunk of every file of the given snapshots.

A chunk shared by several files or versions is fetched once; a problem is reported once per file
and chunk that uses it, so the report names every damaged file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelkeep.errors import IntegrityError, ModelkeepError, NotFoundError
from modelkeep.store.codec import Kind
from modelkeep.store.objects import BaseDamagedError

if TYPE_CHECKING:
    from modelkeep.store.objects import ObjectDB
    from modelkeep.store.snapshot import Snapshot


@dataclass(frozen=True)
class Problem:
    """One damaged or missing object, and where it is used."""

    snapshot_id: str
    path: str | None  # file inside the version; None for the snapshot object itself
    chunk_index: int | None
    offset: int | None
    object_id: str
    reason: str
    # The damaged chunk this one is read through (a delta's base), when it is not itself.
    cause: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"snapshot_id": self.snapshot_id, "path": self.path, "chunk": self.chunk_index,
                "offset": self.offset, "object": self.object_id, "reason": self.reason,
                "cause": self.cause}

    def __str__(self) -> str:
        if self.path is None:
            return f"snapshot {self.snapshot_id[:12]}: {self.reason}"
        return (f"{self.path}: chunk {self.chunk_index} at offset {self.offset} "
                f"({self.object_id[:12]}): {self.reason}")


@dataclass
class VerifyReport:
    snapshots: int = 0
    chunks: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def damaged_chunks(self) -> dict[str, list[Problem]]:
        """{chunk id: its uses} of each chunk whose own object is damaged or missing (not one
        only read through a damaged base): what a repair must replace, each named once."""
        out: dict[str, list[Problem]] = {}
        for p in self.problems:
            if p.path is not None:
                out.setdefault(p.cause or p.object_id, []).append(p)
        return out

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "snapshots": self.snapshots, "chunks": self.chunks,
                "bytes": self.bytes, "problems": [p.to_json() for p in self.problems]}


def verify_snapshots(
    db: ObjectDB,
    snapshots: Iterable[tuple[str, Snapshot]],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    report = VerifyReport()
    uses: dict[str, list[tuple[str, str, int, int]]] = {}
    sizes: dict[str, int] = {}
    for sid, snap in snapshots:
        report.snapshots += 1
        for entry in snap.files:
            offsets = entry.chunk_offsets()
            for i, ((cid, n), off) in enumerate(zip(entry.chunks, offsets, strict=True)):
                uses.setdefault(cid, []).append((sid, entry.path, i, off))
                sizes[cid] = n

    def check(cid: str) -> tuple[str, str | None, str | None]:
        try:
            data = db.get(Kind.CHUNK, cid, transient=True)  # only its length is kept
        except NotFoundError:
            return cid, "missing", None
        except BaseDamagedError as exc:
            return cid, exc.message, exc.base_id
        except IntegrityError as exc:
            return cid, exc.message, None
        except ModelkeepError as exc:
            return cid, str(exc), None
        if len(data) != sizes[cid]:
            return cid, f"has {len(data)} bytes, snapshot says {sizes[cid]}", None
        return cid, None, None

    workers = workers or (4 if db.location.is_local else 16)
    with ThreadPoolExecutor(workers, thread_name_prefix="modelkeep-verify") as pool:
        for cid, reason, cause in pool.map(check, sorted(uses)):
            report.chunks += 1
            report.bytes += sizes[cid]
            if progress is not None:
                progress(sizes[cid])
            if reason is not None:
                for sid, path, i, off in uses[cid]:
                    report.problems.append(Problem(sid, path, i, off, cid, reason, cause))
    report.problems.sort(key=lambda p: (p.snapshot_id, p.path or "", p.chunk_index or 0))
    return report
