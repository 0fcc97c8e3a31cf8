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

from typing import TYPE_CHECKING, Any

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
    SourceError,
    StoreBusyError,
    StoreError,
    StoreKeyError,
    StoreUnreachableError,
    UnsafePathError,
    VetoError,
)

if TYPE_CHECKING:
    from modelkeep.api import Diff, FileChange, Keep, ModelVersion, TensorChanges, open
    from modelkeep.training import Tracker, track

__version__ = "0.1.0"

_LAZY = {"Diff", "FileChange", "Keep", "ModelVersion", "TensorChanges", "open"}
_LAZY_TRAINING = {"Tracker", "track"}


def __getattr__(name: str) -> Any:
    # The API pulls in the store (fsspec, blake3); keep `import modelkeep` itself instant.
    if name in _LAZY:
        from modelkeep import api

        return getattr(api, name)
    if name in _LAZY_TRAINING:
        from modelkeep import training

        return getattr(training, name)
    raise AttributeError(f"module 'modelkeep' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "CredentialsError",
    "DestinationExistsError",
    "Diff",
    "DirtyWorkspaceError",
    "FileChange",
    "IntegrityError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidRefError",
    "Keep",
    "MissingExtraError",
    "ModelVersion",
    "ModelkeepError",
    "NotFoundError",
    "PluginError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryPermissionError",
    "SourceError",
    "StoreBusyError",
    "StoreError",
    "StoreKeyError",
    "StoreUnreachableError",
    "TensorChanges",
    "Tracker",
    "UnsafePathError",
    "VetoError",
    "__version__",
    "open",
    "track",
]
