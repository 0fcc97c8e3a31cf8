"""modelkeep: version control for large models.

A content-addressed, chunk-deduplicated store on any fsspec filesystem, registered in the MLflow
Model Registry::

    import modelkeep
    keep = modelkeep.open()                      # store and registry from modelkeep.toml / env
    v = keep.register("llama-ft", "out/checkpoint", aliases=["candidate"])
    keep.pull("llama-ft@candidate", "serving/model")

    with modelkeep.track("llama-ft", every=500, monitor="val_loss", keep_last=3) as run:
        ...                                      # training loop
        run.checkpoint("out/checkpoint", step=step, metrics={"val_loss": val_loss})

Importing this package is cheap: MLflow and the storage backends load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelkeep._lazy import exports
from modelkeep.errors import (
    CheckpointError,
    ConfigError,
    CredentialsError,
    DestinationExistsError,
    DirtyWorkspaceError,
    IntegrityError,
    InvalidInputError,
    InvalidNameError,
    InvalidRefError,
    MissingExtraError,
    ModelkeepError,
    NotFoundError,
    PluginError,
    RegistryAuthError,
    RegistryError,
    RegistryPermissionError,
    SignInError,
    SourceError,
    StoreBusyError,
    StoreError,
    StoreFullError,
    StoreKeyError,
    StoreUnreachableError,
    UnsafePathError,
    VetoError,
)

if TYPE_CHECKING:
    from modelkeep.aliases import AliasEvent
    from modelkeep.catalog.deletions import DeletionEvent
    from modelkeep.hooks import Finding
    from modelkeep.keep import Keep
    from modelkeep.ops.fetch import FetchResult
    from modelkeep.ops.rebuild import RebuildReport
    from modelkeep.ops.repair import RepairResult
    from modelkeep.ops.results import (
        DeletedVersion,
        DeleteReport,
        Diff,
        FileChange,
        Model,
        ModelLog,
        ModelVersion,
        TensorChange,
        TensorChanges,
        VersionList,
        VersionRef,
    )
    from modelkeep.ops.usage import StoreUsage
    from modelkeep.signing import SignatureStatus, Signer
    from modelkeep.store import (
        GcReport,
        Snapshot,
        SnapshotFile,
        Store,
        SyncReport,
        VerifyReport,
    )
    from modelkeep.training import PendingCheckpoint, Tracker
    from modelkeep.wiring import fetch, open, track

__version__ = "0.1.0"

# Every type a public Keep method returns, and the entry points; imported on first use.
_LAZY = {
    "AliasEvent": "modelkeep.aliases",
    "DeletedVersion": "modelkeep.ops.results",
    "DeleteReport": "modelkeep.ops.results",
    "DeletionEvent": "modelkeep.catalog.deletions",
    "Diff": "modelkeep.ops.results",
    "FileChange": "modelkeep.ops.results",
    "Finding": "modelkeep.hooks",
    "GcReport": "modelkeep.store",
    "Keep": "modelkeep.keep",
    "Model": "modelkeep.ops.results",
    "ModelLog": "modelkeep.ops.results",
    "ModelVersion": "modelkeep.ops.results",
    "PendingCheckpoint": "modelkeep.training",
    "RebuildReport": "modelkeep.ops.rebuild",
    "RepairResult": "modelkeep.ops.repair",
    "SignatureStatus": "modelkeep.signing",
    "Signer": "modelkeep.signing",
    "Snapshot": "modelkeep.store",
    "SnapshotFile": "modelkeep.store",
    "Store": "modelkeep.store",
    "SyncReport": "modelkeep.store",
    "StoreUsage": "modelkeep.ops.usage",
    "TensorChange": "modelkeep.ops.results",
    "VersionList": "modelkeep.ops.results",
    "VersionRef": "modelkeep.ops.results",
    "TensorChanges": "modelkeep.ops.results",
    "Tracker": "modelkeep.training",
    "VerifyReport": "modelkeep.store",
    "fetch": "modelkeep.wiring",
    "FetchResult": "modelkeep.ops.fetch",
    "open": "modelkeep.wiring",
    "track": "modelkeep.wiring",
}


# The API pulls in the store (fsspec, blake3): `import modelkeep` itself stays instant.
__getattr__ = exports(__name__, _LAZY, globals())


__all__ = [
    "AliasEvent",
    "CheckpointError",
    "ConfigError",
    "CredentialsError",
    "DeleteReport",
    "DeletedVersion",
    "DeletionEvent",
    "DestinationExistsError",
    "Diff",
    "DirtyWorkspaceError",
    "FetchResult",
    "FileChange",
    "Finding",
    "GcReport",
    "IntegrityError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidRefError",
    "Keep",
    "MissingExtraError",
    "Model",
    "ModelLog",
    "ModelVersion",
    "ModelkeepError",
    "NotFoundError",
    "PendingCheckpoint",
    "PluginError",
    "RebuildReport",
    "RegistryAuthError",
    "RegistryError",
    "RegistryPermissionError",
    "RepairResult",
    "SignInError",
    "SignatureStatus",
    "Signer",
    "Snapshot",
    "SnapshotFile",
    "SourceError",
    "Store",
    "StoreBusyError",
    "StoreError",
    "StoreFullError",
    "StoreKeyError",
    "StoreUnreachableError",
    "StoreUsage",
    "SyncReport",
    "TensorChange",
    "TensorChanges",
    "Tracker",
    "UnsafePathError",
    "VerifyReport",
    "VersionList",
    "VersionRef",
    "VetoError",
    "__version__",
    "fetch",
    "open",
    "track",
]
