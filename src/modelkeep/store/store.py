"""The :class:`Store`: one content-addressed model store on one fsspec location.

It ties the object database, chunking, snapshots and the known-chunk cache together and is the
only thing above ``store/`` that callers use. It knows nothing of registries or model names beyond
what a snapshot records.

URI grammar (``modelkeep://`` names a version's files wherever the store is)::

    modelkeep://<protocol>/<store path>/@<snapshot id>[/<file path>]

for example ``modelkeep://s3/bucket/models/@9f2c…e1/model.safetensors`` or
``modelkeep://file/home/me/proj/.modelkeep/store/@9f2c…e1``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelkeep.errors import IntegrityError, InvalidInputError, NotFoundError, StoreError
from modelkeep.store import journal as journal_mod
from modelkeep.store.cache import KnownChunks
from modelkeep.store.codec import Kind
from modelkeep.store.hashing import content_id
from modelkeep.store.ingest import Ingestor, IngestStats, SourceFile
from modelkeep.store.journal import JournalEntry
from modelkeep.store.location import Location, location_from_locator, parse_location
from modelkeep.store.materialize import SnapshotFile, materialize
from modelkeep.store.objects import ObjectDB
from modelkeep.store.runs import RunArtifacts
from modelkeep.store.snapshot import CREATED_FORMAT, FileEntry, Snapshot, parse
from modelkeep.store.verify import Problem, VerifyReport, verify_snapshots

SCHEME = "modelkeep"
STORE_FORMAT = 1
MAX_URI = 500
_URI = re.compile(r"^modelkeep://(?P<locator>[^@]+?)/@(?P<sid>[0-9a-f]{64})(?:/(?P<path>.*))?$")
_RUNS_URI = re.compile(r"^modelkeep://(?P<locator>[^@]+?)/@runs(?:/(?P<prefix>.*))?$")

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ParsedURI:
    locator: str
    snapshot_id: str
    path: str | None


def parse_uri(uri: str) -> ParsedURI:
    match = _URI.match(uri or "")
    if not match:
        raise InvalidInputError(
            f"not a modelkeep URI: {uri!r}",
            hint="expected modelkeep://PROTOCOL/STORE-PATH/@SNAPSHOT-ID[/FILE]",
        )
    path = (match.group("path") or "").strip("/")
    return ParsedURI(match.group("locator"), match.group("sid"), path or None)


def parse_runs_uri(uri: str) -> tuple[str, str] | None:
    """``(locator, run prefix)`` of a run-artifact URI ``modelkeep://LOCATOR/@runs[/PREFIX]``,
    or None if *uri* is not one."""
    match = _RUNS_URI.match(uri or "")
    if not match:
        return None
    return match.group("locator"), (match.group("prefix") or "").strip("/")


def utc_now() -> str:
    return datetime.now(UTC).strftime(CREATED_FORMAT)


class Store:
    """A model store at one location."""

    def __init__(self, location: Location, *, use_cache: bool | None = None) -> None:
        self.location = location
        self.db = ObjectDB(location)
        if use_cache is None:
            use_cache = not location.is_local and location.protocol != "memory"
        self.known = KnownChunks(self._cache_key()) if use_cache else None
        self._descriptor_ok = False

    def _cache_key(self) -> str:
        # The locator leaves out the endpoint, so two services with a bucket of the same name
        # would share entries; the options (endpoint, account) tell them apart. Hashed, because
        # they may hold secrets.
        opts = json.dumps(dict(self.location.options), sort_keys=True, default=str)
        return f"{self.location.locator}#{content_id(opts.encode())[:16]}"

    @classmethod
    def open(cls, url: str, options: dict[str, Any] | None = None) -> Store:
        return cls(parse_location(url, options))

    @classmethod
    def from_locator(cls, locator: str, options: dict[str, Any] | None = None) -> Store:
        return cls(location_from_locator(locator, options))

    @property
    def url(self) -> str:
        return self.location.url

    def uri(self, snapshot_id: str, path: str | None = None) -> str:
        uri = f"{SCHEME}://{self.location.locator}/@{snapshot_id}"
        if path:
            uri += "/" + path
        if len(uri) > MAX_URI and path is None:
            raise StoreError(
                f"store location is too long for a version URI ({len(uri)} > {MAX_URI} chars)",
                hint="use a shorter store path",
            )
        return uri

    def runs_uri(self, prefix: str = "") -> str:
        """The artifact location for MLflow runs under *prefix* (docs/format.md §6)."""
        uri = f"{SCHEME}://{self.location.locator}/@runs"
        return f"{uri}/{prefix.strip('/')}" if prefix.strip("/") else uri

    def runs(self, prefix: str = "") -> RunArtifacts:
        """The run artifacts stored under *prefix*."""
        return RunArtifacts(self, prefix)

    # -- descriptor ------------------------------------------------------------------------

    def _descriptor(self) -> dict[str, Any] | None:
        try:
            raw = self.db.read_blob(self.db.descriptor_path(), "store descriptor")
        except NotFoundError:
            return None
        try:
            data = json.loads(raw)
            fmt = int(data["format"])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"store descriptor at {self.url} is malformed",
                hint="the location does not hold a modelkeep store",
            ) from None
        if fmt != STORE_FORMAT:
            raise StoreError(
                f"store at {self.url} has format {fmt}; this modelkeep reads {STORE_FORMAT}",
                hint="upgrade modelkeep",
            )
        return data

    def ensure_initialized(self) -> None:
        if self._descriptor_ok:
            return
        if self._descriptor() is None:
            if self.location.is_local:
                os.makedirs(self.location.root, exist_ok=True)
            blob = json.dumps(
                {"format": STORE_FORMAT, "type": "modelkeep.store", "hash": "blake3",
                 "created": utc_now()}, sort_keys=True
            ).encode()
            self.db.put_raw_once(self.db.descriptor_path(), blob)
            self._descriptor()
        self._descriptor_ok = True

    # -- writing ---------------------------------------------------------------------------

    def ingest(
        self, sources: list[SourceFile], progress: Progress | None = None
    ) -> tuple[tuple[FileEntry, ...], IngestStats]:
        """Store the chunks of *sources*; returns their file entries and what was added."""
        self.ensure_initialized()
        return Ingestor(self.db, known=self.known).ingest(sources, progress)

    def save_snapshot(self, snapshot: Snapshot) -> str:
        """Write the snapshot object (after its chunks; before any registry entry)."""
        self.ensure_initialized()
        payload = snapshot.encode()
        sid = snapshot.id
        self.db.put(Kind.SNAPSHOT, sid, payload)
        return sid

    def journal_append(self, name: str, op: str, data: Mapping[str, Any], *,
                       author: str) -> JournalEntry:
        """Record a catalogue change of model *name* (before the registry makes it)."""
        self.ensure_initialized()
        return journal_mod.write(self.db, name, op, data, author=author)

    # -- reading ---------------------------------------------------------------------------

    def journal(self) -> tuple[list[JournalEntry], list[tuple[str, str]]]:
        """Every journal entry in replay order, and ``(id, reason)`` of unusable ones."""
        return journal_mod.read_all(self.db)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        return parse(
            self.db.get(Kind.SNAPSHOT, snapshot_id, f"snapshot {snapshot_id[:12]}"),
            f"snapshot {snapshot_id[:12]}",
        )

    def snapshot_ids(self) -> Iterator[str]:
        return self.db.iter_ids(Kind.SNAPSHOT)

    def materialize(
        self,
        snapshot: Snapshot,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> Path:
        return materialize(self.db, snapshot, dest, overwrite=overwrite, progress=progress)

    def open_file(self, snapshot: Snapshot, path: str) -> SnapshotFile:
        entry = snapshot.file(path.strip("/"))
        if entry is None:
            raise NotFoundError(
                f"no file {path!r} in this version",
                hint="list its files with `modelkeep show REF`",
            )
        return SnapshotFile(self.db, entry)

    def verify(
        self, snapshot_ids: list[str] | None = None, progress: Progress | None = None
    ) -> VerifyReport:
        """Verify the given snapshots (default: every snapshot in the store) and their chunks."""
        ids = list(self.snapshot_ids()) if snapshot_ids is None else snapshot_ids
        loaded: list[tuple[str, Snapshot]] = []
        report_extra: list[Problem] = []

        def load(sid: str) -> tuple[str, Snapshot | None, str | None]:
            try:
                return sid, self.load_snapshot(sid), None
            except (IntegrityError, NotFoundError) as exc:
                return sid, None, exc.message

        with ThreadPoolExecutor(8) as pool:
            for sid, snap, reason in pool.map(load, ids):
                if snap is None:
                    report_extra.append(Problem(sid, None, None, None, sid, reason or "unreadable"))
                else:
                    loaded.append((sid, snap))
        report = verify_snapshots(self.db, loaded, progress=progress)
        report.snapshots += len(report_extra)
        report.problems[:0] = report_extra
        return report

    def stored_bytes(self, kind: Kind = Kind.CHUNK) -> int:
        """Bytes the store holds for *kind* (headers included): the figure dedup is judged by."""
        return sum(self.db.size(kind, oid) for oid in self.db.iter_ids(kind))
