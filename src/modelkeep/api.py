"""The names the Python API had before :mod:`modelkeep.keep`, :mod:`modelkeep.wiring` and
:mod:`modelkeep.ops` held them; kept so that ``from modelkeep.api import Keep`` goes on
working."""

from __future__ import annotations

from modelkeep.catalog.tags import TAG_PREFIX, lineage_tags
from modelkeep.keep import Keep
from modelkeep.ops.results import (
    DeletedVersion,
    Diff,
    FileChange,
    ModelVersion,
    TensorChanges,
)
from modelkeep.stores import hook_keys, open_locator
from modelkeep.wiring import open, open_store

__all__ = ["TAG_PREFIX", "DeletedVersion", "Diff", "FileChange", "Keep", "ModelVersion",
           "TensorChanges", "hook_keys", "lineage_tags", "open", "open_locator", "open_store"]
