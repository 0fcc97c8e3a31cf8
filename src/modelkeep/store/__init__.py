"""The content-addressed, chunk-deduplicated model store. Knows fsspec, nothing above it."""

from __future__ import annotations

from modelkeep.store.codec import Kind
from modelkeep.store.gc import ChunksCollectedError, GcItem, GcMark, GcReport
from modelkeep.store.ingest import IngestStats, SourceFile, chunk_list, scan_local
from modelkeep.store.journal import JournalEntry
from modelkeep.store.location import Location, parse_location
from modelkeep.store.materialize import SnapshotFile
from modelkeep.store.runs import RunArtifacts
from modelkeep.store.safetensors import Tensor
from modelkeep.store.snapshot import FileEntry, Parent, Snapshot, check_relpath
from modelkeep.store.store import (
    ParsedURI,
    RepairReport,
    Store,
    parse_runs_uri,
    parse_uri,
    utc_now,
)
from modelkeep.store.sync import SyncReport
from modelkeep.store.verify import Problem, VerifyReport

__all__ = [
    "ChunksCollectedError",
    "FileEntry",
    "GcItem",
    "GcMark",
    "GcReport",
    "IngestStats",
    "JournalEntry",
    "Kind",
    "Location",
    "Parent",
    "ParsedURI",
    "Problem",
    "RepairReport",
    "RunArtifacts",
    "Snapshot",
    "SnapshotFile",
    "SourceFile",
    "Store",
    "SyncReport",
    "Tensor",
    "VerifyReport",
    "check_relpath",
    "chunk_list",
    "parse_location",
    "parse_runs_uri",
    "parse_uri",
    "scan_local",
    "utc_now",
]
