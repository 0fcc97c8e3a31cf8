"""Run artifacts: files that MLflow runs log into a store, chunk-deduplicated like versions.

MLflow lets a run log a path again, so a run's files cannot be a snapshot (snapshots never
change). Each logged file is stored as its chunks (write-once, shared with every version and every
other run) plus an *artifact manifest* at ``runs/<run prefix>/<path>``: canonical JSON
``{"format": 1, "type": "modelkeep.artifact", "file": <file entry>}`` with the file entry fields of
a snapshot (docs/format.md §5.3, validated the same way). Chunks are written first and the manifest
last, so a failed log leaves only unreferenced chunks; logging a path again replaces its manifest
(atomically on local disk; a single PUT on object stores). Checkpoints logged every epoch thus
share every unchanged tensor. An encrypted store refuses run artifacts: their manifests would be
plaintext files named by the artifacts' paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from modelkeep.errors import IntegrityError, NotFoundError, StoreError
from modelkeep.store.codec import Kind
from modelkeep.store.gc import ChunksCollectedError
from modelkeep.store.ingest import scan_local
from modelkeep.store.location import translate_errors
from modelkeep.store.materialize import SnapshotFile
from modelkeep.store.objects import MAX_OBJECT
from modelkeep.store.snapshot import canonical_json, check_relpath, parse_file_entry

if TYPE_CHECKING:
    from modelkeep.store.ingest import IngestStats
    from modelkeep.store.snapshot import FileEntry
    from modelkeep.store.store import Store

RUNS_DIR = "runs"
ARTIFACT_FORMAT = 1


class RunArtifacts:
    """The artifacts under one run prefix of a store (see the module docstring)."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store = store
        self.prefix = check_relpath(prefix.strip("/")) if prefix.strip("/") else ""
        base = f"{store.db.root}/{RUNS_DIR}"
        self.base = f"{base}/{self.prefix}" if self.prefix else base

    def _path(self, relpath: str) -> str:
        return f"{self.base}/{check_relpath(relpath)}" if relpath else self.base

    # -- writing ---------------------------------------------------------------------------

    def log_file(self, local_file: str | os.PathLike[str], relpath: str) -> IngestStats:
        """Store *local_file* as the artifact *relpath* (chunks, then its manifest, then the
        garbage-collection commit check of docs/format.md §13)."""
        relpath = check_relpath(relpath)
        self.store.ensure_initialized()
        if self.store.db.cipher is not None:
            # A manifest is a plain, replaceable file named by the artifact's path: it would put
            # names and chunk lists in the clear, so encrypted stores take no run artifacts.
            raise StoreError(
                f"store {self.store.url} is encrypted and does not take MLflow run artifacts",
                hint="log run artifacts to a plain store; register models into this one",
            )
        entries, stats = self.store.ingest(scan_local(local_file))
        entry = replace(entries[0], path=relpath)
        blob = canonical_json(
            {"format": ARTIFACT_FORMAT, "type": "modelkeep.artifact", "file": entry.to_json()}
        )
        path = self._path(relpath)
        self._write_manifest(path, blob)
        try:
            self.store.settle([cid for cid, _n in entry.chunks], stats.gc_mark)
        except ChunksCollectedError:
            self.store.db.delete_path(path)  # it names chunks that are gone
            raise
        return stats

    def _write_manifest(self, path: str, blob: bytes) -> None:
        db = self.store.db
        if db.location.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)  # readers see the old manifest or the new, never half
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        with translate_errors(db.location):
            db.fs.pipe_file(path, blob)

    # -- reading ---------------------------------------------------------------------------

    def entry(self, relpath: str) -> FileEntry:
        what = f"artifact {relpath!r}"
        try:
            entry = self._read(self._path(relpath), what)
        except NotFoundError:
            raise NotFoundError(f"no artifact {relpath!r} under {self.prefix or 'the run root'}",
                                hint="list the run's artifacts") from None
        if entry.path != relpath:
            raise IntegrityError(f"{what}: its manifest names {entry.path!r}")
        return entry

    def _read(self, path: str, what: str) -> FileEntry:
        """The file entry of the manifest at *path* (its own path field is not checked)."""
        raw = self.store.db.read_blob(path, what, MAX_OBJECT[Kind.SNAPSHOT])
        try:
            doc = json.loads(bytes(raw))
        except (ValueError, UnicodeDecodeError):
            raise IntegrityError(f"{what} has a malformed manifest") from None
        if (
            not isinstance(doc, dict)
            or doc.get("type") != "modelkeep.artifact"
            or doc.get("format") != ARTIFACT_FORMAT
            or not isinstance(doc.get("file"), dict)
        ):
            raise IntegrityError(f"{what} has a malformed manifest")
        return parse_file_entry(doc["file"], what)

    def open(self, relpath: str) -> SnapshotFile:
        return SnapshotFile(self.store.db, self.entry(relpath))

    def children(self, folder: str = "") -> list[tuple[str, FileEntry | None]]:
        """The direct children of *folder*: ``(relative path, entry or None for a folder)``."""
        folder = folder.strip("/")
        path = self._path(folder)
        db = self.store.db
        names: list[tuple[str, bool]] = []
        if db.location.is_local:
            if not os.path.isdir(path):
                return []
            for e in os.scandir(path):
                if not e.name.endswith(".tmp"):
                    names.append((e.name, e.is_dir()))
        else:
            with translate_errors(db.location):
                try:
                    listed = db.fs.ls(path, detail=True)
                except FileNotFoundError:
                    return []
            for item in listed:
                name = posixpath.basename(item["name"].rstrip("/"))
                if name:
                    names.append((name, item["type"] == "directory"))
        out: list[tuple[str, FileEntry | None]] = []
        for name, is_dir in sorted(names):
            rel = f"{folder}/{name}" if folder else name
            out.append((rel, None if is_dir else self.entry(rel)))
        return out

    def all_entries(self) -> list[tuple[str, FileEntry]]:
        """``(artifact path, entry)`` of every manifest under this prefix, at any depth."""
        out = []
        base = self.base.rstrip("/") + "/"
        for path, _size, _when in self.store.db.listing(self.base):
            if path.endswith(".tmp") or not path.startswith(base):
                continue
            rel = path[len(base):]
            try:
                # Where the run prefix ends is not known from here, so the manifest's own
                # path is not compared with its location.
                out.append((rel, self._read(path, f"artifact manifest {rel!r}")))
            except NotFoundError:
                continue  # replaced or removed since the listing
        return out
