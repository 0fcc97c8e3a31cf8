"""The store backends the contract suites run on: memory, local disk, S3 (moto), Azure (Azurite).

Each yields a :class:`Backend` that makes fresh, isolated stores; every backend shares one MLflow
SQLite registry per session, and tests use unique model names. :func:`make_backend` builds one
for a test module's fixture (``tests/test_contract.py`` and the modules that run their own tests
on several backends); a store-level suite passes no registry and starts no MLflow.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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


BACKENDS = ["memory", "local", "s3", "azure"]


def make_backend(kind: str, request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory, registry: str = "") -> Backend:
    """A backend of *kind* (one of :data:`BACKENDS`); S3 and Azure start their session's
    server (moto, Azurite) on first use."""
    if kind == "memory":
        return memory_backend(registry)
    if kind == "local":
        return local_backend(tmp_path_factory.mktemp("stores"), registry)
    if kind == "s3":
        server = request.getfixturevalue("moto_s3")
        return Backend("s3", registry,
                       lambda: f"s3://{server.make_bucket()}/models", dict(server.storage_options))
    if kind == "azure":
        server = request.getfixturevalue("azurite")
        return Backend("azure", registry,
                       lambda: f"az://{server.make_container()}/models",
                       dict(server.storage_options))
    raise ValueError(f"unknown backend {kind!r}")


def unique_name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def local_backend(tmp_root: Path, registry: str) -> Backend:
    return Backend("local", registry, lambda: str(tmp_root / unique_name("store")))


def memory_backend(registry: str) -> Backend:
    return Backend("memory", registry, lambda: f"memory://{unique_name('store')}",
                   multiprocess=False)
