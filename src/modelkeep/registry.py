"""The catalogue interface :mod:`modelkeep.ops` talks to.

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


@dataclass(frozen=True)
class RegistryModel:
    """A registered model as the registry knows it: its own description and tags (not its
    versions'), and where each alias points."""

    name: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class Registry(Protocol):
    """What modelkeep needs from a model catalogue.

    Eight methods are optional. ``newest_versions(name, limit) -> tuple[list[RegistryVersion],
    bool]``: the *limit* highest-numbered versions of *name*, oldest first, with their aliases,
    and whether older ones exist; NotFoundError for an unknown model. ``list NAME`` and ``log``
    show a model's newest versions by default; a registry that pages from the newest answers
    without reading every version (an MLflow server spends about 1.5 ms on each version it
    returns), and without the method every version is read and cut.
    ``models_tagged(key, value) -> set[str]``: the names of the models with a version tagged
    *key* = *value*, in one search. Retention uses it to find the models a training run expired
    without listing every model's versions (:mod:`modelkeep.policy.retention`); a registry
    without it is asked model by model.
    ``search_versions(name, tags) -> list[RegistryVersion]``: the versions of model *name*
    (every model when None) carrying every tag in *tags*, with their aliases, in as few requests
    as the registry allows (``modelkeep search``, :mod:`modelkeep.ops.search`). And
    ``check_writable(name) -> None``, which raises the registry's refusal
    (:class:`~modelkeep.errors.RegistryPermissionError`) when the caller may not add versions to
    the existing model *name*: register asks it before uploading anything, so a refused register
    stores nothing.
    ``latest_without_aliases(name) -> RegistryVersion | None``: :meth:`latest` with its
    ``aliases`` left empty, for a registry where the aliases cost a request of their own (an
    MLflow server's search results carry none). Register asks it twice, for the delta parent and
    the reuse check, and needs the aliases only when the content is reused.
    ``versions_by_snapshot(name, prefix) -> list[RegistryVersion]``: the versions of *name*
    whose source names a snapshot id starting with the hex *prefix*, oldest first, with their
    aliases (more may be returned: the caller checks each source); NotFoundError for an unknown
    model. ``NAME@9f2c41ab`` resolves through it in one search instead of reading every
    version, which without it is what happens.
    ``model_list() -> list[tuple[RegistryModel, int | None]]``: every model, by name, with the
    number of its newest version (None: it has none), in one search where the registry allows
    (``modelkeep list``); without it each model is asked for both.
    ``model_with_newest(name, limit) -> tuple[RegistryModel, list[RegistryVersion], bool]``:
    the model and :meth:`newest_versions` together, where both come from the same requests
    (``modelkeep log``); without it the model is asked beside the versions.
    """

    uri: str

    def create_version(
        self,
        name: str,
        source: str,
        *,
        tags: Mapping[str, str],
        description: str | None = None,
        run_id: str | None = None,
        user_id: str | None = None,
    ) -> RegistryVersion:
        """Create the model if needed and a new version of it; the registry picks the number.

        *run_id* links the version to the training run that produced it; when it is None an
        implementation may find the run itself (MLflow's: the active run); ``""`` links none.
        *user_id* is who registered it (the snapshot's author), for a registry that records
        it (MLflow's "Created by"); one that cannot set it ignores it."""
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

    def get_model(self, name: str) -> RegistryModel:
        """Raise :class:`~modelkeep.errors.NotFoundError` if the model does not exist."""
        ...

    def create_model(self, name: str) -> None:
        """Create an empty registered model; nothing happens if it exists."""
        ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def delete_version(self, name: str, version: int) -> None:
        """Remove one version (and any alias on it). Raise
        :class:`~modelkeep.errors.NotFoundError` if absent."""
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Raise :class:`~modelkeep.errors.NotFoundError` if the alias is not set."""
        ...

    def set_tag(self, name: str, version: int, key: str, value: str) -> None: ...

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag of the registered model itself (not of a version)."""
        ...

    def set_description(self, name: str, version: int | None, text: str) -> None:
        """Set the description of a version, or of the model when *version* is None."""
        ...
