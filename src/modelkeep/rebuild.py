"""Rebuilding a registry from a store alone (disaster recovery).

Every snapshot records the model name it was registered under, when, by whom, its message, user
tags and parents, so the store is enough to recreate the catalogue: one registered model per
name, one version per snapshot, created in the order of the snapshots' ``created`` times (ties by
snapshot id), so numbering matches the lost registry whenever that one had no gaps. The registry
tags of §10 of docs/format.md are recomputed (``modelkeep.bytes_added`` too: the chunk bytes no
earlier snapshot of the store referenced) and the description is the snapshot's message.

What happened to the catalogue after registering (aliases set, moved, rolled back and deleted,
descriptions edited) comes back from the store's journal (:mod:`modelkeep.store.journal`):
:func:`replay` runs its entries in order over the rebuilt versions. Entries name versions by
snapshot id as well as number, so an alias lands on the same content even where the rebuilt
numbering differs; an entry whose version the store no longer holds is reported and left out,
never guessed. Still lost: tags set on a version after registering, changes made in the registry
without modelkeep, and versions other tools registered.

A rebuild is resumable and idempotent: for each name, the versions already in the target registry
must be the first ones of the plan, with the same snapshots, and only the rest are created; any
other content under a name is a conflict, reported before anything is written. Aliases, alias
histories and descriptions are written only where they differ from the journal's.

This module plans (pure functions over loaded snapshots and journal entries);
:meth:`modelkeep.api.Keep.rebuild_registry` reads the store and writes through the
:class:`~modelkeep.registry.Registry` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelkeep import aliases as aliases_mod
from modelkeep.errors import InvalidInputError
from modelkeep.refs import validate_alias, validate_name
from modelkeep.store import JournalEntry, Snapshot
from modelkeep.store.hashing import is_id

TAG_PREFIX = "modelkeep."
# Journal operations (docs/format.md §10.4).
OP_ALIAS = "alias"
OP_DESCRIPTION = "description"
OP_CANCEL = "cancel"


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


@dataclass(frozen=True)
class PlannedAlias:
    """Where an alias points once the journal is replayed, and its history tag."""

    name: str
    alias: str
    version: int | None  # None: not set (deleted, or its version is not in the store)
    history: str  # the value of the model tag modelkeep.alias_history.ALIAS; "" for none
    events: int
    set_alias: bool = True  # the target registry's alias differs
    set_history: bool = True  # the target registry's history tag differs

    @property
    def changed(self) -> bool:
        return self.set_alias or self.set_history

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "version": self.version,
                "events": self.events, "changed": self.changed}


@dataclass(frozen=True)
class PlannedDescription:
    """The last description the journal holds for a version, or a model (version None)."""

    name: str
    version: int | None
    text: str
    changed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "text": self.text,
                "changed": self.changed}


@dataclass
class JournalReplay:
    """What the journal says about the catalogue beyond the snapshots."""

    entries: int = 0
    cancelled: int = 0
    aliases: list[PlannedAlias] = field(default_factory=list)
    descriptions: list[PlannedDescription] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (entry id or "", reason)

    @property
    def changes(self) -> int:
        return (sum(1 for a in self.aliases if a.changed)
                + sum(1 for d in self.descriptions if d.changed))

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "cancelled": self.cancelled, "changes": self.changes,
                "aliases": [a.to_json() for a in self.aliases],
                "descriptions": [d.to_json() for d in self.descriptions],
                "problems": [{"entry": e, "reason": r} for e, r in self.problems]}


@dataclass
class RebuildReport:
    """What a rebuild did (or, dry, would do)."""

    registry: str
    store: str
    dry_run: bool
    versions: list[PlannedVersion] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (snapshot id, reason)
    journal: JournalReplay = field(default_factory=JournalReplay)

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
                "skipped": [{"snapshot": s, "reason": r} for s, r in self.skipped],
                "journal": self.journal.to_json()}


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


# -- journal replay ---------------------------------------------------------------------------


class _Unusable(Exception):
    """An entry that cannot be replayed; the message says why."""


def _member(entry: JournalEntry, key: str, kinds: tuple[type, ...]) -> Any:
    value = entry.data.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise _Unusable(f"{entry.op} entry has no valid {key!r}")
    return value


def _target(entry: JournalEntry, versions: Mapping[str, tuple[str, int]]) -> int:
    """The rebuilt version number of the version an entry names (by snapshot id: the number
    it had may differ in the rebuilt registry)."""
    number = entry.data.get("version")
    sid = entry.data.get("snapshot")
    was = f"{entry.name}@{number}" if isinstance(number, int) else entry.name
    if not is_id(sid):
        raise _Unusable(f"{was} was not registered by modelkeep; the store cannot restore it")
    found = versions.get(sid)
    if found is None or found[0] != entry.name:
        raise _Unusable(f"{was} (snapshot {sid[:12]}) is not in the store (deleted or damaged)")
    return found[1]


def _time(entry: JournalEntry) -> str:
    """The alias history's time (seconds) of an entry written with microseconds."""
    return entry.time[:19] + "Z"


def replay(entries: Sequence[JournalEntry],
           versions: Mapping[str, tuple[str, int]]) -> JournalReplay:
    """Replay *entries* (in journal order) over the rebuilt versions, *versions* mapping each
    snapshot id to its ``(name, number)``. Entries cancelled by a later ``cancel`` entry (their
    registry change failed) are left out; unusable ones are reported in ``problems``."""
    out = JournalReplay(entries=len(entries))
    cancelled = {e.data.get("cancels") for e in entries if e.op == OP_CANCEL}
    # (name, alias) -> [target or None, history tag value, events, unresolved reason]
    alias_state: dict[tuple[str, str], list[Any]] = {}
    descriptions: dict[tuple[str, int | None], str] = {}
    for entry in entries:
        if entry.op == OP_CANCEL:
            continue
        if entry.id in cancelled:
            out.cancelled += 1
            continue
        try:
            try:
                validate_name(entry.name)
            except InvalidInputError:
                raise _Unusable(f"invalid model name {entry.name!r}") from None
            if entry.op == OP_ALIAS:
                _replay_alias(entry, versions, alias_state)
            elif entry.op == OP_DESCRIPTION:
                text = _member(entry, "text", (str,))
                if entry.data.get("version") is None:
                    descriptions[(entry.name, None)] = text
                else:
                    descriptions[(entry.name, _target(entry, versions))] = text
            else:
                raise _Unusable(f"unknown operation {entry.op!r} (written by a newer modelkeep?)")
        except _Unusable as exc:
            out.problems.append((entry.id, f"{entry.time} {entry.op} of {entry.name}: {exc}; "
                                 "left out"))
    for (name, alias), (target, history, events, unresolved) in sorted(alias_state.items()):
        if unresolved:
            out.problems.append(("", f"alias {alias!r} of {name} is not set: {unresolved}"))
        out.aliases.append(PlannedAlias(name, alias, target, history, events))
    out.descriptions = [PlannedDescription(name, version, text) for (name, version), text
                        in sorted(descriptions.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))]
    return out


def _replay_alias(entry: JournalEntry, versions: Mapping[str, tuple[str, int]],
                  state: dict[tuple[str, str], list[Any]]) -> None:
    alias = _member(entry, "alias", (str,))
    try:
        validate_alias(alias)
    except InvalidInputError:
        raise _Unusable(f"invalid alias {alias!r}") from None
    action = entry.data.get("action")
    if action not in aliases_mod.OPS:
        raise _Unusable(f"unknown alias action {action!r}")
    current = state.setdefault((entry.name, alias), [None, "", 0, ""])
    if action == "delete":
        target = None
    else:
        try:
            target = _target(entry, versions)
        except _Unusable as exc:
            # Where the alias points is now unknown: leave it unset rather than guess, until a
            # later entry moves it somewhere the store still holds.
            current[0], current[3] = None, str(exc)
            raise _Unusable(f"alias {alias!r}: {exc}") from None
    # The history tag is rebuilt the way the writer built it: decode, append, encode (which
    # drops the oldest entries to fit), so a long history keeps the same entries.
    events = aliases_mod.decode(alias, current[1])
    events.append(aliases_mod.AliasEvent(alias, target, _time(entry), entry.author, action))
    current[0], current[1], current[3] = target, aliases_mod.encode(events), ""
    current[2] += 1
