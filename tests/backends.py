"""The store backends the contract suite runs on: memory, local disk, S3 (moto), Azure (Azurite).

Each yields a :class:`Backend` that makes fresh, isolated stores; every backend shares one MLflow
SQLite registry per session, and tests use unique model names.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modelkeep
from modelkeep.api import Keep


@dataclass
class Backend:
    name: str
    registry: str
    make_url: Callable[[], str]
    options: dict[str, Any] = field(default_factory=dict)
    multiprocess: bool = True  # memory:// lives in one process only

    def new_store_url(self) -> str:
        return self.make_url()

    def open(self, url: str | None = None) -> Keep:
        return modelkeep.open(
            store=url or self.new_store_url(), registry=self.registry, store_options=self.options
        )

    def env(self, url: str) -> dict[str, str]:
        """Environment for a `modelkeep` subprocess using this store."""
        return {
            "MODELKEEP_STORE": url,
            "MODELKEEP_REGISTRY": self.registry,
            "MODELKEEP_STORE_OPTIONS": json.dumps(self.options),
        }


def unique_name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def local_backend(tmp_root: Path, registry: str) -> Backend:
    return Backend("local", registry, lambda: str(tmp_root / unique_name("store")))


def memory_backend(registry: str) -> Backend:
    return Backend("memory", registry, lambda: f"memory://{unique_name('store')}",
                   multiprocess=False)
