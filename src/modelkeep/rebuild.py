"""Rebuilding a registry from a store alone (disaster recovery).

Every snapshot records the model name it was registered under, when, by whom, its message, user
tags and parents, so the store is enough to recreate the catalogue: one registered model per
name, one version per snapshot, created in the order of the snapshots' ``created`` times (ties by
snapshot id), so numbering matches the lost registry whenever that one had no gaps. The registry
tags of §10 of docs/format.md are recomputed (``modelkeep.bytes_added`` too: the chunk bytes no
earlier snapshot of the store referenced) and the description is the snapshot's message.

What the store does not hold cannot come back: aliases and their history, descriptions edited
after registering, tags set on a version after registering, and versions other tools registered.

A rebuild is resumable: for each name, the versions already in the target registry must be the
first ones of the plan, with the same snapshots, and only the rest are created; any other
content under a name is a conflict, reported before anything is written.

This module plans (pure functions over loaded snapshots);
:meth:`modelkeep.api.Keep.rebuild_registry` reads the store and writes through the
:class:`~modelkeep.registry.Registry` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelkeep.store import Snapshot

TAG_PREFIX = "modelkeep."


@dataclass(frozen=True)
class PlannedVersion:
    """One version a rebuild creates (or found already created)."""

    name: str
    version: int
    snapshot_id: str
    uri: str
    created: str
    tags: Mapping[str, str]
    description: str
    exists: bool = False  # already in the target registry (a resumed rebuild)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "snapshot": self.snapshot_id,
                "uri": self.uri, "created": self.created, "exists": self.exists,
                "tags": dict(self.tags)}


@dataclass
class RebuildReport:
    """What a rebuild did (or, dry, would do)."""

    registry: str
    store: str
    dry_run: bool
    versions: list[PlannedVersion] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (snapshot id, reason)

    @property
    def created(self) -> int:
        return sum(1 for v in self.versions if not v.exists)

    @property
    def models(self) -> list[str]:
        return sorted({v.name for v in self.versions})

    def to_json(self) -> dict[str, Any]:
        return {"registry": self.registry, "store": self.store, "dry_run": self.dry_run,
                "models": self.models, "created": self.created,
                "versions": [v.to_json() for v in self.versions],
                "skipped": [{"snapshot": s, "reason": r} for s, r in self.skipped]}


def registry_tags(snapshot: Snapshot, sid: str, bytes_added: int) -> dict[str, str]:
    """The tags ``register`` gives a version (docs/format.md §10), from its snapshot."""
    size = snapshot.size
    tags = {
        **snapshot.tags,
        TAG_PREFIX + "snapshot": sid,
        TAG_PREFIX + "tree": snapshot.tree,
        TAG_PREFIX + "size": str(size),
        TAG_PREFIX + "bytes_added": str(bytes_added),
        TAG_PREFIX + "dedup_ratio": f"{1.0 - bytes_added / size if size else 1.0:.4f}",
        TAG_PREFIX + "files": str(len(snapshot.files)),
    }
    if snapshot.parents:
        tags[TAG_PREFIX + "parents"] = ",".join(str(p) for p in snapshot.parents)
    return tags


def order(snapshots: Iterable[tuple[str, Snapshot]]) -> list[tuple[str, Snapshot]]:
    """Snapshots in creation order (ties by id, so every run plans the same)."""
    return sorted(snapshots, key=lambda item: (item[1].created, item[0]))


def bytes_added(ordered: Sequence[tuple[str, Snapshot]]) -> dict[str, int]:
    """For each snapshot, the bytes of the chunks no earlier snapshot referenced: what storing it
    added, as far as the store can still tell."""
    seen: set[str] = set()
    out: dict[str, int] = {}
    for sid, snap in ordered:
        added = 0
        for f in snap.files:
            for cid, length in f.chunks:
                if cid not in seen:
                    seen.add(cid)
                    added += length
        out[sid] = added
    return out
