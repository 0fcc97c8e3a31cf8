"""Finding and mending damaged chunks: each named once with the versions that use it, then
replaced by a verified copy from a folder of the original files or from a replica store
(``modelkeep verify --repair [--from FOLDER|STORE]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.store import parse_uri, scan_local

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.store import RepairReport, VerifyReport


@dataclass(frozen=True)
class DamagedChunk:
    """One chunk whose own object is damaged or missing, and every use of it."""

    id: str
    reason: str
    uses: tuple[str, ...]  # "NAME@VERSION PATH" (a snapshot id where no version points at it)
    through: int = 0  # chunks read through it (deltas of it) that fail with it

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reason": self.reason, "uses": list(self.uses),
                "through": self.through}

    def __str__(self) -> str:
        more = f"; {self.through} chunk(s) read through it fail too" if self.through else ""
        return f"chunk {self.id[:12]}: {self.reason}{more}; used by {', '.join(self.uses)}"


@dataclass
class RepairResult:
    before: VerifyReport
    damaged: list[DamagedChunk]
    repair: RepairReport | None = None
    after: VerifyReport | None = None
    source: str | None = None

    @property
    def ok(self) -> bool:
        final = self.after if self.after is not None else self.before
        return final.ok

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "source": self.source,
                "damaged": [d.to_json() for d in self.damaged],
                "repair": self.repair.to_json() if self.repair is not None else None,
                "after": self.after.to_json() if self.after is not None else None}


def _versions_by_snapshot(keep: Keep) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in keep.models():
        for rv in keep.registry.versions(name):
            try:
                out.setdefault(parse_uri(rv.source).snapshot_id, []).append(
                    f"{rv.name}@{rv.version}")
            except ValueError:
                continue  # registered by another tool
    return out


def damaged_chunks(keep: Keep, report: VerifyReport) -> list[DamagedChunk]:
    """Each damaged chunk of *report* once, with the versions (and files) that use it."""
    names = _versions_by_snapshot(keep) if not report.ok else {}
    out = []
    for cid, problems in sorted(report.damaged_chunks().items()):
        uses: list[str] = []
        own = [p for p in problems if p.cause is None]
        # Its own uses first, then the versions that read it through a delta.
        for p in sorted(problems, key=lambda p: (p.cause is not None, p.snapshot_id, p.path or "")):
            refs = names.get(p.snapshot_id) or [f"snapshot {p.snapshot_id[:12]}"]
            how = " (through a delta)" if p.cause is not None else ""
            uses += [f"{ref} {p.path}{how}" for ref in refs if f"{ref} {p.path}{how}" not in uses]
        reason = own[0].reason if own else "damaged (found through the chunks read from it)"
        through = len({p.object_id for p in problems if p.cause is not None})
        out.append(DamagedChunk(cid, reason, tuple(uses), through))
    return out


def repair(keep: Keep, source: str | None = None) -> RepairResult:
    """Verify the store; quarantine each damaged chunk and, with *source* (a folder or file of
    the original files, or a store name or URL holding the same chunks), write verified copies;
    then verify again."""
    before = keep.store.verify()
    result = RepairResult(before, damaged_chunks(keep, before), source=source)
    if before.ok:
        return result
    ids = [d.id for d in result.damaged]
    if source is None:
        result.repair = keep.store.repair(ids)
    elif Path(source).exists() and keep.open_store(source).descriptor() is None:
        result.repair = keep.store.repair(ids, sources=scan_local(source))  # a model folder
    else:
        result.repair = keep.store.repair(ids, replica=keep.open_store(source))
    result.after = keep.store.verify()
    return result
