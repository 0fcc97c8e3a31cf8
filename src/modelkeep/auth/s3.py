"""S3 stores reached with the sign-in's identity: the store's ``identity`` option names an IAM
role, and the sign-in's access token is exchanged for the role's temporary credentials at STS
(``AssumeRoleWithWebIdentity``)::

    [stores.team]
    url = "s3://ml-models/keep"
    options = { identity = { role_arn = "arn:aws:iam::123456789012:role/modelkeep" } }

Keys of ``identity``: ``kind`` (``sign-in``, the default and the one kind: the identity of
``[auth]``, as for Azure stores), ``role_arn`` (required), ``session_name`` (default
``modelkeep``; STS puts it in the assumed role's ARN, so CloudTrail names the caller),
``duration`` (seconds the credentials last, default 3600; STS accepts 900 up to the role's
maximum session duration),
``sts_endpoint_url`` (default: the store's ``endpoint_url`` when it has one, as MinIO serves STS
on its S3 port, else AWS's STS of the region) and ``region`` (default: the store's
``client_kwargs.region_name``, else ``AWS_REGION``/``AWS_DEFAULT_REGION``).

The web-identity token is the access token of the sign-in of ``[auth]`` (a job's by the client
credentials grant, a person's from ``modelkeep login``): a JWT whose ``aud`` is ``[auth]
audience``. A client-credentials grant has no ID token, so the access token it is, for jobs and
people alike; the role's IAM OpenID Connect provider lists that audience as a client ID.

Renewal is botocore's own: the credentials are aiobotocore's deferred refreshable credentials,
fetched by its ``AssumeRoleWithWebIdentity`` fetcher on first use and again before they expire,
and each exchange asks the sign-in's :class:`~modelkeep.auth.tokens.TokenSource` for its current
token, which is renewed first when it is close to expiry. Nothing runs in the background; the
token is asked for off the event loop, as renewing it is an HTTP exchange with the provider.

Only these credentials sign the store's requests: the session's one credential provider is the
role's, so ``AWS_*`` variables, the AWS config files and instance metadata give it none, and the
options ``key``, ``secret``, ``token``, ``anon``, ``profile`` and ``session`` are refused next
to an identity. Neither the token nor the credentials appear in a message or a ``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioAssumeRoleWithWebIdentityCredentialFetcher,
    AioCredentialResolver,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession
from botocore.credentials import CredentialProvider
from botocore.exceptions import ClientError, EndpointConnectionError

from modelkeep.auth.tokens import source_for
from modelkeep.errors import ConfigError, CredentialsError, ModelkeepError, StoreUnreachableError

if TYPE_CHECKING:
    from modelkeep.auth.tokens import TokenSource

KEYS = ("kind", "role_arn", "session_name", "duration", "sts_endpoint_url", "region")
# The one kind an S3 store takes: the identity of [auth] (as an Azure store's ``sign-in``).
SIGN_IN = "sign-in"
DEFAULT_SESSION_NAME = "modelkeep"
DEFAULT_DURATION = 3600
METHOD = "modelkeep-web-identity"
# Options that give the store credentials of their own: one store, one way of signing in.
_OWN_CREDENTIALS = ("key", "secret", "token", "anon", "profile", "session")
_ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
# botocore renews when 15 minutes are left, and must by 10: for shorter sessions, a quarter and
# an eighth of the lifetime, or every request would ask STS again.
_ADVISORY_MAX, _MANDATORY_MAX = 15 * 60.0, 10 * 60.0
STS_TIMEOUTS = {"connect_timeout": 5.0, "read_timeout": 30.0}


@dataclass(frozen=True)
class WebIdentity:
    """The role a store is reached as, and where STS is."""

    role_arn: str
    session_name: str = DEFAULT_SESSION_NAME
    duration: int = DEFAULT_DURATION
    sts_endpoint_url: str | None = None
    region: str | None = None

    @property
    def advisory_refresh(self) -> float:
        """Seconds before expiry from which the credentials are renewed."""
        return min(_ADVISORY_MAX, self.duration / 4)

    @property
    def mandatory_refresh(self) -> float:
        """Seconds before expiry from which no request is signed before they are renewed."""
        return min(_MANDATORY_MAX, self.duration / 8)


def _where(key: str) -> str:
    return f"the store option 'identity.{key}'"


def parse_identity(table: Mapping[str, Any], options: Mapping[str, Any]) -> WebIdentity:
    """The ``identity`` table of an S3 store with the store's *options* it defaults from,
    refused in one line when it cannot be used."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key 'identity.{unknown[0]}' in an s3:// store's options",
                          hint=f"known keys: {', '.join(KEYS)}")
    if table.get("kind", SIGN_IN) != SIGN_IN:
        raise ConfigError(f"an s3:// store's identity has kind {table['kind']!r}",
                          hint=f"s3:// stores take kind {SIGN_IN!r} (the default): an IAM role "
                               "assumed with the sign-in's token")
    own = [k for k in _OWN_CREDENTIALS if options.get(k)]
    if own:
        raise ConfigError(f"an s3:// store's options give both 'identity' and '{own[0]}'",
                          hint="a store signs in one way: remove the key or the identity")
    role_arn = table.get("role_arn")
    if not isinstance(role_arn, str) or not _ROLE_ARN.match(role_arn):
        raise ConfigError(f"{_where('role_arn')} must be an IAM role's ARN",
                          hint="e.g. arn:aws:iam::123456789012:role/modelkeep")
    session_name = table.get("session_name", DEFAULT_SESSION_NAME)
    if not isinstance(session_name, str) or not _SESSION_NAME.match(session_name):
        raise ConfigError(f"{_where('session_name')} must be 2 to 64 letters, digits or "
                          "+=,.@_-")
    duration = table.get("duration", DEFAULT_DURATION)
    if isinstance(duration, bool) or not isinstance(duration, int) or duration < 1:
        raise ConfigError(f"{_where('duration')} must be a whole number of seconds",
                          hint="STS accepts 900 up to the role's maximum session duration")
    client_kwargs = options.get("client_kwargs") or {}
    config_kwargs = options.get("config_kwargs") or {}
    endpoint = table.get("sts_endpoint_url") or options.get("endpoint_url") or (
        client_kwargs.get("endpoint_url") if isinstance(client_kwargs, Mapping) else None)
    if endpoint is not None and (not isinstance(endpoint, str)
                                 or not endpoint.startswith(("https://", "http://"))):
        raise ConfigError(f"{_where('sts_endpoint_url')} must be an http(s) URL")
    region = table.get("region") or (
        client_kwargs.get("region_name") if isinstance(client_kwargs, Mapping) else None) or (
        config_kwargs.get("region_name") if isinstance(config_kwargs, Mapping) else None)
    if region is not None and not isinstance(region, str):
        raise ConfigError(f"{_where('region')} must be a string")
    return WebIdentity(role_arn, session_name, duration, endpoint, region)


def no_sign_in(identity: WebIdentity) -> ConfigError:
    # A settings problem, as for an Azure store's sign-in identity: exit 2, not the store's.
    return ConfigError(
        f"the s3:// store is reached as role {identity.role_arn} with the sign-in's identity, "
        "and no sign-in is configured",
        hint="set [auth] issuer and client_id in modelkeep.toml (or MODELKEEP_AUTH_ISSUER and "
             "MODELKEEP_AUTH_CLIENT_ID), with a client secret for a job or `modelkeep login`")


def storage_options(options: Mapping[str, Any], table: Any) -> dict[str, Any]:
    """*options* (without ``identity``) with an aiobotocore session whose only credentials are
    the role's, for s3fs's ``session=``; the sign-in is looked up once the table is good."""
    from modelkeep.auth.settings import configured

    if not isinstance(table, Mapping):
        raise ConfigError("the store option 'identity' must be a table",
                          hint='e.g. identity = { role_arn = "arn:aws:iam::…:role/…" }')
    identity = parse_identity(table, options)
    settings = configured()
    if settings is None:
        raise no_sign_in(identity)
    return {**options, "session": WebIdentitySession(identity, source_for(settings))}


def sts_refused(identity: WebIdentity, source: TokenSource, exc: Exception,
                token: str) -> ModelkeepError:
    """One line for a failed exchange at STS: its error code and message, never the token."""
    settings = source.settings
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "refused")
        text = str(error.get("Message") or "")
        if token:
            text = text.replace(token, "...")
        detail = f"{code}: {text}" if text else code
        return CredentialsError(
            f"STS refused the web identity of {source.who} for role {identity.role_arn} "
            f"({detail})",
            hint=f"the role's trust policy must allow sts:AssumeRoleWithWebIdentity to the IAM "
                 f"OpenID Connect provider of {settings.issuer}, with audience "
                 f"{settings.audience or '(set [auth] audience)'}")
    where = identity.sts_endpoint_url or f"STS of {identity.region or 'the default region'}"
    if isinstance(exc, EndpointConnectionError):
        return StoreUnreachableError(f"{where} is unreachable: the store's credentials cannot "
                                     "be had", hint="check identity.sts_endpoint_url and the "
                                                    "network")
    return CredentialsError(f"asking {where} for role {identity.role_arn} failed "
                            f"({type(exc).__name__})",
                            hint="check identity.sts_endpoint_url and identity.region")


class _ReportedByTheCaller(logging.Filter):
    """aiobotocore logs a failed refresh, with its traceback, before raising it (or, early in
    the renewal window, instead of raising it: the credentials in hand still work). A refusal of
    this module's is one line that whoever catches it reports; logged too, it would reach a
    command's output a second time, as a traceback. A refusal early in the window is met again
    on a later request, and raised once the credentials must be renewed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ModelkeepError))


logging.getLogger("aiobotocore.credentials").addFilter(_ReportedByTheCaller())


class WebIdentityFetcher(AioAssumeRoleWithWebIdentityCredentialFetcher):  # type: ignore[misc]
    """botocore's ``AssumeRoleWithWebIdentity`` fetcher with the token of a
    :class:`TokenSource`, asked for off the event loop (renewing it is an HTTP exchange with
    the provider), and STS's refusals in one line."""

    def __init__(self, identity: WebIdentity, source: TokenSource, client_creator: Any) -> None:
        self._identity = identity
        self._source = source
        self._token = ""  # the token of the exchange under way (refreshes run one at a time)
        super().__init__(
            client_creator=client_creator,
            web_identity_token_loader=lambda: self._token,
            role_arn=identity.role_arn,
            extra_args={"RoleSessionName": identity.session_name,
                        "DurationSeconds": identity.duration},
            expiry_window_seconds=identity.advisory_refresh,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._identity.role_arn!r}, {self._source!r})"

    async def _get_credentials(self) -> dict[str, Any]:
        fresh = self._source.fresh()
        if fresh is not None:
            self._token = str(fresh["access_token"])
        else:
            try:
                self._token = await asyncio.to_thread(self._source.access_token)
            except RuntimeError:
                # The loop's executor is shut down: the process is exiting with calls still in
                # flight; they get their answer, whatever it is, without the executor.
                self._token = self._source.access_token()
        try:
            response: dict[str, Any] = await super()._get_credentials()
        except ModelkeepError:
            raise
        except Exception as exc:
            raise sts_refused(self._identity, self._source, exc, self._token) from None
        finally:
            self._token = ""
        return response


class WebIdentityProvider(CredentialProvider):  # type: ignore[misc]
    """The one credential provider of a web-identity session: no ``AWS_*`` variable, config
    file or instance metadata is consulted."""

    METHOD = METHOD

    def __init__(self, credentials: Any) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> Any:
        return self._credentials


class WebIdentitySession(AioSession):  # type: ignore[misc]
    """An aiobotocore session signing with a role's credentials, had from STS for a sign-in's
    token when first needed and renewed before they expire. Its ``repr`` (which the store's
    cache of known chunks is keyed by) names the role, never a credential."""

    def __init__(self, identity: WebIdentity, source: TokenSource) -> None:
        super().__init__()
        self.identity = identity
        self.source = source
        fetcher = WebIdentityFetcher(identity, source, self._sts_client)
        credentials = AioDeferredRefreshableCredentials(
            refresh_using=fetcher.fetch_credentials, method=METHOD)
        credentials._advisory_refresh_timeout = identity.advisory_refresh
        credentials._mandatory_refresh_timeout = identity.mandatory_refresh
        self.register_component("credential_provider",
                                AioCredentialResolver([WebIdentityProvider(credentials)]))

    def __repr__(self) -> str:
        i = self.identity
        sts = i.sts_endpoint_url or i.region or "default"
        return (f"{type(self).__name__}(role_arn={i.role_arn!r}, "
                f"session_name={i.session_name!r}, sts={sts!r})")

    __str__ = __repr__

    @property
    def who(self) -> str:
        """Who the store's requests are made as, for a refusal."""
        return f"role {self.identity.role_arn} (assumed as {self.source.who})"

    @property
    def refusal_hint(self) -> str:
        return ("the role's policy must allow the bucket and its objects (s3:ListBucket, "
                "s3:GetObject, s3:PutObject; s3:DeleteObject for gc)")

    def _sts_client(self, service_name: str, **kwargs: Any) -> Any:
        # STS, not botocore, judges the duration: botocore's check of the documented minimum
        # would also refuse a test server's shorter sessions.
        ours = AioConfig(parameter_validation=False,
                         retries={"max_attempts": 3, "mode": "standard"}, **STS_TIMEOUTS)
        given = kwargs.pop("config", None)
        return self.create_client(
            service_name, endpoint_url=self.identity.sts_endpoint_url,
            region_name=self.identity.region, config=given.merge(ours) if given else ours,
            **kwargs)
