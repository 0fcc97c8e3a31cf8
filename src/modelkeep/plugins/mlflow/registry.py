"""The MLflow Model Registry behind the :class:`~modelkeep.registry.Registry` protocol.

Works with any registry URI MLflow accepts: a local SQLite file (the default), a database URL, or
an ``http(s)://`` MLflow server. MLflow's own exceptions are translated here, so callers see
modelkeep errors (``NotFoundError``, ``RegistryError``) with a hint.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from modelkeep.errors import (
    MissingExtraError,
    NotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryPermissionError,
)
from modelkeep.registry import RegistryModel, RegistryVersion

T = TypeVar("T")
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
_DENIED = {"PERMISSION_DENIED"}
_UNAUTHENTICATED = {"UNAUTHENTICATED", "UNAUTHORIZED"}
# SQLite lets one writer in at a time; concurrent registers from several processes see "database
# is locked" or a lost race on the version number. Both are safe to retry.
_RETRYABLE = ("database is locked", "unique constraint", "integrityerror", "deadlock",
              "lock wait timeout", "duplicate entry", "already exists")


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

        self.uri = uri or mlflow.get_registry_uri()
        self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- error translation ---------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            code = str(getattr(exc, "error_code", ""))
            # A missing alias comes back as INVALID_PARAMETER_VALUE "... not found".
            if code in _NOT_FOUND or "not found" in str(exc).lower():
                raise NotFoundError(f"{what} not found in registry {self.uri}",
                                    hint="list models with `modelkeep list`") from None
            status = _http_status(exc)
            if code in _UNAUTHENTICATED or status == 401:
                raise RegistryAuthError(
                    f"registry {self.uri} refused {what}: not logged in "
                    f"(credentials missing or wrong)",
                    hint="set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                    "(or MLFLOW_TRACKING_TOKEN) for this server",
                ) from None
            if code in _DENIED or status == 403:
                user = os.environ.get("MLFLOW_TRACKING_USERNAME")
                who = f"user {user!r}" if user else "this user"
                raise RegistryPermissionError(
                    f"registry {self.uri} refused {what}: permission denied for {who}",
                    hint="ask an MLflow admin for EDIT on the model (to register and move "
                    "aliases) or MANAGE (to delete aliases)",
                ) from None
            text = str(exc.message if hasattr(exc, "message") else exc)
            if "max retries" in text.lower() or "connection" in text.lower():
                raise RegistryError(
                    f"registry {self.uri} is unreachable",
                    hint="check the registry URI and that the server runs",
                ) from None
            raise RegistryError(f"registry error on {what}: {text.splitlines()[0][:300]}") from exc

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
    ) -> RegistryVersion:
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

    def versions(self, name: str) -> list[RegistryVersion]:
        with self._errors(f"model {name!r}"):
            aliases = self._aliases_by_version(name)
            found = self._search(name, max_results=1000)
        out = [replace(rv, aliases=aliases.get(rv.version, ())) for rv in map(self._convert, found)]
        return sorted(out, key=lambda v: v.version)

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

    def get_model(self, name: str) -> RegistryModel:
        with self._errors(f"model {name!r}"):
            model = self._client.get_registered_model(name)
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
