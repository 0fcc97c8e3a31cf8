"""Azure Blob stores signed in with a token credential: the ``identity`` table of an ``az://``
store's options turned into adlfs's ``credential=`` (an azure-core async token credential, since
adlfs talks to Azure through the SDK's asyncio client).

Two kinds::

    # the identity of [auth] (a job's client credentials, or a person's `modelkeep login`),
    # asked for a token for Azure Storage and renewed like the registry's
    identity = { kind = "sign-in" }                                   # Entra v2: scope .default
    identity = { kind = "sign-in", audience = "https://storage.azure.com", scopes = [] }  # v1

    # azure-identity's DefaultAzureCredential: managed identity, workload identity, `az login`
    identity = { kind = "azure-default", managed_identity_client_id = "..." }

A ``sign-in`` identity asks the ``[auth]`` provider for a token with the storage ``scopes``
(default: the ones the SDK asks for, ``https://storage.azure.com/.default``, Entra's v2 way)
and, when set, the storage ``audience`` (sent as ``[auth] audience_parameter`` says: Entra's v1
``resource``). Its tokens come from :func:`modelkeep.auth.tokens.source_for` for that
:class:`~modelkeep.auth.tokens.Resource`: one source per identity and resource in a process,
renewed before expiry, one renewal in flight. ``azure-default`` passes its other keys to
``azure.identity.aio.DefaultAzureCredential`` and is kept, one per process and keys, so its own
token cache lasts as long as the process.

The credentials' ``repr`` names the identity (fsspec keys its filesystem cache on it, so a store
opened twice is one filesystem) and never a token.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelkeep.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo

    from modelkeep.auth.settings import AuthSettings
    from modelkeep.auth.tokens import TokenSource

SIGN_IN = "sign-in"
AZURE_DEFAULT = "azure-default"
KINDS = (SIGN_IN, AZURE_DEFAULT)
STORAGE_SCOPE = "https://storage.azure.com/.default"
_SIGN_IN_KEYS = ("kind", "audience", "scopes")
# Options that are a credential of their own: with an identity, which one signs in is unclear.
_OTHER_CREDENTIALS = ("account_key", "connection_string", "sas_token", "credential",
                      "client_secret")
_WHERE = "store option 'identity'"
# The keyword arguments of azure.identity.aio.DefaultAzureCredential an identity may set, by type.
_DEFAULT_KEYS: dict[str, type] = {
    **{k: str for k in ("authority", "managed_identity_client_id", "workload_identity_client_id",
                        "workload_identity_tenant_id", "shared_cache_username",
                        "shared_cache_tenant_id", "visual_studio_code_tenant_id")},
    **{f"exclude_{k}_credential": bool for k in (
        "workload_identity", "developer_cli", "cli", "environment", "powershell",
        "visual_studio_code", "managed_identity", "shared_token_cache")},
    "process_timeout": int,
    "require_envvar": bool,
}
_TYPE_WORDS = {str: "a string", bool: "true or false", int: "a whole number"}


class SignInCredential:
    """An azure-core async token credential (``get_token``, ``get_token_info``) whose tokens
    are the ``[auth]`` identity's for Azure Storage."""

    def __init__(self, settings: AuthSettings, audience: str | None,
                 scopes: tuple[str, ...] | None) -> None:
        self.settings = settings
        self.audience = audience
        self.scopes = scopes  # None: the scopes the SDK asks for

    def __repr__(self) -> str:
        scopes = " ".join(self.scopes) if self.scopes is not None else None
        return (f"{type(self).__name__}({self.settings.issuer!r}, {self.settings.client_id!r}, "
                f"flow={self.settings.flow!r}, audience={self.audience!r}, scopes={scopes!r})")

    @property
    def who(self) -> str:
        """The identity, for a store's refusal."""
        from modelkeep.auth.settings import CLIENT_CREDENTIALS

        if self.settings.flow == CLIENT_CREDENTIALS:
            return f"client {self.settings.client_id!r} of {self.settings.issuer}"
        return f"this sign-in to {self.settings.issuer} (client {self.settings.client_id!r})"

    @property
    def refusal_hint(self) -> str:
        return ("the identity needs a data role on the account (Storage Blob Data Contributor "
                "to register, Reader to pull), and its tokens must be Azure Storage's: check "
                "the identity's audience and scopes")

    def source(self, *sdk_scopes: str) -> TokenSource:
        from modelkeep.auth.tokens import Resource, source_for

        scopes = self.scopes if self.scopes is not None else tuple(sdk_scopes)
        return source_for(self.settings, Resource(self.audience, scopes))

    async def _token(self, scopes: tuple[str, ...]) -> dict[str, Any]:
        source = self.source(*scopes)
        token = source.fresh()
        if token is None:
            # Renewal is a blocking HTTP exchange: off the event loop adlfs runs every call on.
            token = await asyncio.to_thread(source.current)
        return token

    async def get_token(self, *scopes: str, claims: str | None = None,
                        tenant_id: str | None = None, enable_cae: bool = False,
                        **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        token = await self._token(scopes)
        return AccessToken(str(token["access_token"]), int(token["expires_at"]))

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        from azure.core.credentials import AccessTokenInfo

        from modelkeep.auth.tokens import leeway

        token = await self._token(scopes)
        expires = float(token["expires_at"])
        # The SDK renews when told to: when this module's source would.
        refresh_on = expires - leeway(float(token.get("lifetime") or 3600))
        return AccessTokenInfo(str(token["access_token"]), int(expires),
                               refresh_on=int(refresh_on))

    async def close(self) -> None:
        """Nothing to release: the token source is the process's, shared with other stores."""

    async def __aenter__(self) -> SignInCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class DefaultCredential:
    """azure-identity's async ``DefaultAzureCredential`` made with *kwargs*, under a ``repr``
    that names its keys (the one per process and keys is shared by every store using it)."""

    def __init__(self, inner: Any, kwargs: Mapping[str, Any]) -> None:
        self.inner = inner
        self.kwargs = dict(kwargs)

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{type(self).__name__}({keys})"

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token: AccessToken = await self.inner.get_token(*scopes, **kwargs)
        return token

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        info: AccessTokenInfo = await self.inner.get_token_info(*scopes, options=options)
        return info

    async def close(self) -> None:
        """Kept open: the credential (and its token cache) is shared for the process's life."""

    async def __aenter__(self) -> DefaultCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


_defaults: dict[tuple[Any, ...], DefaultCredential] = {}
_defaults_lock = threading.Lock()


def default_credential(kwargs: Mapping[str, Any]) -> DefaultCredential:
    """The process's ``DefaultAzureCredential`` for *kwargs* (a forked child makes its own:
    the parent's is bound to the parent's event loop)."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:
        raise MissingExtraError("azure-identity", "azure") from exc
    for name, value in kwargs.items():
        wanted = _DEFAULT_KEYS.get(name)
        if wanted is None:
            raise ConfigError(f"unknown key {name!r} in {_WHERE} of kind {AZURE_DEFAULT!r}",
                              hint="its keys are DefaultAzureCredential's: "
                              f"{', '.join(sorted(_DEFAULT_KEYS))}")
        if type(value) is not wanted:
            raise ConfigError(f"{name!r} in {_WHERE} of kind {AZURE_DEFAULT!r} must be "
                              f"{_TYPE_WORDS[wanted]}")
    key = (os.getpid(), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _defaults_lock:
        found = _defaults.get(key)
        if found is None:
            found = _defaults[key] = DefaultCredential(DefaultAzureCredential(**kwargs), kwargs)
        return found


def _scopes(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(s for v in value for s in v.split())
    raise ConfigError(f"{_WHERE}: 'scopes' must be a list of strings or one space-separated "
                      "string", hint=f"e.g. scopes = [\"{STORAGE_SCOPE}\"]")


def sign_in_credential(table: Mapping[str, Any]) -> SignInCredential:
    """The credential of a ``sign-in`` identity *table* (the ``[auth]`` settings in force)."""
    from modelkeep.auth.settings import configured

    unknown = sorted(set(table) - set(_SIGN_IN_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {_WHERE} of kind {SIGN_IN!r}",
                          hint=f"known keys: {', '.join(_SIGN_IN_KEYS)}")
    audience = table.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience):
        raise ConfigError(f"{_WHERE}: 'audience' must be a non-empty string",
                          hint="Azure Storage's is https://storage.azure.com")
    scopes = _scopes(table["scopes"]) if "scopes" in table else None
    settings = configured()
    if settings is None:
        raise ConfigError(f"the {_WHERE} of kind {SIGN_IN!r} signs in as [auth], and no "
                          "sign-in is configured",
                          hint="set [auth] issuer and client_id in modelkeep.toml (or "
                          "MODELKEEP_AUTH_ISSUER and MODELKEEP_AUTH_CLIENT_ID)")
    return SignInCredential(settings, audience, scopes)


def storage_options(options: Mapping[str, Any], identity: Any) -> dict[str, Any]:
    """adlfs options: *options* (without ``identity``) with ``credential=`` the credential the
    *identity* table describes."""
    if not isinstance(identity, Mapping):
        raise ConfigError(f"{_WHERE} must be a table",
                          hint=f'e.g. identity = {{ kind = "{SIGN_IN}" }}')
    kind = identity.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{_WHERE} has kind {kind!r}",
                          hint=f"kind is one of: {', '.join(KINDS)}")
    clashing = [k for k in _OTHER_CREDENTIALS if options.get(k)]
    if clashing:
        raise ConfigError(f"the {_WHERE} and the option {clashing[0]!r} are two credentials "
                          "for one Azure store", hint="remove one of them")
    if not (options.get("account_name") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")):
        raise ConfigError(f"the {_WHERE} needs the store's account_name",
                          hint="set account_name in the store's options (and account_host for "
                          "an endpoint other than ACCOUNT.blob.core.windows.net)")
    out = dict(options)
    if kind == SIGN_IN:
        out["credential"] = sign_in_credential(identity)
    else:
        out["credential"] = default_credential({k: v for k, v in identity.items()
                                                if k != "kind"})
    return out
