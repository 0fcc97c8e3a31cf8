"""An ``http(s)://`` MLflow server spoken to over MLflow's documented REST API.

The endpoints are the Model Registry's (``/api/2.0/mlflow/registered-models/*``,
``/api/2.0/mlflow/model-versions/*``), called as MLflow's own ``RestStore`` calls them: GET with
query parameters, every other method with a JSON body. The server keeps MLflow's invariants
(version numbers, timestamps, run links); this module only avoids loading MLflow's client,
which costs more than a second before the first request. Credentials, TLS and time limits are
those of :mod:`modelkeep.plugins.mlflow._http`; errors read as MLflow's client's do
(:mod:`modelkeep.plugins.mlflow._errors`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from modelkeep.errors import (
    InvalidInputError,
    NotFoundError,
    RegistryError,
    RegistryPermissionError,
)
from modelkeep.plugins.mlflow import _errors, _http
from modelkeep.registry import RegistryModel, RegistryVersion

_API = "/api/2.0/mlflow"
_T = TypeVar("_T")
_PAGE = 1000  # the largest page MLflow's registered-model search serves
_WRITE_ATTEMPTS = 8
WRITE_CHECK_TAG = "modelkeep.write-check"  # never set: deleting it only asks for EDIT


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RestRegistry:
    """A :class:`~modelkeep.registry.Registry` on an MLflow tracking server."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._base = uri.rstrip("/")
        self._client_: _http.Client | None = None
        self._creds: _http.Credentials | None = None
        # Models this instance created or saw exist: a new version of one is created without
        # asking to create the model first (create_version handles one deleted meanwhile).
        self._known: set[str] = set()

    @property
    def _client(self) -> _http.Client:
        # Made on the first request: a command that never asks the registry pays nothing.
        if self._client_ is None:
            self._client_ = _http.Client(self._base)
            self._creds = self._client_.creds
        return self._client_

    # -- transport -----------------------------------------------------------------------------

    def _call(self, method: str, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
        client = self._client
        try:
            if method == "GET":
                response = client.request(method, f"{_API}/{endpoint}", params=body)
            else:
                response = client.request(method, f"{_API}/{endpoint}", json_body=body)
        except _http.TransportError as exc:
            if exc.kind == "unreachable":
                raise _errors.unreachable(self.uri) from None
            if exc.kind == "timeout":
                raise RegistryError(
                    f"registry {self.uri} did not answer within {client.read_timeout:.0f} s",
                    hint="raise MLFLOW_HTTP_REQUEST_TIMEOUT, or check the server") from None
            if exc.kind == "untrusted":
                raise RegistryError(
                    f"registry {self.uri}: its TLS certificate is not trusted ({exc.detail})",
                    hint="set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed "
                    "it, or MLFLOW_TRACKING_INSECURE_TLS=true to skip the check") from None
            client_cert = ("if the server asks for a client certificate, set "
                           "MLFLOW_TRACKING_CLIENT_CERT_PATH to a PEM file with it and its key")
            if exc.kind == "tls":
                raise RegistryError(f"registry {self.uri}: the TLS connection failed "
                                    f"({exc.detail})", hint=client_cert) from None
            if (exc.kind == "closed" and self._base.startswith("https:")
                    and not os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")):
                # How uvicorn refuses a TLS 1.3 client without the certificate it asks for.
                raise RegistryError(f"registry {self.uri}: {exc.detail}",
                                    hint=client_cert) from None
            if exc.kind == "proxy-unreachable":
                scheme = "https" if self._base.startswith("https:") else "http"
                raise RegistryError(
                    f"registry {self.uri}: the proxy it goes through, {exc.detail}, is "
                    "unreachable",
                    hint=f"check {scheme}_proxy, or name the registry's host in no_proxy"
                ) from None
            if exc.kind == "proxy":
                raise RegistryError(f"registry {self.uri}: the proxy refused it ({exc.detail})",
                                    hint="check https_proxy and no_proxy") from None
            raise RegistryError(f"registry {self.uri}: {exc.detail}",
                                hint="check the server, then run the command again") from None
        if response.status == 200:
            try:
                data = response.json()
            except ValueError:
                raise RegistryError(f"registry {self.uri} answered {endpoint} with something "
                                    "that is not JSON", hint="is this an MLflow server?") from None
            return data if isinstance(data, dict) else {}
        code, message = "", response.text[:500]
        try:
            data = response.json()
            code = str(data.get("error_code") or "")
            message = str(data.get("message") or message)
        except (ValueError, AttributeError):
            pass
        raise _ApiError(response.status, code, message)

    def _do(self, what: str, method: str, endpoint: str, body: Mapping[str, Any],
            *, ok_codes: frozenset[str] = frozenset(), model: str | None = None,
            need: str | None = None) -> dict[str, Any]:
        """Call *endpoint*, retrying a write that lost a race on the server's database (the
        server's transaction failed as a whole, so trying again is safe), and translate errors.
        A refusal names the model (*model*, else the body's ``name``) and the permission the
        call needs: READ to read, MANAGE to delete, EDIT for every other write (MLflow's
        permission levels, which its auth plugins share)."""
        attempts = 1 if method == "GET" else _WRITE_ATTEMPTS
        for attempt in range(attempts):
            try:
                return self._call(method, endpoint, body)
            except _ApiError as exc:
                if exc.code in ok_codes:
                    return {}
                if exc.status == 404 and not exc.code:
                    # MLflow always names its error; a bare 404 is some other web server.
                    raise RegistryError(
                        f"registry {self.uri} answered {endpoint} with HTTP 404",
                        hint="is this the address of an MLflow server (with its /api path)?",
                    ) from None
                retryable = any(m in exc.message.lower() for m in _errors.RETRYABLE)
                if attempt == attempts - 1 or not retryable or exc.status in (401, 403, 404):
                    raise self._refusal(what, method, body, exc, need=need,
                                        model=model) from None
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _refusal(self, what: str, method: str, body: Mapping[str, Any], exc: _ApiError, *,
                 need: str | None = None, model: str | None = None) -> Exception:
        creds = self._creds
        return _errors.translate(
            self.uri, what, code=exc.code, status=exc.status, message=exc.message,
            model=model or body.get("name"),
            need=need or {"GET": "READ", "DELETE": "MANAGE"}.get(method, "EDIT"),
            who=creds.who if creds else None, sign_in=creds.sign_in if creds else None)

    # -- conversions ---------------------------------------------------------------------------

    @staticmethod
    def _version(mv: Mapping[str, Any]) -> RegistryVersion:
        return RegistryVersion(
            name=str(mv.get("name", "")),
            version=int(mv.get("version", 0)),
            source=str(mv.get("source") or ""),
            tags={t["key"]: t.get("value", "") for t in mv.get("tags") or ()},
            aliases=tuple(sorted(mv.get("aliases") or ())),
            created_ms=int(mv.get("creation_timestamp") or 0),
            description=str(mv.get("description") or ""),
            run_id=mv.get("run_id") or None,
        )

    def _search_versions(self, what: str, filter_: str, model: str | None = None,
                         **extra: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"filter": filter_, "max_results": _PAGE, **extra}
            if token:
                body["page_token"] = token
            page = self._do(what, "GET", "model-versions/search", body, model=model)
            out.extend(page.get("model_versions") or ())
            token = page.get("next_page_token")
            if not token or extra.get("max_results") == 1:
                return out

    def _raw_model(self, name: str) -> dict[str, Any]:
        data = self._do(f"model {name!r}", "GET", "registered-models/get", {"name": name})
        model = data.get("registered_model")
        if not isinstance(model, dict):
            raise _errors.not_found(self.uri, f"model {name!r}")
        return model

    # -- Registry protocol: reads --------------------------------------------------------------

    def get_version(self, name: str, version: int) -> RegistryVersion:
        data = self._do(f"version {name}@{version}", "GET", "model-versions/get",
                        {"name": name, "version": str(version)})
        return self._version(data.get("model_version") or {})

    def get_by_alias(self, name: str, alias: str) -> RegistryVersion:
        data = self._do(f"alias {name}@{alias}", "GET", "registered-models/alias",
                        {"name": name, "alias": alias})
        return self._version(data.get("model_version") or {})

    def latest(self, name: str) -> RegistryVersion | None:
        """The newest version with its aliases: search results carry none, so the registered
        model (which lists them) is asked beside the search, in the same round trip."""
        try:
            _model, found, _more = self.model_with_newest(name, 1)
        except NotFoundError:
            return None  # no such model: it has no newest version either
        return found[-1] if found else None

    def latest_without_aliases(self, name: str) -> RegistryVersion | None:
        """The highest-numbered version of *name* as one search finds it: without aliases."""
        found = self._search_versions(f"model {name!r}", f"name = '{name}'", name,
                                      max_results=1, order_by=["version_number DESC"])
        return self._version(found[0]) if found else None

    def _with_aliases(self, model: Mapping[str, Any],
                      found: list[dict[str, Any]]) -> list[RegistryVersion]:
        """*found* (search results, which carry no aliases) with the aliases *model* (the
        registered model) has for each, oldest first."""
        by_version: dict[int, list[str]] = {}
        for a in model.get("aliases") or ():
            by_version.setdefault(int(a["version"]), []).append(a["alias"])
        out = []
        for mv in found:
            rv = self._version(mv)
            out.append(RegistryVersion(
                name=rv.name, version=rv.version, source=rv.source, tags=rv.tags,
                aliases=tuple(sorted(by_version.get(rv.version, ()))), created_ms=rv.created_ms,
                description=rv.description, run_id=rv.run_id))
        return sorted(out, key=lambda v: v.version)

    def versions(self, name: str) -> list[RegistryVersion]:
        model = self._raw_model(name)
        found = self._search_versions(f"model {name!r}", f"name = '{name}'", name)
        return self._with_aliases(model, found)

    def newest_versions(self, name: str, limit: int) -> tuple[list[RegistryVersion], bool]:
        """The *limit* highest-numbered versions of *name* in one search page from the newest,
        and whether older ones exist (the server's next-page token). The server's cost is per
        version returned, so this is what keeps ``list NAME`` and ``log`` fast on a long
        history (docs/mlflow.md)."""
        _model, found, truncated = self.model_with_newest(name, limit)
        return found, truncated

    def model_with_newest(self, name: str, limit: int
                          ) -> tuple[RegistryModel, list[RegistryVersion], bool]:
        """The model *name* and :meth:`newest_versions`, from the same two requests (the
        versions' aliases are the model's)."""
        model, page = self._beside_model(name, lambda: self._do(
            f"model {name!r}", "GET", "model-versions/search",
            {"filter": f"name = '{name}'", "max_results": limit,
             "order_by": ["version_number DESC"]}, model=name))
        found = list(page.get("model_versions") or ())
        return (self._model(model, name), self._with_aliases(model, found),
                bool(page.get("next_page_token")))

    def versions_by_snapshot(self, name: str, prefix: str) -> list[RegistryVersion]:
        """The versions of *name* whose source has ``/@`` then *prefix* (hex) in it, oldest
        first, with their aliases: one filtered search, and the registered model (its aliases,
        and NotFoundError for an unknown model) asked at the same time."""
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise InvalidInputError(f"not a snapshot id prefix: {prefix!r}",
                                    hint="give 8 to 64 hex digits of the id")
        model, found = self._beside_model(name, lambda: self._search_versions(
            f"model {name!r}", f"name = '{name}' AND source_path LIKE '%/@{prefix}%'", name))
        return self._with_aliases(model, found)

    def _beside_model(self, name: str, ask: Callable[[], _T]) -> tuple[dict[str, Any], _T]:
        """The registered model *name* and what *ask* returns, requested together: the two are
        independent, so they cost one round trip."""
        from concurrent.futures import ThreadPoolExecutor

        _ = self._client  # made once, before the two requests share it
        with ThreadPoolExecutor(1, thread_name_prefix="modelkeep-rest") as pool:
            asked = pool.submit(self._raw_model, name)
            got = ask()
            return asked.result(), got

    def models_tagged(self, key: str, value: str) -> set[str]:
        """Names of the models that have a version tagged *key* = *value*, in one search."""
        found = self._search_versions(f"searching versions tagged {key}",
                                      f"tags.`{key}` = '{value}'")
        return {str(mv["name"]) for mv in found}

    def search_versions(self, name: str | None, tags: Mapping[str, str]) -> list[RegistryVersion]:
        """Versions of *name* (every model when None) tagged with *tags*, in one filtered
        search (paged), with their aliases."""
        found = self._search_versions("searching versions", _errors.search_filter(name, tags))
        by_model: dict[str, dict[int, list[str]]] = {}
        for model in {str(mv.get("name", "")) for mv in found}:
            raw = self._raw_model(model)
            for a in raw.get("aliases") or ():
                by_model.setdefault(model, {}).setdefault(int(a["version"]), []).append(
                    a["alias"])
        out = []
        for mv in found:
            rv = self._version(mv)
            names = by_model.get(rv.name, {}).get(rv.version, ())
            out.append(RegistryVersion(
                name=rv.name, version=rv.version, source=rv.source, tags=rv.tags,
                aliases=tuple(sorted(names)), created_ms=rv.created_ms,
                description=rv.description, run_id=rv.run_id))
        return out

    def _raw_models(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"max_results": _PAGE}
            if token:
                body["page_token"] = token
            page = self._do("listing models", "GET", "registered-models/search", body)
            found.extend(page.get("registered_models") or ())
            token = page.get("next_page_token")
            if not token:
                return sorted(found, key=lambda m: str(m["name"]))

    def models(self) -> list[str]:
        return [str(m["name"]) for m in self._raw_models()]

    def model_list(self) -> list[tuple[RegistryModel, int | None]]:
        """Every model, by name, with the number of its newest version: the search's
        ``latest_versions`` (the newest per stage; the newest of those is the newest). A model
        without versions is listed without them; only when no model has them (a server that
        leaves the field out, or no versions anywhere) is each model asked."""
        raws = self._raw_models()
        sent = any(raw.get("latest_versions") for raw in raws)
        out: list[tuple[RegistryModel, int | None]] = []
        for raw in raws:
            name = str(raw["name"])
            newest: int | None = max(
                (int(v["version"]) for v in raw.get("latest_versions") or ()), default=None)
            if not sent:
                try:
                    latest = self.latest_without_aliases(name)
                except NotFoundError:
                    continue  # deleted meanwhile
                newest = latest.version if latest else None
            out.append((self._model(raw, name), newest))
        return out

    def get_model(self, name: str) -> RegistryModel:
        return self._model(self._raw_model(name), name)

    @staticmethod
    def _model(model: Mapping[str, Any], name: str) -> RegistryModel:
        return RegistryModel(
            name=str(model.get("name", name)),
            description=str(model.get("description") or ""),
            tags={t["key"]: t.get("value", "") for t in model.get("tags") or ()},
            aliases={a["alias"]: int(a["version"]) for a in model.get("aliases") or ()},
        )

    # -- Registry protocol: writes -------------------------------------------------------------

    def check_writable(self, name: str) -> None:
        """Refuse now if the caller may not add versions to model *name*.

        The model is created first if it does not exist (as creating its first version would:
        its creator gets MANAGE on it; creating models is open unless the server restricts
        it); a model this call created is the caller's, and nothing more is asked. Else a
        model tag that is never set is deleted: that changes nothing, and MLflow's auth plugins
        (basic-auth, mlflow-oidc-auth) allow it exactly to those with EDIT on the model, as they
        do creating a version. In this order no permission is asked about a model that does not
        exist yet, which mlflow-oidc-auth would refuse and remember."""
        what = f"a new version of {name!r} (checked first: nothing was uploaded)"
        if self._create_model(what, name):
            return  # its creator: MANAGE on it (MLflow's auth plugins grant it)
        self._do(what, "DELETE", "registered-models/delete-tag",
                 {"name": name, "key": WRITE_CHECK_TAG}, need="EDIT")

    def _create_model(self, what: str, name: str) -> bool:
        """Create model *name* unless it exists; whether this call created it."""
        created = bool(self._do(what, "POST", "registered-models/create", {"name": name},
                                ok_codes=frozenset({"RESOURCE_ALREADY_EXISTS"})))
        self._known.add(name)
        return created

    def create_model(self, name: str) -> None:
        self._create_model(f"creating model {name!r}", name)

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
        # *user_id* cannot be sent: CreateModelVersion has no such field, and the server's
        # store leaves it empty (UpdateModelVersion changes only the description).
        if run_id is None:
            run_id = _errors.active_run_id()
        what = f"creating a version of {name!r}"
        known = name in self._known
        if not known:
            self._create_model(what, name)
        body: dict[str, Any] = {"name": name, "source": source,
                                "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if run_id:
            body["run_id"] = run_id
        if description is not None:
            body["description"] = description
        try:
            data = self._do(what, "POST", "model-versions/create", body)
        except (NotFoundError, RegistryPermissionError):
            # A model known to exist may have been deleted since: the server answers that it
            # does not exist (or, with an auth plugin, that nobody may add to it). Creating it
            # tells which: if it did not exist, the version is created in the new model.
            if not known or not self._create_model(what, name):
                raise
            data = self._do(what, "POST", "model-versions/create", body)
        return self._version(data.get("model_version") or {})

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._do(f"alias {alias!r} of {name!r}", "POST", "registered-models/alias",
                 {"name": name, "alias": alias, "version": str(version)})

    def delete_version(self, name: str, version: int) -> None:
        self._do(f"version {name}@{version}", "DELETE", "model-versions/delete",
                 {"name": name, "version": str(version)})

    def delete_alias(self, name: str, alias: str) -> None:
        # MLflow deletes a missing alias silently; the protocol promises NotFoundError.
        self.get_by_alias(name, alias)
        self._do(f"alias {alias!r} of {name!r}", "DELETE", "registered-models/alias",
                 {"name": name, "alias": alias})

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._do(f"tag {key!r} of {name}@{version}", "POST", "model-versions/set-tag",
                 {"name": name, "version": str(version), "key": key, "value": value})

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self._do(f"tag {key!r} of model {name!r}", "POST", "registered-models/set-tag",
                 {"name": name, "key": key, "value": value})

    def set_description(self, name: str, version: int | None, text: str) -> None:
        if version is None:
            self._do(f"model {name!r}", "PATCH", "registered-models/update",
                     {"name": name, "description": text})
        else:
            self._do(f"version {name}@{version}", "PATCH", "model-versions/update",
                     {"name": name, "version": str(version), "description": text})

