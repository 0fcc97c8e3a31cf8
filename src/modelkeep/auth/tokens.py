"""Access tokens for one identity, renewed before they expire, and the ``requests`` auth that
sends them for MLflow's client (modelkeep's own requests take them from
:func:`modelkeep.plugins.mlflow._http.credentials`).

A :class:`TokenSource` hands out the current access token and renews it when less than a
quarter of its lifetime (at most a minute) is left: a job asks the provider again by the
client-credentials grant, a person's login is renewed with its refresh token and written back to
the token file. Renewal happens on the request that needs it, so a register that takes an hour or
a training run that checkpoints for days never sends an expired token, and nothing runs in the
background. One source per identity, :class:`Resource` and process (:func:`source_for`), and one
renewal in flight per source: threads that find the token expiring wait for the one renewal under
way and take its result.

A :class:`Resource` is what a token is for when it is not the registry: a store, whose tokens
are asked for another audience or scopes (Azure Storage's ``https://storage.azure.com``). A job
asks for them by the same grant; a person's are asked with the login's refresh token and kept in
memory only, the login's own tokens staying the registry's.

:class:`BearerAuth`, like modelkeep's own HTTP client, answers a 401 with one renewal and one
retry of the same request: a token the registry refuses before its time (a rotated signing key, a
revoked session) is replaced once; a second refusal is the registry's answer. The OAuth exchanges
are authlib's; tokens never appear in a message or a ``repr``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelkeep.auth import provider, tokenfile
from modelkeep.auth.settings import CLIENT_CREDENTIALS
from modelkeep.errors import MissingExtraError, SignInError

if TYPE_CHECKING:
    import requests
    from authlib.integrations.requests_client import OAuth2Session

    from modelkeep.auth.settings import AuthSettings

LEEWAY_MAX = 60.0
# OpenID scopes ask for a person's identity; a client-credentials grant has no person.
_PERSON_SCOPES = frozenset({"openid", "offline_access", "profile", "email"})


def leeway(lifetime: float) -> float:
    """How long before expiry a token is renewed: a quarter of its lifetime, at most a minute."""
    return max(1.0, min(LEEWAY_MAX, lifetime / 4))


def oauth_session(settings: AuthSettings) -> OAuth2Session:
    try:
        from authlib.integrations.requests_client import OAuth2Session
    except ImportError as exc:
        raise MissingExtraError("authlib", "auth") from exc
    if settings.client_secret:
        session = OAuth2Session(settings.client_id, settings.client_secret,
                                token_endpoint_auth_method="client_secret_basic")
    else:
        session = OAuth2Session(settings.client_id, token_endpoint_auth_method="none")
    session.headers["User-Agent"] = "modelkeep"
    return session


def audience_params(settings: AuthSettings) -> dict[str, str]:
    return {settings.audience_parameter: settings.audience} if settings.audience else {}


class RefusedError(SignInError):
    """The provider answered a token request with an OAuth error (not a network failure)."""


def refused(settings: AuthSettings, exc: Exception, doing: str) -> SignInError:
    """The one line for an OAuth error answer (its code and description, never a token)."""
    code = str(getattr(exc, "error", "") or type(exc).__name__)
    description = str(getattr(exc, "description", "") or "")
    detail = f"{code}: {description}" if description else code
    if settings.flow == CLIENT_CREDENTIALS:
        hint = ("check the client id and its secret "
                f"({settings.secret_from or 'MODELKEEP_AUTH_CLIENT_SECRET'}) with the "
                "provider's admin")
    else:
        hint = "run `modelkeep login` again"
    return RefusedError(f"the OpenID provider {settings.issuer} refused {doing} for client "
                        f"{settings.client_id!r} ({detail})", hint=hint)


def exchange(settings: AuthSettings, doing: str, call: Any) -> dict[str, Any]:
    """Run an authlib token request, turning its failures into one line."""
    import requests
    from authlib.integrations.base_client.errors import OAuthError

    try:
        token = call()
    except OAuthError as exc:
        raise refused(settings, exc, doing) from None
    except requests.RequestException:
        raise provider.unreachable(settings.issuer) from None
    except ValueError:
        raise SignInError(f"the OpenID provider {settings.issuer} answered {doing} with "
                          "something that is not a token response",
                          hint="check [auth] issuer") from None
    if not isinstance(token, dict) or not token.get("access_token"):
        raise SignInError(f"the OpenID provider {settings.issuer} sent no access token "
                          f"for {doing}")
    return dict(token)


def stamp(token: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """*token* with ``expires_at`` and ``lifetime`` set from ``expires_in`` (an hour if the
    provider did not say)."""
    now = time.time() if now is None else now
    lifetime = float(token.get("expires_in") or 3600)
    return {**token, "expires_at": float(token.get("expires_at") or now + lifetime),
            "lifetime": lifetime}


class TokenSource:
    """The access tokens of one identity (see the module docstring)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._token: dict[str, Any] | None = None
        self.renewals = 0  # tokens obtained so far, for diagnostics (`whoami --json`)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.issuer!r}, {self.settings.client_id!r})"

    @property
    def who(self) -> str:
        """The identity in words, for messages."""
        return f"client {self.settings.client_id!r} of {self.settings.issuer}"

    @staticmethod
    def _fresh(token: dict[str, Any] | None) -> bool:
        if token is None:
            return False
        left = float(token["expires_at"]) - time.time()
        return left > leeway(float(token.get("lifetime") or 3600))

    def current(self) -> dict[str, Any]:
        """The current token (renewed first if it is close to expiry)."""
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token
        return self._renew(stale=token)

    def access_token(self) -> str:
        return str(self.current()["access_token"])

    def fresh(self) -> dict[str, Any] | None:
        """The current token if it needs no renewal, else None (never asks the provider)."""
        token = self._token
        return token if self._fresh(token) else None

    def renew_refused(self, refused_token: str) -> str:
        """A new token after the registry refused *refused_token* (unless another thread has
        already replaced it)."""
        token = self._token
        return str(self._renew(stale=token, refused=refused_token)["access_token"])

    def _renew(self, stale: dict[str, Any] | None, refused: str | None = None) -> dict[str, Any]:
        with self._lock:
            token = self._token
            if token is not stale and token is not None and (
                    refused is None or token.get("access_token") != refused):
                return token  # renewed by another thread while this one waited
            token = self._obtain(refused=refused)
            self._token = token
            self.renewals += 1
            return token

    def _obtain(self, refused: str | None) -> dict[str, Any]:
        raise NotImplementedError


class ClientCredentials(TokenSource):
    """A job's tokens, by the client-credentials grant."""

    def _obtain(self, refused: str | None) -> dict[str, Any]:
        settings = self.settings
        meta = provider.metadata(settings.issuer, settings.metadata_url)
        scope = " ".join(s for s in settings.scopes if s not in _PERSON_SCOPES)
        extra: dict[str, Any] = {"scope": scope} if scope else {}
        extra.update(audience_params(settings))
        session = oauth_session(settings)
        return stamp(exchange(settings, "a client-credentials grant", lambda: session.fetch_token(
            meta.token_endpoint, grant_type="client_credentials", timeout=provider.TIMEOUT,
            **extra)))


class Login(TokenSource):
    """A person's tokens, from ``modelkeep login``: read from the token file, renewed with the
    refresh token, written back."""

    @property
    def who(self) -> str:
        entry = tokenfile.load(self.settings.issuer, self.settings.client_id) or {}
        identity = entry.get("identity") or {}
        name = identity.get("preferred_username") or identity.get("email") or identity.get("sub")
        return f"{name!r} (signed in to {self.settings.issuer})" if name else (
            f"this sign-in to {self.settings.issuer}")

    def _obtain(self, refused: str | None) -> dict[str, Any]:
        settings = self.settings
        entry = tokenfile.load(settings.issuer, settings.client_id)
        if entry is None or not entry.get("access_token"):
            raise SignInError(f"not signed in to {settings.issuer}",
                              hint="run `modelkeep login`")
        # Another process may have renewed the login since this one read it.
        if self._fresh(entry) and entry.get("access_token") != refused:
            return entry
        refresh = entry.get("refresh_token")
        if not refresh:
            raise SignInError(f"the sign-in to {settings.issuer} has expired",
                              hint="run `modelkeep login` again")
        meta = provider.metadata(settings.issuer, settings.metadata_url)
        session = oauth_session(settings)
        try:
            token = exchange(settings, "renewing the sign-in", lambda: session.refresh_token(
                meta.token_endpoint, refresh_token=refresh, timeout=provider.TIMEOUT,
                **audience_params(settings)))
        except RefusedError:
            # A refresh token rotated by another process at the same moment: take its result.
            again = tokenfile.load(settings.issuer, settings.client_id) or {}
            if again.get("refresh_token") != refresh and self._fresh(again):
                return again
            raise SignInError(f"the sign-in to {settings.issuer} has expired or was revoked",
                              hint="run `modelkeep login` again") from None
        renewed = {**entry, **stamp(token)}
        renewed.setdefault("refresh_token", refresh)  # a provider may not rotate it
        tokenfile.save(settings.issuer, settings.client_id, renewed)
        return renewed


class LoginResource(TokenSource):
    """A person's tokens for a :class:`Resource`, asked with the refresh token of their
    ``modelkeep login`` and kept in this process's memory; a refresh token the provider rotated
    on the way is written back to the login, so that its next renewal uses the current one."""

    @property
    def who(self) -> str:
        return f"this sign-in to {self.settings.issuer}"

    def _ask(self, refresh: str) -> dict[str, Any]:
        settings = self.settings
        meta = provider.metadata(settings.issuer, settings.metadata_url)
        session = oauth_session(settings)
        extra: dict[str, Any] = audience_params(settings)
        if settings.scopes:
            extra["scope"] = " ".join(settings.scopes)
        return exchange(settings, f"a token for {settings.audience or 'a store'}",
                        lambda: session.refresh_token(meta.token_endpoint, refresh_token=refresh,
                                                      timeout=provider.TIMEOUT, **extra))

    def _obtain(self, refused: str | None) -> dict[str, Any]:
        settings = self.settings
        entry = tokenfile.load(settings.issuer, settings.client_id)
        if entry is None or not entry.get("refresh_token"):
            raise SignInError(f"not signed in to {settings.issuer}", hint="run `modelkeep login`")
        refresh = str(entry["refresh_token"])
        try:
            token = self._ask(refresh)
        except RefusedError:
            # Another process may have rotated the refresh token at the same moment: use its.
            again = tokenfile.load(settings.issuer, settings.client_id) or {}
            if again.get("refresh_token") in (None, refresh):
                raise SignInError(f"the sign-in to {settings.issuer} has expired, was revoked "
                                  f"or does not cover {settings.audience or 'this store'}",
                                  hint="run `modelkeep login` again") from None
            entry, refresh = again, str(again["refresh_token"])
            token = self._ask(refresh)
        rotated = token.pop("refresh_token", None)
        if rotated and rotated != refresh:
            current = tokenfile.load(settings.issuer, settings.client_id) or entry
            tokenfile.save(settings.issuer, settings.client_id,
                           {**current, "refresh_token": rotated})
        return stamp(token)


@dataclass(frozen=True)
class Resource:
    """What a token is for when it is not the registry: the *audience* asked for (as
    ``[auth] audience_parameter`` says; None: none) and the *scopes* (replacing ``[auth]``'s)."""

    audience: str | None
    scopes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        return ("resource", self.audience or "", " ".join(self.scopes))


_sources: dict[tuple[str, ...], TokenSource] = {}
_sources_lock = threading.Lock()


def source_for(settings: AuthSettings, resource: Resource | None = None) -> TokenSource:
    """The one token source of this identity (for *resource*, default the registry) in this
    process."""
    key = settings.key + (resource.key if resource is not None else ())
    with _sources_lock:
        found = _sources.get(key)
        if found is None:
            if resource is None:
                kind: type[TokenSource] = (ClientCredentials if settings.flow == CLIENT_CREDENTIALS
                                           else Login)
            else:
                settings = dataclasses.replace(settings, audience=resource.audience,
                                               scopes=resource.scopes)
                kind = ClientCredentials if settings.flow == CLIENT_CREDENTIALS else LoginResource
            found = _sources[key] = kind(settings)
        return found


def forget(settings: AuthSettings | None = None) -> None:
    """Drop the tokens this process holds (of *settings*' identity, for every resource, or
    all): the next use reads the token file or asks the provider again. ``modelkeep logout``
    calls it."""
    with _sources_lock:
        if settings is None:
            _sources.clear()
        else:
            prefix = settings.key
            for key in [k for k in _sources if k[:len(prefix)] == prefix]:
                del _sources[key]


class BearerAuth:
    """``requests`` auth (for MLflow's own client, :mod:`modelkeep.plugins.mlflow.request_auth`):
    the source's current token as ``Authorization: Bearer``; a 401 gets one renewal and one
    retry. requests takes any callable as auth, so this module does not import it."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def __repr__(self) -> str:
        return f"BearerAuth({self.source!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.source.access_token()
        request.headers["Authorization"] = f"Bearer {token}"

        def retry_once(response: requests.Response, **kwargs: Any) -> requests.Response:
            if response.status_code != 401 or getattr(response.request, "_modelkeep_retry", False):
                return response
            new = self.source.renew_refused(token)
            response.content  # noqa: B018 - read the body so the connection can be reused
            response.close()
            again = response.request.copy()
            again.headers["Authorization"] = f"Bearer {new}"
            again._modelkeep_retry = True  # type: ignore[attr-defined]
            assert response.connection is not None
            retried: requests.Response = response.connection.send(again, **kwargs)
            retried.history.append(response)
            retried.request = again
            return retried

        request.register_hook("response", retry_once)
        return request


def revoke(settings: AuthSettings, entry: dict[str, Any]) -> bool:
    """Ask the provider to revoke a login's refresh token (RFC 7009); best effort: whether
    it said yes. A provider without a revocation endpoint, or one that cannot be reached, leaves
    the token to expire on its own."""
    import requests

    refresh = entry.get("refresh_token")
    if not refresh:
        return False
    try:
        meta = provider.metadata(settings.issuer, settings.metadata_url)
        if not meta.revocation_endpoint:
            return False
        response = oauth_session(settings).revoke_token(
            meta.revocation_endpoint, token=refresh, token_type_hint="refresh_token",
            timeout=provider.TIMEOUT)
    except (SignInError, requests.RequestException):
        return False
    return bool(response.status_code == 200)
