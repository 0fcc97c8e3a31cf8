"""Deletion history: which versions of a model were deleted, when, by whom.

A deleted version is gone from the registry, so ``modelkeep log`` would forget it ever existed.
The record is one tag of the registered model (which outlives its versions, like the alias
history of :mod:`modelkeep.aliases`), ``modelkeep.deletions``, holding compact JSON::

    [[2,"2026-11-29T12:00:00Z","ana@host","4e37…778f"],[3,"2026-11-30T09:10:11Z","bo@host",""]]

one ``[version, time, author, snapshot id]`` entry per deleted version, oldest first. The value
is kept within :data:`MAX_CHARS` by dropping the oldest entries (MLflow's registered-model tag
values are ``VARCHAR(5000)`` on PostgreSQL and MySQL); entries that do not parse are skipped,
since a person may have edited the tag in the MLflow UI. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelkeep.aliases import TIME_FORMAT, encode_rows, rows

TAG = "modelkeep.deletions"
MAX_CHARS = 5000
MAX_USER_CHARS = 100

__all__ = ["MAX_CHARS", "TAG", "TIME_FORMAT", "DeletionEvent", "decode", "encode"]


@dataclass(frozen=True)
class DeletionEvent:
    """One deleted version."""

    version: int
    time: str  # UTC, TIME_FORMAT
    author: str  # who deleted it: $MODELKEEP_AUTHOR, else user@host
    snapshot_id: str  # the snapshot the version named ("" if not known)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "time": self.time, "author": self.author,
                "snapshot_id": self.snapshot_id}


def decode(value: str | None) -> list[DeletionEvent]:
    """The events stored in the tag value, oldest first; malformed entries skipped."""
    out = []
    for version, time, who, snapshot_id in rows(value, 4):
        if not isinstance(version, int) or isinstance(version, bool):
            continue
        if not all(isinstance(x, str) for x in (time, who, snapshot_id)):
            continue
        out.append(DeletionEvent(version, time, who, snapshot_id))
    return out


def encode(events: Sequence[DeletionEvent]) -> str:
    """The tag value for *events* (oldest first), the oldest dropped to fit :data:`MAX_CHARS`."""
    return encode_rows(
        [[e.version, e.time, e.author[:MAX_USER_CHARS], e.snapshot_id] for e in events],
        MAX_CHARS)
