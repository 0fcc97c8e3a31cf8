"""Alias history: where each alias of a model pointed, since when, and who moved it.

A registry keeps only where an alias points now; rolling back needs where it pointed before. The
history of alias ``A`` of a model is one tag of the registered model (not of a version, so it
survives deleting versions), ``modelkeep.alias_history.A``, holding compact JSON::

    [[3,"2026-11-29T12:00:00Z","ana@host","set"],[4,"2026-11-30T09:10:11Z","bo@host","set"]]

one ``[version, time, user, op]`` entry per change, oldest first; ``version`` is null for a
deletion, ``op`` is ``set``, ``rollback`` or ``delete``. The value is kept within
:data:`MAX_HISTORY_CHARS` by dropping the oldest entries, because MLflow stores registered-model tag
values in a ``VARCHAR(5000)`` column on PostgreSQL and MySQL (SQLite would accept more, a server
would not). Entries that do not parse are skipped rather than failing: a person may have edited
the tag in the MLflow UI.

Rolling back replays the history as a stack: ``set`` pushes, ``rollback`` pops back to its target,
``delete`` pushes "unset"; the rollback target is the newest earlier *version* on the stack. So
after 1 → 2 → 3, rollbacks give 2, then 1, then an error; an alias moved outside modelkeep (in the
MLflow UI) counts as a ``set`` to where it points now. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

HISTORY_TAG = "modelkeep.alias_history."
MAX_HISTORY_CHARS = 5000
MAX_USER_CHARS = 100
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
OPS = ("set", "rollback", "delete")


@dataclass(frozen=True)
class AliasEvent:
    """One change of an alias."""

    alias: str
    version: int | None  # None: the alias was deleted
    time: str  # UTC, TIME_FORMAT
    author: str  # who made the change: $MODELKEEP_AUTHOR, else user@host
    op: str  # "set", "rollback" or "delete"

    def to_json(self) -> dict[str, Any]:
        return {"alias": self.alias, "version": self.version, "time": self.time,
                "author": self.author, "op": self.op}


def now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def decode(alias: str, value: str | None) -> list[AliasEvent]:
    """The events stored in one history tag value, oldest first; malformed entries skipped."""
    out = []
    for version, time, user, op in rows(value, 4):
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            continue
        if not (isinstance(time, str) and isinstance(user, str) and op in OPS):
            continue
        out.append(AliasEvent(alias, version, time, user, op))
    return out


def encode(events: Sequence[AliasEvent]) -> str:
    """The tag value for *events* (one alias, oldest first), the oldest dropped to fit."""
    return encode_rows([[e.version, e.time, e.author[:MAX_USER_CHARS], e.op] for e in events],
                       MAX_HISTORY_CHARS)


def rows(value: str | None, width: int) -> list[list[Any]]:
    """The rows of a history tag value (a JSON list of lists of *width* members); anything
    malformed is skipped, so a hand-edited tag never breaks a read."""
    if not value:
        return []
    try:
        raw = json.loads(value)
    except ValueError:
        return []
    if not isinstance(raw, list):
        return []
    return [entry for entry in raw if isinstance(entry, list) and len(entry) == width]


def encode_rows(items: list[list[Any]], limit: int) -> str:
    """A history tag value of *items* (oldest first), the oldest dropped to fit *limit*."""
    while True:
        text = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
        if len(text) <= limit or not items:
            return text
        # Drop enough at once that a long history is not re-serialised once per entry.
        items = items[max(1, len(items) * (len(text) - limit) // len(text)):]


def history(model_tags: Mapping[str, str]) -> list[AliasEvent]:
    """Every alias's events from a model's tags, oldest first (ties in alias order)."""
    events: list[AliasEvent] = []
    for key in sorted(model_tags):
        if key.startswith(HISTORY_TAG):
            events.extend(decode(key[len(HISTORY_TAG):], model_tags[key]))
    return sorted(events, key=lambda e: e.time)  # stable: each alias's own order is kept


def stack(events: Iterable[AliasEvent]) -> list[int | None]:
    """Replay one alias's events: the targets it can be rolled back through, newest last."""
    out: list[int | None] = []
    for e in events:
        if e.op == "rollback" and out:
            out.pop()
            if e.version in out:
                del out[len(out) - out[::-1].index(e.version):]
            else:
                out.append(e.version)
        else:
            out.append(e.version)
    return out


def rollback_target(events: Iterable[AliasEvent], current: int | None) -> int | None:
    """The version an alias pointing at *current* goes back to, or None if there is none."""
    targets = stack(events)
    if not targets or targets[-1] != current:
        targets.append(current)  # moved outside modelkeep: that move is the newest
    targets.pop()
    while targets and (targets[-1] is None or targets[-1] == current):
        targets.pop()
    return targets[-1] if targets else None
