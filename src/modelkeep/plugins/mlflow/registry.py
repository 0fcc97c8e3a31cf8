"""The MLflow Model Registry behind the :class:`~modelkeep.registry.Registry` protocol, through
MLflow's own ``MlflowClient``.

Works with any registry URI MLflow accepts. :func:`~modelkeep.plugins.mlflow.hooks.registry_for`
uses it for the URIs the faster adapters do not serve (database URLs, an MLflow auth plugin or
workspace) and the SQLite adapter for what it leaves to MLflow (a new file's schema where no
schema script is shipped for the installed MLflow, untested schema revisions). MLflow's
exceptions become modelkeep errors (``NotFoundError``, ``RegistryError``) worded as in
:mod:`modelkeep.plugins.mlflow._errors`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from modelkeep.errors import InvalidInputError, MissingExtraError, RegistryError
from modelkeep.plugins.mlflow import _database, _errors
from modelkeep.registry import RegistryModel, RegistryVersion

T = TypeVar("T")
_RETRYABLE = _errors.RETRYABLE


def _http_status(exc: Exception) -> int | None:
    """The HTTP status a REST error came with, if MLflow kept it (it does not always)."""
    for attr in ("status_code", "http_status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    text = str(exc)
    # A server that answers with a non-JSON body is reported as "... error code 401 != 200".
    for status in (401, 403):
        if f"error code {status}" in text or f"status code {status}" in text:
            return status
    return None


def _active_run_id() -> str | None:
    """The id of the MLflow run active in this process, if any: a version registered inside a
    training run is linked to it, as ``mlflow.register_model`` does."""
    mlflow = _mlflow()
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise MissingExtraError("mlflow", "mlflow") from exc
    # MLflow and alembic announce schema migrations on INFO; a CLI user did not ask for that.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


class MlflowRegistry:
    """A :class:`~modelkeep.registry.Registry` on MLflow's Model Registry."""

    def __init__(self, uri: str | None = None) -> None:
        mlflow = _mlflow()
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.uri = uri or mlflow.get_registry_uri()
        if _database.is_database(self.uri):
            _database.check(self.uri)  # one line within seconds, not MLflow's 100 s of retries
        try:
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        except ImportError as exc:  # a database URI whose driver is not installed
            error = _errors.missing_driver(self.uri, exc)
            if error is None:
                raise
            raise error from None
        except MlflowException as exc:  # a file store (mlruns), or a URI MLflow refuses
            raise _errors.unopenable(self.uri, str(exc.message)) from None

    # -- error translation ---------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            text = str(exc.message if hasattr(exc, "message") else exc)
            code = str(getattr(exc, "error_code", ""))
            status = _http_status(exc)
            if (code not in _errors.NOT_FOUND_CODES | _errors.DENIED_CODES
                    | _errors.UNAUTHENTICATED_CODES and status not in (401, 403)
                    and "not found" not in text.lower()
                    and ("max retries" in text.lower() or "connection" in text.lower())):
                raise _errors.unreachable(self.uri) from None
            error = _errors.translate(self.uri, what, code=code, status=status, message=text)
            if type(error) is RegistryError:
                raise error from exc
            raise error from None

    def _retry(self, what: str, fn: Callable[[], T], attempts: int = 12) -> T:
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                return fn()
            except MlflowException as exc:
                text = str(exc).lower()
                if attempt == attempts - 1 or not any(m in text for m in _RETRYABLE):
                    raise
            except Exception as exc:  # sqlalchemy OperationalError can escape MLflow
                text = str(exc).lower()
                if attempt == attempts - 1 or not any(m in text for m in _RETRYABLE):
                    raise RegistryError(f"registry error on {what}: {text[:300]}") from exc
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    # -- conversions ---------------------------------------------------------------------------

    @staticmethod
    def _convert(mv: Any) -> RegistryVersion:
        return RegistryVersion(
            name=mv.name,
            version=int(mv.version),
            source=mv.source or "",
            tags=dict(mv.tags or {}),
            aliases=tuple(sorted(getattr(mv, "aliases", None) or ())),
            created_ms=int(mv.creation_timestamp or 0),
            description=mv.description or "",
            run_id=mv.run_id or None,
        )

    # -- Registry protocol ---------------------------------------------------------------------

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
        # *user_id* is not set: neither MLflow's client nor its stores take one
        # (SqlAlchemyStore.create_model_version leaves the column empty).
        from mlflow.exceptions import MlflowException

        if run_id is None:
            run_id = _active_run_id()

        def ensure_model() -> None:
            try:
                self._client.create_registered_model(name)
            except MlflowException as exc:
                if str(getattr(exc, "error_code", "")) != "RESOURCE_ALREADY_EXISTS":
                    raise

        def create() -> Any:
            return self._client.create_model_version(
                name, source, run_id=run_id or None, tags=dict(tags), description=description,
                await_creation_for=0,
            )

        with self._errors(f"creating a version of {name!r}"):
            self._retry("creating the model", ensure_model)
            mv = self._retry("creating the version", create)
        return self._convert(mv)

    def get_version(self, name: str, version: int) -> RegistryVersion:
        with self._errors(f"version {name}@{version}"):
            return self._convert(self._client.get_model_version(name, str(version)))

    def get_by_alias(self, name: str, alias: str) -> RegistryVersion:
        with self._errors(f"alias {name}@{alias}"):
            return self._convert(self._client.get_model_version_by_alias(name, alias))

    def _search(self, name: str, **kwargs: Any) -> list[Any]:
        out: list[Any] = []
        token = None
        while True:
            page = self._client.search_model_versions(
                f"name = '{name}'", page_token=token, **kwargs
            )
            out.extend(page)
            token = page.token
            if not token or kwargs.get("max_results") == 1:
                return out

    def _aliases_by_version(self, name: str) -> dict[int, tuple[str, ...]]:
        # Search results carry no aliases; the registered model has them all in one call.
        model = self._client.get_registered_model(name)
        by_version: dict[int, list[str]] = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            by_version.setdefault(int(version), []).append(alias)
        return {v: tuple(sorted(a)) for v, a in by_version.items()}

    def latest(self, name: str) -> RegistryVersion | None:
        with self._errors(f"model {name!r}"):
            found = self._search(name, max_results=1, order_by=["version_number DESC"])
            if not found:
                return None
            return self._convert(self._client.get_model_version(name, found[0].version))

    def latest_without_aliases(self, name: str) -> RegistryVersion | None:
        """The highest-numbered version of *name* as one search finds it: without aliases."""
        with self._errors(f"model {name!r}"):
            found = self._search(name, max_results=1, order_by=["version_number DESC"])
        return replace(self._convert(found[0]), aliases=()) if found else None

    def versions_by_snapshot(self, name: str, prefix: str) -> list[RegistryVersion]:
        """The versions of *name* whose source has ``/@`` then *prefix* (hex) in it, oldest
        first, with their aliases: one filtered search (and the model, for the aliases)."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise InvalidInputError(f"not a snapshot id prefix: {prefix!r}",
                                    hint="give 8 to 64 hex digits of the id")
        found: list[Any] = []
        token = None
        with self._errors(f"model {name!r}"):
            aliases = self._aliases_by_version(name)
            while True:
                page = self._client.search_model_versions(
                    f"name = '{name}' AND source_path LIKE '%/@{prefix}%'", max_results=1000,
                    page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    break
        out = [replace(rv, aliases=aliases.get(rv.version, ())) for rv in map(self._convert, found)]
        return sorted(out, key=lambda v: v.version)

    def versions(self, name: str) -> list[RegistryVersion]:
        with self._errors(f"model {name!r}"):
            aliases = self._aliases_by_version(name)
            found = self._search(name, max_results=1000)
        out = [replace(rv, aliases=aliases.get(rv.version, ())) for rv in map(self._convert, found)]
        return sorted(out, key=lambda v: v.version)

    def newest_versions(self, name: str, limit: int) -> tuple[list[RegistryVersion], bool]:
        """The *limit* highest-numbered versions of *name*, oldest first, in one search page
        from the newest, and whether older ones exist (the page's token)."""
        with self._errors(f"model {name!r}"):
            aliases = self._aliases_by_version(name)
            page = self._client.search_model_versions(
                f"name = '{name}'", max_results=limit, order_by=["version_number DESC"])
        out = [replace(rv, aliases=aliases.get(rv.version, ())) for rv in map(self._convert, page)]
        return sorted(out, key=lambda v: v.version), bool(page.token)

    def models_tagged(self, key: str, value: str) -> set[str]:
        """Names of the models that have a version tagged *key* = *value*, in one search
        (retention asks this of the whole registry)."""
        names: set[str] = set()
        token = None
        with self._errors(f"searching versions tagged {key}"):
            while True:
                page = self._client.search_model_versions(
                    f"tags.`{key}` = '{value}'", max_results=1000, page_token=token)
                names.update(mv.name for mv in page)
                token = page.token
                if not token:
                    return names

    def search_versions(self, name: str | None, tags: Mapping[str, str]) -> list[RegistryVersion]:
        """Versions of *name* (every model when None) tagged with *tags*, in one filtered
        search (paged), with their aliases."""
        found: list[Any] = []
        token = None
        query = _errors.search_filter(name, tags)
        with self._errors("searching versions"):
            while True:
                page = self._client.search_model_versions(query, max_results=1000,
                                                          page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    break
            # Search results carry no aliases; each model has its own in one call.
            aliases = {m: self._aliases_by_version(m) for m in {mv.name for mv in found}}
        return [replace(rv, aliases=aliases[rv.name].get(rv.version, ()))
                for rv in map(self._convert, found)]

    def models(self) -> list[str]:
        names: list[str] = []
        token = None
        with self._errors("listing models"):
            while True:
                page = self._client.search_registered_models(max_results=1000, page_token=token)
                names.extend(m.name for m in page)
                token = page.token
                if not token:
                    break
        return sorted(names)

    def model_list(self) -> list[tuple[RegistryModel, int | None]]:
        """Every model, by name, with the number of its newest version: the search's latest
        versions (the newest per stage; the newest of those is the newest), in one paged
        search."""
        out: list[tuple[RegistryModel, int | None]] = []
        token = None
        with self._errors("listing models"):
            while True:
                page = self._client.search_registered_models(max_results=1000, page_token=token)
                for model in page:
                    newest = [int(v.version) for v in model.latest_versions or ()]
                    out.append((self._model(model), max(newest) if newest else None))
                token = page.token
                if not token:
                    break
        return sorted(out, key=lambda pair: pair[0].name)

    def get_model(self, name: str) -> RegistryModel:
        with self._errors(f"model {name!r}"):
            model = self._client.get_registered_model(name)
        return self._model(model)

    @staticmethod
    def _model(model: Any) -> RegistryModel:
        return RegistryModel(
            name=model.name,
            description=model.description or "",
            tags=dict(model.tags or {}),
            aliases={a: int(v) for a, v in (getattr(model, "aliases", None) or {}).items()},
        )

    def create_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        def create() -> None:
            try:
                self._client.create_registered_model(name)
            except MlflowException as exc:
                if str(getattr(exc, "error_code", "")) != "RESOURCE_ALREADY_EXISTS":
                    raise

        with self._errors(f"creating model {name!r}"):
            self._retry("creating the model", create)

    def delete_alias(self, name: str, alias: str) -> None:
        # MLflow deletes a missing alias silently; the protocol promises NotFoundError.
        self.get_by_alias(name, alias)
        with self._errors(f"alias {alias!r} of {name!r}"):
            self._retry("deleting the alias",
                        lambda: self._client.delete_registered_model_alias(name, alias))

    def delete_version(self, name: str, version: int) -> None:
        # MLflow answers a missing version with RESOURCE_DOES_NOT_EXIST: NotFoundError.
        with self._errors(f"version {name}@{version}"):
            self._retry("deleting the version",
                        lambda: self._client.delete_model_version(name, str(version)))

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with self._errors(f"tag {key!r} of model {name!r}"):
            self._retry("setting the tag",
                        lambda: self._client.set_registered_model_tag(name, key, value))

    def set_description(self, name: str, version: int | None, text: str) -> None:
        if version is None:
            with self._errors(f"model {name!r}"):
                self._retry("setting the description", lambda: self._client.update_registered_model(
                    name, description=text))
        else:
            with self._errors(f"version {name}@{version}"):
                self._retry("setting the description", lambda: self._client.update_model_version(
                    name, str(version), description=text))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        with self._errors(f"alias {alias!r} of {name!r}"):
            self._retry("setting the alias",
                        lambda: self._client.set_registered_model_alias(name, alias, str(version)))

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        with self._errors(f"tag {key!r} of {name}@{version}"):
            self._retry("setting the tag",
                        lambda: self._client.set_model_version_tag(name, str(version), key, value))
