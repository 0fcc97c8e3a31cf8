"""The catalogue interface :mod:`modelkeep.api` talks to.

A registry maps model names to numbered versions, each pointing at a ``modelkeep://`` URI, with
tags and aliases. The default implementation is MLflow's Model Registry
(:mod:`modelkeep.plugins.mlflow`); anything implementing :class:`Registry` can replace it, which is
why ``api.py`` imports no MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class RegistryVersion:
    """A version as the registry knows it."""

    name: str
    version: int
    source: str
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created_ms: int = 0
    description: str = ""
    run_id: str | None = None


@runtime_checkable
class Registry(Protocol):
    """What modelkeep needs from a model catalogue."""

    uri: str

    def create_version(
        self,
        name: str,
        source: str,
        *,
        tags: Mapping[str, str],
        description: str | None = None,
    ) -> RegistryVersion:
        """Create the model if needed and a new version of it; the registry picks the number."""
        ...

    def get_version(self, name: str, version: int) -> RegistryVersion:
        """Raise :class:`~modelkeep.errors.NotFoundError` if absent."""
        ...

    def get_by_alias(self, name: str, alias: str) -> RegistryVersion: ...

    def latest(self, name: str) -> RegistryVersion | None:
        """The highest-numbered version, or None if the model has none (or does not exist)."""
        ...

    def versions(self, name: str) -> list[RegistryVersion]:
        """Every version of *name*, oldest first. Raises NotFoundError for an unknown model."""
        ...

    def models(self) -> list[str]: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def set_tag(self, name: str, version: int, key: str, value: str) -> None: ...
