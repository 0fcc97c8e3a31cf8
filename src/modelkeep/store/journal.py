"""The registry journal: write-once records of catalogue changes the snapshots cannot show.

A snapshot records what was registered; it cannot record what happened to the catalogue
afterwards: aliases set, moved, rolled back or deleted, descriptions edited. Each such change is
first written here as one small object, and only then made in the registry, so the store alone
still holds everything a registry rebuild needs (docs/format.md §10.4).

An entry is an object of kind 3 under ``journal/<id[0:2]>/<id[2:]>`` whose payload is canonical
JSON::

    {"action":"set","alias":"champion","author":"ana@ws1","format":1,"name":"llm-ft",
     "nonce":"4f1c09a2d5e6b7c8","op":"alias","snapshot":"881a…9ff",
     "time":"2026-11-29T12:00:00.123456Z","type":"modelkeep.journal","version":3}

Its id is the BLAKE3 of the payload, like every object; the random ``nonce`` makes two entries
with equal content (the same alias set twice in one microsecond by two clients) distinct objects,
so concurrent writers never meet on one name and nothing is ever overwritten. Entries are ordered
by ``time`` then id: the writer keeps ``time`` strictly increasing within a process, so one
client's entries replay in the order it made them; entries of two clients in the same microsecond
are concurrent and the id decides.

This module knows the fields every entry has (``format``, ``type``, ``time``, ``nonce``,
``author``, ``name``, ``op``); what an operation's own members mean, and how a rebuild replays
them, belongs to :mod:`modelkeep.rebuild`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from modelkeep.errors import IntegrityError, InvalidInputError, NotFoundError
from modelkeep.store.codec import Kind
from modelkeep.store.hashing import content_id
from modelkeep.store.snapshot import CREATED_FORMAT, canonical_json

if TYPE_CHECKING:
    from modelkeep.store.objects import ObjectDB

JOURNAL_FORMAT = 1
JOURNAL_TYPE = "modelkeep.journal"
COMMON = frozenset({"format", "type", "time", "nonce", "author", "name", "op"})
MAX_ENTRY = 64 * 1024  # descriptions are at most 5000 characters; anything larger is not ours

_clock_lock = threading.Lock()
_last_time: datetime | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One recorded catalogue change."""

    id: str
    time: str  # UTC, CREATED_FORMAT (microseconds)
    author: str
    name: str  # the registered model it concerns
    op: str
    data: Mapping[str, Any]  # the operation's own members

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "author": self.author, "name": self.name,
                "op": self.op, **self.data}


def next_time() -> str:
    """Now, but strictly later than the previous entry this process wrote: entries of one
    client then replay in the order it made them even when the clock repeats a microsecond or
    steps back."""
    global _last_time
    with _clock_lock:
        now = datetime.now(UTC)
        if _last_time is not None and now <= _last_time:
            now = _last_time + timedelta(microseconds=1)
        _last_time = now
        return now.strftime(CREATED_FORMAT)


def encode(name: str, op: str, data: Mapping[str, Any], *, author: str,
           time: str | None = None, nonce: str | None = None) -> tuple[str, bytes, JournalEntry]:
    """The id, payload and entry of a new journal entry."""
    if not name or not isinstance(name, str) or not op or not isinstance(op, str):
        raise InvalidInputError("a journal entry needs a model name and an operation")
    clash = COMMON & set(data)
    if clash:
        raise InvalidInputError(f"journal members {sorted(clash)} are reserved")
    for key, value in data.items():
        # No floats: canonical JSON must have one spelling for every value.
        if value is not None and not isinstance(value, str | int):
            raise InvalidInputError(f"journal member {key!r} is a {type(value).__name__}",
                                    hint="journal members are strings, integers or null")
    doc = {**data, "format": JOURNAL_FORMAT, "type": JOURNAL_TYPE,
           "time": time or next_time(), "nonce": nonce or os.urandom(8).hex(),
           "author": author, "name": name, "op": op}
    payload = canonical_json(doc)
    eid = content_id(payload)
    return eid, payload, JournalEntry(eid, doc["time"], author, name, op, dict(data))


def parse(payload: bytes | memoryview, eid: str) -> JournalEntry:
    """Validate one entry read from a store (untrusted input)."""
    what = f"journal entry {eid[:12]}"
    try:
        doc = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{what} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("type") != JOURNAL_TYPE:
        raise IntegrityError(f"{what} is not a journal entry")
    if doc.get("format") != JOURNAL_FORMAT or isinstance(doc.get("format"), bool):
        raise IntegrityError(f"{what} has format {doc.get('format')!r}; this modelkeep reads "
                             f"{JOURNAL_FORMAT}", hint="upgrade modelkeep")
    for key in ("time", "nonce", "author", "name", "op"):
        if not isinstance(doc.get(key), str):
            raise IntegrityError(f"{what}: {key!r} is missing or not a string")
    try:
        datetime.strptime(doc["time"], CREATED_FORMAT)
    except ValueError:
        raise IntegrityError(f"{what}: 'time' is not {CREATED_FORMAT}") from None
    if not doc["name"] or not doc["op"]:
        raise IntegrityError(f"{what}: empty 'name' or 'op'")
    data = {k: v for k, v in doc.items() if k not in COMMON}
    return JournalEntry(eid, doc["time"], doc["author"], doc["name"], doc["op"], data)


def write(db: ObjectDB, name: str, op: str, data: Mapping[str, Any], *,
          author: str) -> JournalEntry:
    """Append one entry (a conditional create of a new object; never an overwrite)."""
    _eid, payload, entry = encode(name, op, data, author=author)
    if len(payload) > MAX_ENTRY:
        raise InvalidInputError(f"journal entry of {len(payload)} bytes is too large",
                                hint=f"entries hold at most {MAX_ENTRY} bytes")
    # The store's own id: keyed in an encrypted store, where the entry is sealed too.
    eid = db.object_id(payload)
    db.put(Kind.JOURNAL, eid, payload)
    return dataclasses.replace(entry, id=eid)


def read_all(db: ObjectDB) -> tuple[list[JournalEntry], list[tuple[str, str]]]:
    """Every entry in replay order (``time``, then id), and ``(id, reason)`` for each entry that
    could not be used (damaged, malformed, vanished while listing)."""

    def load(eid: str) -> tuple[str, JournalEntry | None, str]:
        try:
            return eid, parse(db.get(Kind.JOURNAL, eid, f"journal entry {eid[:12]}"), eid), ""
        except (IntegrityError, NotFoundError) as exc:
            return eid, None, exc.message

    # Entries are small and each is a round trip on an object store: fetch them together.
    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-journal") as pool:
        loaded = list(pool.map(load, list(db.iter_ids(Kind.JOURNAL))))
    entries = [e for _eid, e, _why in loaded if e is not None]
    bad = [(eid, why) for eid, e, why in loaded if e is None]
    entries.sort(key=lambda e: (e.time, e.id))
    return entries, bad
