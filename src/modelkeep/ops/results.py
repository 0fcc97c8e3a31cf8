"""The values :class:`~modelkeep.keep.Keep` returns that belong to no lower layer: a registered
version, a model, its newest versions and its history as the user sees them, a deletion, and a
diff.
Their ``to_json`` is what every ``--json`` prints for them (docs/json.md). Exported from
:mod:`modelkeep`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from modelkeep.aliases import TIME_FORMAT
from modelkeep.catalog.tags import TAG_PREFIX

if TYPE_CHECKING:
    from modelkeep.aliases import AliasEvent
    from modelkeep.catalog.deletions import DeletionEvent
    from modelkeep.store import FileEntry, Parent


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    snapshot_id: str
    uri: str
    created: datetime
    size: int
    files: tuple[FileEntry, ...]
    tags: Mapping[str, str]
    aliases: tuple[str, ...]
    parents: tuple[Parent, ...]
    message: str = ""
    author: str = ""
    bytes_added: int | None = None
    bytes_stored: int | None = None  # what the chunks it added take in the store (coded)
    reused: bool = False  # register() returned an existing, identical version
    # With reused: what the register applied to that version ("message", "tags", "aliases").
    applied: Mapping[str, Any] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)  # the snapshot's, see docs/format.md

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def user_tags(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if not k.startswith(TAG_PREFIX)}

    @property
    def dedup_ratio(self) -> float | None:
        if self.bytes_added is None or not self.size:
            return None
        return 1.0 - self.bytes_added / self.size

    @property
    def stored_ratio(self) -> float | None:
        """What the version cost in the store, as a fraction of its size."""
        if self.bytes_stored is None or not self.size:
            return None
        return self.bytes_stored / self.size

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "snapshot_id": self.snapshot_id,
            "uri": self.uri,
            "created": self.created.strftime(TIME_FORMAT),
            "size": self.size,
            "bytes_added": self.bytes_added,
            "dedup_ratio": self.dedup_ratio,
            "bytes_stored": self.bytes_stored,
            "stored_ratio": self.stored_ratio,
            "reused": self.reused,
            "applied": dict(self.applied),
            "author": self.author,
            "message": self.message,
            "aliases": list(self.aliases),
            "tags": dict(self.tags),
            # Not Parent.to_json: that is the snapshot format's spelling (docs/format.md).
            "parents": [{"name": p.name, "version": p.version, "snapshot_id": p.snapshot_id}
                        for p in self.parents],
            "lineage": dict(self.lineage),
            "files": [{"path": f.path, "size": f.size, "digest": f.digest,
                       "chunks": len(f.chunks), "tensors": len(f.tensors)
                       if f.tensors is not None else None} for f in self.files],
        }


@dataclass(frozen=True)
class Model:
    """A registered model: its newest version, where each alias points, its description and
    user tags (the ``modelkeep.`` ones, its histories, are read through their own methods)."""

    name: str
    latest: int | None  # None: no versions (all deleted, or none registered yet)
    aliases: Mapping[str, int] = field(default_factory=dict)
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "latest": self.latest,
                "aliases": dict(sorted(self.aliases.items())),
                "description": self.description, "tags": dict(self.tags)}


@dataclass(frozen=True)
class VersionList:
    """The newest versions of one model, oldest first: all of them when *limit* is None, else
    at most *limit*, with *truncated* saying that older ones exist."""

    name: str
    versions: tuple[ModelVersion, ...]
    truncated: bool = False
    limit: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [v.to_json() for v in self.versions],
                "truncated": self.truncated, "limit": self.limit}


@dataclass(frozen=True)
class ModelLog:
    """A model's history as ``modelkeep log`` shows it: the model, its newest versions (all of
    them when ``versions.limit`` is None), and every alias change and deleted version, each
    oldest first. ``to_json`` lists them newest first."""

    model: Model
    versions: VersionList
    alias_history: tuple[AliasEvent, ...] = ()
    deletions: tuple[DeletionEvent, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.model.name, "model": self.model.to_json(),
                "versions": [v.to_json() for v in reversed(self.versions.versions)],
                "truncated": self.versions.truncated, "limit": self.versions.limit,
                "alias_history": [e.to_json() for e in reversed(self.alias_history)],
                "deletions": [d.to_json() for d in reversed(self.deletions)]}


@dataclass(frozen=True)
class DeletedVersion:
    """What :meth:`Keep.delete_version` removed."""

    name: str
    version: int
    snapshot_id: str
    snapshot_deleted: bool  # False when other versions still use the snapshot
    shared_with: tuple[str, ...] = ()  # those versions (``NAME@N``)
    aliases_deleted: tuple[str, ...] = ()
    author: str = ""  # who deleted it
    time: str = ""  # when, UTC, ``YYYY-MM-DDTHH:MM:SSZ``

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "version": self.version,
                "snapshot_id": self.snapshot_id, "snapshot_deleted": self.snapshot_deleted,
                "shared_with": list(self.shared_with),
                "aliases_deleted": list(self.aliases_deleted),
                "author": self.author, "time": self.time}


@dataclass(frozen=True)
class DeleteReport:
    """What :meth:`Keep.delete` removed, and what a garbage collection will reclaim."""

    versions: tuple[DeletedVersion, ...]
    # Chunks only the deleted snapshots used, and their stored bytes: what the next collections
    # reclaim (None when not measured).
    reclaimable_chunks: int | None = None
    reclaimable_bytes: int | None = None
    cancelled: bool = False  # the confirmation was refused; nothing was deleted

    def to_json(self) -> dict[str, Any]:
        return {"deleted": [v.to_json() for v in self.versions],
                "reclaimable_chunks": self.reclaimable_chunks,
                "reclaimable_bytes": self.reclaimable_bytes, "cancelled": self.cancelled}


@dataclass(frozen=True)
class TensorChange:
    """One tensor added, removed or changed; for a changed one of the same dtype and shape whose
    values were read, the largest absolute difference (NaN where a value is NaN on one side
    only; None when not read, or a dtype numpy cannot hold)."""

    name: str
    status: str  # "added", "removed", "changed"
    dtype_a: str | None
    dtype_b: str | None
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    max_abs_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        diff: float | str | None = self.max_abs_diff
        if self.max_abs_diff is not None and math.isnan(self.max_abs_diff):
            diff = "nan"  # JSON has no NaN
        return {"name": self.name, "status": self.status, "dtype_a": self.dtype_a,
                "dtype_b": self.dtype_b,
                "shape_a": list(self.shape_a) if self.shape_a is not None else None,
                "shape_b": list(self.shape_b) if self.shape_b is not None else None,
                "max_abs_diff": diff}


@dataclass(frozen=True)
class TensorChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: int = 0
    details: tuple[TensorChange, ...] = ()  # changed, then added, then removed, by name


@dataclass(frozen=True)
class FileChange:
    path: str
    status: str  # "added", "removed", "changed"
    size_a: int | None
    size_b: int | None
    tensors: TensorChanges | None = None
    mode_a: int | None = None
    mode_b: int | None = None
    text_diff: str | None = None  # unified diff of a small text file, when content was read

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "status": self.status,
                                "size_a": self.size_a, "size_b": self.size_b,
                                "mode_a": self.mode_a, "mode_b": self.mode_b,
                                "text_diff": self.text_diff}
        if self.tensors is not None:
            data["tensors"] = {"added": list(self.tensors.added),
                               "removed": list(self.tensors.removed),
                               "changed": list(self.tensors.changed),
                               "unchanged": self.tensors.unchanged,
                               "details": [t.to_json() for t in self.tensors.details]}
        return data


@dataclass(frozen=True)
class VersionRef:
    """A version named in a report about something else: the names the version object uses
    (docs/json.md, ``version_ref``); its string is its ``NAME@N``."""

    name: str
    version: int
    snapshot_id: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def __str__(self) -> str:
        return self.ref

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "ref": self.ref,
                "snapshot_id": self.snapshot_id}


@dataclass(frozen=True)
class Diff:
    a: VersionRef
    b: VersionRef
    files: tuple[FileChange, ...] = field(default_factory=tuple)
    unchanged_files: int = 0
    content: bool = False  # text diffs and tensor differences were read

    @property
    def added(self) -> list[str]:
        return [f.path for f in self.files if f.status == "added"]

    @property
    def removed(self) -> list[str]:
        return [f.path for f in self.files if f.status == "removed"]

    @property
    def changed(self) -> list[str]:
        return [f.path for f in self.files if f.status == "changed"]

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a.to_json(), "b": self.b.to_json(),
                "unchanged_files": self.unchanged_files,
                "content": self.content, "files": [f.to_json() for f in self.files]}
