"""The content-addressed, chunk-deduplicated model store. Knows fsspec, nothing above it.

Its parts are imported on first use (PEP 562): a command that only reads the registry does not
pay for fsspec, asyncio and the codecs when it imports a name from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelkeep._lazy import exports

if TYPE_CHECKING:
    from modelkeep.store.codec import Kind
    from modelkeep.store.gc import ChunksCollectedError, GcItem, GcMark, GcReport
    from modelkeep.store.ingest import IngestStats, SourceFile, chunk_list, scan_local
    from modelkeep.store.journal import JournalEntry
    from modelkeep.store.location import Location, parse_location
    from modelkeep.store.materialize import SnapshotFile
    from modelkeep.store.runs import RunArtifacts
    from modelkeep.store.safetensors import Tensor
    from modelkeep.store.snapshot import FileEntry, Parent, Snapshot, check_relpath
    from modelkeep.store.store import RepairReport, Store
    from modelkeep.store.sync import SyncReport
    from modelkeep.store.uri import ParsedURI, parse_runs_uri, parse_uri, utc_now
    from modelkeep.store.verify import Problem, VerifyReport

_WHERE = {
    "ChunksCollectedError": "modelkeep.store.gc",
    "FileEntry": "modelkeep.store.snapshot",
    "GcItem": "modelkeep.store.gc",
    "GcMark": "modelkeep.store.gc",
    "GcReport": "modelkeep.store.gc",
    "IngestStats": "modelkeep.store.ingest",
    "JournalEntry": "modelkeep.store.journal",
    "Kind": "modelkeep.store.codec",
    "Location": "modelkeep.store.location",
    "Parent": "modelkeep.store.snapshot",
    "ParsedURI": "modelkeep.store.uri",
    "Problem": "modelkeep.store.verify",
    "RepairReport": "modelkeep.store.store",
    "RunArtifacts": "modelkeep.store.runs",
    "Snapshot": "modelkeep.store.snapshot",
    "SnapshotFile": "modelkeep.store.materialize",
    "SourceFile": "modelkeep.store.ingest",
    "Store": "modelkeep.store.store",
    "SyncReport": "modelkeep.store.sync",
    "Tensor": "modelkeep.store.safetensors",
    "VerifyReport": "modelkeep.store.verify",
    "check_relpath": "modelkeep.store.snapshot",
    "chunk_list": "modelkeep.store.ingest",
    "parse_location": "modelkeep.store.location",
    "parse_runs_uri": "modelkeep.store.uri",
    "parse_uri": "modelkeep.store.uri",
    "scan_local": "modelkeep.store.ingest",
    "utc_now": "modelkeep.store.uri",
}



__getattr__ = exports(__name__, _WHERE, globals())

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
