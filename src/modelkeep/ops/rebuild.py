"""Rebuilding a registry from a store alone (disaster recovery).

Every snapshot records the model name it was registered under, when, by whom, its message, user
tags and parents, so the store is enough to recreate the catalogue: one registered model per
name, one version per snapshot, created in the order of the snapshots' ``created`` times (ties by
snapshot id), so numbering matches the lost registry whenever that one had no gaps. The registry
tags of §10 of docs/format.md are recomputed (``modelkeep.bytes_added`` too: the chunk bytes no
earlier snapshot of the store referenced), the description is the snapshot's message and,
once the journal is replayed, every version's and model's generated summary is written as
register and alias changes write it (:mod:`modelkeep.ops.summary`).

What happened to the catalogue after registering (aliases set, moved, rolled back and deleted,
descriptions edited, tags set by a register of identical content, versions deleted) comes back
from the store's journal (:mod:`modelkeep.store.journal`):
:func:`replay` runs its entries in order over the rebuilt versions. Entries name versions by
snapshot id as well as number, so an alias lands on the same content even where the rebuilt
numbering differs; an entry whose version the store no longer holds is reported and left out,
never guessed. Still lost: tags set on a version in the registry directly, changes made in the
registry without modelkeep, and versions other tools registered.

A rebuild is resumable and idempotent: for each name, the versions already in the target registry
must be the first ones of the plan, with the same snapshots, and only the rest are created; any
other content under a name is a conflict, reported before anything is written. Aliases, alias
histories, descriptions and journaled tags are written only where they differ from the journal's.

Planned, then executed, as restic plans a prune: :func:`plan` reads the store and the target
registry and decides everything (conflicts included) without writing; :func:`execute` writes the
plan through the :class:`~modelkeep.registry.Registry` protocol. The version tags come from the
one tag schema (:func:`modelkeep.catalog.tags.version_tags`), as register's do.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from modelkeep import aliases as aliases_mod
from modelkeep.catalog import deletions as deletions_mod
from modelkeep.catalog.tags import version_tags
from modelkeep.errors import (
    REGISTRY,
    Hint,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)
from modelkeep.ops.journal import (
    OP_ALIAS,
    OP_CANCEL,
    OP_COMMIT,
    OP_DELETE,
    OP_DESCRIPTION,
    OP_TAG,
)
from modelkeep.ops.register import enter_version
from modelkeep.ops.summary import refresh_model, refresh_version, user_description
from modelkeep.refs import validate_alias, validate_name
from modelkeep.store.hashing import is_id

GAP_TAG = "modelkeep.rebuild.gap"  # on the stand-in that takes a deleted version's number

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.registry import RegistryModel
    from modelkeep.store import JournalEntry, Snapshot


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
    author: str = ""  # the snapshot's: the registry's "Created by" where it records one

    def to_json(self) -> dict[str, Any]:
        # The snapshot's time has microseconds; JSON times are to the second, like every other.
        return {"name": self.name, "version": self.version, "ref": f"{self.name}@{self.version}",
                "snapshot_id": self.snapshot_id, "uri": self.uri,
                "created": self.created[:19] + "Z", "exists": self.exists,
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


@dataclass(frozen=True)
class PlannedTags:
    """The user tags the journal set on a version after it was registered (the last value of
    each key)."""

    name: str
    version: int
    tags: Mapping[str, str]
    changed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "tags": dict(self.tags),
                "changed": self.changed}


@dataclass(frozen=True)
class PlannedDeletions:
    """A model's deletion history (the model tag ``modelkeep.deletions``) as the journal's
    ``delete`` entries rebuild it."""

    name: str
    history: str
    events: int
    changed: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "events": self.events, "changed": self.changed}


@dataclass
class JournalReplay:
    """What the journal says about the catalogue beyond the snapshots."""

    entries: int = 0
    cancelled: int = 0
    aliases: list[PlannedAlias] = field(default_factory=list)
    descriptions: list[PlannedDescription] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (entry id or "", reason)
    tags: list[PlannedTags] = field(default_factory=list)
    deletions: list[PlannedDeletions] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return (sum(1 for a in self.aliases if a.changed)
                + sum(1 for d in self.descriptions if d.changed)
                + sum(1 for t in self.tags if t.changed)
                + sum(1 for d in self.deletions if d.changed))

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "cancelled": self.cancelled, "changes": self.changes,
                "aliases": [a.to_json() for a in self.aliases],
                "descriptions": [d.to_json() for d in self.descriptions],
                "tags": [t.to_json() for t in self.tags],
                "deletions": [d.to_json() for d in self.deletions],
                "problems": [{"entry": e, "reason": r} for e, r in self.problems]}


@dataclass
class RebuildReport:
    """What a rebuild did (or, dry, would do)."""

    registry: str
    store: str
    dry_run: bool
    versions: list[PlannedVersion] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (snapshot id, reason)
    # (name, number, URI) of deleted versions whose numbers are taken and released again
    gaps: list[tuple[str, int, str]] = field(default_factory=list)
    journal: JournalReplay = field(default_factory=JournalReplay)

    @property
    def created(self) -> int:
        return sum(1 for v in self.versions if not v.exists)

    @property
    def models(self) -> list[str]:
        return sorted({v.name for v in self.versions})

    def to_json(self) -> dict[str, Any]:
        return {"registry": self.registry, "store": self.store, "dry_run": self.dry_run,
                "models": self.models, "versions_created": self.created,
                "versions": [v.to_json() for v in self.versions],
                "skipped": [{"snapshot_id": s, "reason": r} for s, r in self.skipped],
                "gaps": [{"name": n, "version": v} for n, v, _uri in self.gaps],
                "journal": self.journal.to_json()}


def order(snapshots: Iterable[tuple[str, Snapshot]]) -> list[tuple[str, Snapshot]]:
    """Snapshots in creation order (ties by id, so every run plans the same)."""
    return sorted(snapshots, key=lambda item: (item[1].created, item[0]))


def bytes_added(ordered: Sequence[tuple[str, Snapshot]],
                stored: Mapping[str, int] | None = None) -> dict[str, int]:
    """For each snapshot, the bytes of the chunks no earlier snapshot referenced: what storing it
    added, as far as the store can still tell; with *stored* (chunk id: stored size), what those
    chunks take in the store."""
    seen: set[str] = set()
    out: dict[str, int] = {}
    for sid, snap in ordered:
        added = 0
        for f in snap.files:
            for cid, length in f.chunks:
                if cid not in seen:
                    seen.add(cid)
                    added += length if stored is None else stored.get(cid, 0)
        out[sid] = added
    return out


def committed(entries: Sequence[JournalEntry]) -> tuple[dict[str, tuple[str, int]], str | None]:
    """The commit records (:func:`modelkeep.ops.journal.record_commit`): for each snapshot id
    that became a version, ``(name, number)`` (the first record of a snapshot wins), and the
    time of the earliest record, from which on the store's writers recorded every commit."""
    out: dict[str, tuple[str, int]] = {}
    since: str | None = None
    for entry in entries:
        if entry.op != OP_COMMIT:
            continue
        sid, number = entry.data.get("snapshot"), entry.data.get("version")
        if (isinstance(sid, str) and is_id(sid) and isinstance(number, int)
                and not isinstance(number, bool) and number > 0):
            out.setdefault(sid, (entry.name, number))
            since = entry.time if since is None else min(since, entry.time)
    return out, since


def deleted(entries: Sequence[JournalEntry]) -> set[tuple[str, int | str]]:
    """The versions the journal's ``delete`` entries removed (those no ``cancel`` names): each
    as ``(name, number)`` and as ``(name, snapshot id)``."""
    cancelled = {e.data.get("cancels") for e in entries if e.op == OP_CANCEL}
    out: set[tuple[str, int | str]] = set()
    for entry in entries:
        if entry.op != OP_DELETE or entry.id in cancelled:
            continue
        number, sid = entry.data.get("version"), entry.data.get("snapshot")
        if isinstance(number, int) and not isinstance(number, bool):
            out.add((entry.name, number))
        if isinstance(sid, str) and is_id(sid):
            out.add((entry.name, sid))
    return out


def number(
    ordered: Sequence[tuple[str, Snapshot]],
    commits: Mapping[str, tuple[str, int]],
    since: str | None,
    skipped: list[tuple[str, str]],
    removed: Collection[tuple[str, int | str]] = (),
) -> tuple[list[tuple[int, str, Snapshot]], dict[str, list[tuple[int, str]]]]:
    """The version number of each snapshot (*ordered* by creation), and per model the numbers
    of deleted versions, ``(number, snapshot id or "")``.

    A snapshot with a commit record gets the number recorded. A snapshot created before the
    first commit record in the store (*since*; written by a modelkeep that recorded none) is
    numbered as before records existed: in creation order, into the numbers below the first one
    its model has recorded. Any other snapshot is one whose register never reached the registry
    (it died between its snapshot and its registry entry, or the registry refused it): not a
    version, and reported in *skipped*. Numbers recorded for snapshots the store no longer
    holds are deleted versions: the rebuild takes and releases them, as the lost registry did.
    So are the versions in *removed* (:func:`deleted`) whose snapshot another version still
    uses: reported in *skipped*, their numbers taken and released the same way.
    """
    by_name: dict[str, list[tuple[str, Snapshot]]] = {}
    for sid, snap in ordered:
        by_name.setdefault(snap.name, []).append((sid, snap))
    recorded: dict[str, dict[int, str]] = {}
    for sid, (name, n) in commits.items():
        recorded.setdefault(name, {}).setdefault(n, sid)
    out: list[tuple[int, str, Snapshot]] = []
    gaps: dict[str, list[tuple[int, str]]] = {}
    for name in sorted(by_name.keys() | recorded.keys()):
        records = recorded.get(name, {})
        taken: dict[int, tuple[str, Snapshot]] = {}
        older: list[tuple[str, Snapshot]] = []
        for sid, snap in by_name.get(name, []):
            found = commits.get(sid)
            if ((found is not None and found[0] == name and (name, found[1]) in removed)
                    or (found is None and (name, sid) in removed)):
                was = f"{name}@{found[1]}" if found is not None else name
                skipped.append((sid, f"{was} was deleted (modelkeep delete); not a version"))
            elif found is not None and found[0] == name and found[1] not in taken:
                taken[found[1]] = (sid, snap)
            elif since is None or snap.created < since:
                older.append((sid, snap))
            else:
                skipped.append((sid, f"{name}: its register never committed (no registry "
                                "entry was made); not a version"))
        free = (n for n in range(1, min(records, default=len(older) + 1)) if n not in taken)
        for sid, snap in older:
            slot = next(free, None)
            if slot is None:
                skipped.append((sid, f"{name}: its register never committed (no commit "
                                f"record, no free number below version {min(records)}); "
                                "not a version"))
            else:
                taken[slot] = (sid, snap)
        out.extend((n, sid, snap) for n, (sid, snap) in sorted(taken.items()))
        last = max([*taken, *records], default=0)
        gaps[name] = [(n, records.get(n, "")) for n in range(1, last + 1) if n not in taken]
    out.sort(key=lambda item: (item[2].created, item[1]))
    return out, gaps


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
    if not isinstance(sid, str) or not is_id(sid):
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
    tags: dict[tuple[str, int], dict[str, str]] = {}
    removed: dict[str, list[deletions_mod.DeletionEvent]] = {}
    for entry in entries:
        if entry.op in (OP_CANCEL, OP_COMMIT):
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
            elif entry.op == OP_TAG:
                key, value = _member(entry, "key", (str,)), _member(entry, "value", (str,))
                tags.setdefault((entry.name, _target(entry, versions)), {})[key] = value
            elif entry.op == OP_DELETE:
                # The history names the number people knew; the version itself is never rebuilt.
                number = _member(entry, "version", (int,))
                sid = entry.data.get("snapshot")
                removed.setdefault(entry.name, []).append(deletions_mod.DeletionEvent(
                    number, _time(entry), entry.author,
                    sid if isinstance(sid, str) and is_id(sid) else ""))
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
    out.tags = [PlannedTags(name, version, given)
                for (name, version), given in sorted(tags.items())]
    out.deletions = [PlannedDeletions(name, deletions_mod.encode(events), len(events))
                     for name, events in sorted(removed.items())]
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


# -- planning and executing against a store and a registry ---------------------------------


def rebuild_registry(keep: Keep, *, dry_run: bool = False) -> RebuildReport:
    """Recreate in this Keep's registry the models and versions of every snapshot in its
    store, then the aliases, alias histories and descriptions its journal records. Conflicts
    are found before anything is written; *dry_run* writes nothing at all; journal entries
    that cannot be replayed are reported in ``report.journal.problems``."""
    report = plan(keep, dry_run=dry_run)
    if not dry_run:
        execute(keep, report)
    return report


def plan(keep: Keep, *, dry_run: bool = False) -> RebuildReport:
    """Everything a rebuild into this Keep's registry would write, read from its store and
    compared with what the registry holds already; writes nothing."""
    from modelkeep.redaction import redact_url

    report = RebuildReport(redact_url(keep.registry.uri), keep.store.url, dry_run)
    good = _load_snapshots(keep, report)
    entries, unreadable = keep.store.journal()
    commits, since = committed(entries)
    ordered = order(good)
    numbered, gaps = number(ordered, commits, since, report.skipped, deleted(entries))
    # Over every snapshot, committed or not: a register that died after storing its chunks
    # left them for the next one to find, as the live figures saw.
    added = bytes_added(ordered)
    stored = bytes_added(ordered, keep.store.chunk_sizes())
    by_name: dict[str, list[tuple[int, str, Snapshot]]] = {}
    for item in numbered:
        by_name.setdefault(item[2].name, []).append(item)

    conflicts = []
    held: dict[tuple[str, int], str] = {}  # descriptions of the versions already there
    held_tags: dict[tuple[str, int], Mapping[str, str]] = {}
    for name in sorted(by_name.keys() | gaps.keys()):
        items = sorted(by_name.get(name, []), key=lambda item: item[0])
        uris = {n: keep.store.uri(sid) for n, sid, _snap in items}
        try:
            there = keep.registry.versions(name)
        except NotFoundError:
            there = []
        held.update({(name, rv.version): user_description(rv.description) for rv in there})
        held_tags.update({(name, rv.version): rv.tags for rv in there})
        # A resumed rebuild: what is there must be the plan's first versions, no more.
        done = max((rv.version for rv in there), default=0)
        if ({rv.version: rv.source for rv in there}
                != {n: uri for n, uri in uris.items() if n <= done}):
            conflicts.append(name)
            continue
        for n, sid, snap in items:
            report.versions.append(PlannedVersion(
                name=name, version=n, snapshot_id=sid, uri=uris[n], created=snap.created,
                tags=version_tags(snap, sid, bytes_added=added[sid],
                                  bytes_stored=stored[sid]),
                description=snap.message, exists=n <= done, author=snap.author))
        # Only numbers some later version needs taken: a registry keeps no trace of a trailing
        # deleted version that a resumed rebuild could see.
        last = max((n for n, _sid, _snap in items), default=0)
        report.gaps.extend((name, n, keep.store.uri(sid or "deleted"))
                           for n, sid in gaps.get(name, []) if done < n < last)
    if conflicts:
        raise RegistryError(
            f"registry {keep.registry.uri} already holds other versions of "
            f"{', '.join(repr(n) for n in conflicts)}",
            hint=Hint("rebuild into an empty registry ({registry}); nothing was written",
                      registry=REGISTRY))
    replayed = replay(
        entries, {v.snapshot_id: (v.name, v.version) for v in report.versions})
    replayed.problems[:0] = [(eid, f"unreadable journal entry: {why}")
                             for eid, why in unreadable]
    for planned in report.versions:
        held.setdefault((planned.name, planned.version), planned.description)
        held_tags.setdefault((planned.name, planned.version), planned.tags)
    report.journal = journal_changes(keep, replayed, held, held_tags)
    return report


def execute(keep: Keep, report: RebuildReport) -> None:
    """Write what :func:`plan` planned: versions in number order (a deleted version's number
    is taken and released again, so the numbers after it stay what they were), then the
    journal's aliases, histories and descriptions."""
    steps: list[tuple[str, int, PlannedVersion | str]] = [
        (v.name, v.version, v) for v in report.versions if not v.exists]
    steps += [(name, n, uri) for name, n, uri in report.gaps]
    for name, n, step in sorted(steps, key=lambda s: (s[0], s[1])):
        # The same registry entry as a register's commit (ops/register.py), with no run link.
        if isinstance(step, PlannedVersion):
            rv = enter_version(keep, name, step.uri, step.tags,
                               description=step.description or None, run_id="",
                               author=step.author)
        else:
            rv = enter_version(keep, name, step, {GAP_TAG: "deleted"}, run_id="")
            keep.registry.delete_version(name, rv.version)
        if rv.version != n:
            raise RegistryError(
                f"registry numbered {name}@{n} as {rv.version}",
                hint="another client registered versions of it meanwhile; rebuild into a "
                "registry nobody else uses")
    apply_journal(keep, report.journal)
    # The summaries last: they show the aliases and histories the journal restored.
    for planned in report.versions:
        refresh_version(keep, planned.name, planned.version)
    for name in sorted({v.name for v in report.versions}
                       | {a.name for a in report.journal.aliases}
                       | {d.name for d in report.journal.descriptions}
                       | {d.name for d in report.journal.deletions}):
        try:
            refresh_model(keep, name)
        except NotFoundError:
            continue  # a journal entry of a model the rebuild did not create


def _load_snapshots(keep: Keep, report: RebuildReport) -> list[tuple[str, Snapshot]]:
    """Every readable snapshot with a valid model name; the others go to ``report.skipped``."""

    def load(sid: str) -> tuple[str, Snapshot | None, str]:
        try:
            return sid, keep.store.load_snapshot(sid), ""
        except (IntegrityError, NotFoundError) as exc:
            return sid, None, exc.message

    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-rebuild") as pool:
        loaded = list(pool.map(load, list(keep.store.snapshot_ids())))
    good: list[tuple[str, Snapshot]] = []
    for sid, snap, problem in loaded:
        if snap is None:
            report.skipped.append((sid, problem or "unreadable"))
            continue
        try:
            validate_name(snap.name)
        except InvalidInputError:
            report.skipped.append((sid, f"invalid model name {snap.name!r}"))
            continue
        good.append((sid, snap))
    return good


def journal_changes(keep: Keep, replay: JournalReplay,
                    descriptions: Mapping[tuple[str, int], str],
                    tags: Mapping[tuple[str, int], Mapping[str, str]] | None = None,
                    ) -> JournalReplay:
    """Mark what the replayed journal changes in the target registry, whose versions have
    *descriptions* and *tags* (once the planned ones exist): only those changes are written,
    so a second rebuild writes nothing."""
    models: dict[str, RegistryModel | None] = {}

    def model(name: str) -> RegistryModel | None:
        if name not in models:
            try:
                models[name] = keep.registry.get_model(name)
            except NotFoundError:
                models[name] = None
        return models[name]

    aliases = []
    for pa in replay.aliases:
        m = model(pa.name)
        target = m.aliases.get(pa.alias) if m else None
        tag = m.tags.get(aliases_mod.HISTORY_TAG + pa.alias) if m else None
        aliases.append(replace(pa, set_alias=target != pa.version,
                               set_history=bool(pa.history) and tag != pa.history))
    texts = []
    for pd in replay.descriptions:
        if pd.version is None:
            m = model(pd.name)
            now = user_description(m.description) if m else ""
        else:
            now = descriptions.get((pd.name, pd.version), "")
        texts.append(replace(pd, changed=now != pd.text))
    held = tags or {}
    planned_tags = [replace(pt, changed=any(held.get((pt.name, pt.version), {}).get(k) != v
                                            for k, v in pt.tags.items()))
                    for pt in replay.tags]
    removed = []
    for pdel in replay.deletions:
        m = model(pdel.name)
        removed.append(replace(pdel, changed=(m.tags.get(deletions_mod.TAG) if m else None)
                               != pdel.history))
    return replace(replay, aliases=aliases, descriptions=texts, tags=planned_tags,
                   deletions=removed)


def apply_journal(keep: Keep, replay: JournalReplay) -> None:
    """Write the changes :meth:`_journal_changes` marked, without hooks or new journal
    entries: they restore changes the plugins already accepted and the journal holds."""
    for name in sorted({a.name for a in replay.aliases if a.changed}
                       | {d.name for d in replay.descriptions if d.changed}
                       | {d.name for d in replay.deletions if d.changed}):
        keep.registry.create_model(name)  # a model whose versions are all gone
    for pdel in replay.deletions:
        if pdel.changed:
            keep.registry.set_model_tag(pdel.name, deletions_mod.TAG, pdel.history)
    for pa in replay.aliases:
        if pa.set_history:
            keep.registry.set_model_tag(pa.name, aliases_mod.HISTORY_TAG + pa.alias,
                                        pa.history)
        if pa.set_alias:
            if pa.version is None:
                keep.registry.delete_alias(pa.name, pa.alias)
            else:
                keep.registry.set_alias(pa.name, pa.alias, pa.version)
    for pd in replay.descriptions:
        if pd.changed:
            if pd.version is None:
                refresh_model(keep, pd.name, user=pd.text)
            else:
                refresh_version(keep, pd.name, pd.version, user=pd.text)
    for pt in replay.tags:
        if pt.changed:
            for key, value in sorted(pt.tags.items()):
                keep.registry.set_tag(pt.name, pt.version, key, value)
