"""``modelkeep login``: the OAuth 2 device authorization grant (RFC 8628), then the ID token
checked and the login kept in the token file.

The device authorization request names the client, the scopes (``openid`` and
``offline_access`` are always asked for: the identity and a refresh token) and the audience. The
person opens the verification URL anywhere, enters the user code and signs in; meanwhile the
token endpoint is polled at the interval the provider asked for (slower after ``slow_down``)
until it answers with tokens, a refusal, or the code's expiry. The ID token's signature (the
provider's JWKS), issuer, audience and expiry are checked with joserfc before its identity is
written down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelkeep.auth import provider, tokenfile
from modelkeep.auth.tokens import audience_params, exchange, oauth_session, stamp
from modelkeep.errors import SignInError

if TYPE_CHECKING:
    from modelkeep.auth.settings import AuthSettings

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
LOGIN_SCOPES = ("openid", "offline_access")
IDENTITY_CLAIMS = ("sub", "preferred_username", "email", "name")


@dataclass(frozen=True)
class DeviceCode:
    """What the person is shown (``user_code``, ``verification_uri``) and what is polled with
    (``device_code``, kept out of ``repr``)."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float
    device_code: str = ""

    def __repr__(self) -> str:
        return f"DeviceCode(user_code={self.user_code!r}, uri={self.verification_uri!r})"


def scopes(settings: AuthSettings) -> str:
    asked = list(LOGIN_SCOPES) + [s for s in settings.scopes if s not in LOGIN_SCOPES]
    return " ".join(asked)


def start(settings: AuthSettings) -> DeviceCode:
    """Ask the provider for a device code and a user code."""
    meta = provider.metadata(settings.issuer, settings.metadata_url)
    if not meta.device_authorization_endpoint:
        raise SignInError(f"the OpenID provider {settings.issuer} does not offer the device "
                          "flow (no device_authorization_endpoint)",
                          hint="enable the device authorization grant for this client")
    import requests

    body = {"client_id": settings.client_id, "scope": scopes(settings),
            **audience_params(settings)}
    try:
        response = provider.http_session().post(meta.device_authorization_endpoint, data=body,
                                                timeout=provider.TIMEOUT)
    except requests.RequestException:
        raise provider.unreachable(settings.issuer) from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code != 200 or not isinstance(data, dict) or "device_code" not in data:
        error = data.get("error", f"HTTP {response.status_code}") if isinstance(data, dict) \
            else f"HTTP {response.status_code}"
        described = data.get("error_description") if isinstance(data, dict) else None
        detail = f"{error}: {described}" if described else str(error)
        raise SignInError(f"the OpenID provider {settings.issuer} refused a device sign-in for "
                          f"client {settings.client_id!r} ({detail})",
                          hint="check [auth] client_id: it must be a public client allowed "
                          "the device flow")
    return DeviceCode(
        user_code=str(data["user_code"]),
        verification_uri=str(data.get("verification_uri") or data.get("verification_url")),
        verification_uri_complete=data.get("verification_uri_complete"),
        expires_in=float(data.get("expires_in") or 600),
        interval=float(data.get("interval") or 5),
        device_code=str(data["device_code"]),
    )


def wait(settings: AuthSettings, code: DeviceCode, *,
         sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until the person has signed in; the token response."""
    meta = provider.metadata(settings.issuer, settings.metadata_url)
    session = oauth_session(settings)
    interval = code.interval
    deadline = time.monotonic() + code.expires_in
    while True:
        sleep(interval)
        try:
            return exchange(settings, "the device sign-in", lambda: _poll(session, meta, code))
        except _Pending as pending:
            if pending.error == "slow_down":
                interval += 5  # RFC 8628 §3.5
        if time.monotonic() > deadline:
            raise SignInError("the sign-in code expired before it was confirmed",
                              hint="run `modelkeep login` again")


class _Pending(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _poll(session: Any, meta: provider.ProviderMetadata, code: DeviceCode) -> Any:
    from authlib.integrations.base_client.errors import OAuthError

    try:
        return session.fetch_token(meta.token_endpoint, grant_type=GRANT_TYPE,
                                   device_code=code.device_code, timeout=provider.TIMEOUT)
    except OAuthError as exc:
        if exc.error in ("authorization_pending", "slow_down"):
            raise _Pending(exc.error) from None
        if exc.error == "expired_token":
            raise SignInError("the sign-in code expired before it was confirmed",
                              hint="run `modelkeep login` again") from None
        if exc.error == "access_denied":
            raise SignInError("the sign-in was declined at the OpenID provider",
                              hint="run `modelkeep login` again and confirm the code") from None
        raise


def identity(settings: AuthSettings, id_token: str) -> dict[str, Any]:
    """The identity claims of *id_token*, once its signature (the provider's JWKS), issuer,
    audience (this client) and expiry check out."""
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    meta = provider.metadata(settings.issuer, settings.metadata_url)
    if not meta.jwks_uri:
        raise SignInError(f"the OpenID provider {settings.issuer} publishes no signing keys "
                          "(no jwks_uri)")
    keys = provider.get_json(provider.http_session(), meta.jwks_uri, settings.issuer)
    try:
        token = jwt.decode(id_token, KeySet.import_key_set(keys))  # type: ignore[arg-type]
        jwt.JWTClaimsRegistry(
            # The issuer is kept without a trailing slash; Entra v1's and Auth0's have one.
            iss={"essential": True, "values": [settings.issuer, settings.issuer + "/"]},
            aud={"essential": True, "value": settings.client_id},
            sub={"essential": True},
            exp={"essential": True},
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise SignInError(f"the ID token from {settings.issuer} does not check out "
                          f"({type(exc).__name__})",
                          hint="check [auth] issuer and client_id") from None
    return {k: token.claims[k] for k in IDENTITY_CLAIMS if k in token.claims}


def login(settings: AuthSettings, show: Callable[[DeviceCode], None], *,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Sign in by the device flow, *show* the code to the person, wait, keep the login; the
    saved entry (tokens included: the caller must not print it)."""
    code = start(settings)
    show(code)
    token = stamp(wait(settings, code, sleep=sleep))
    who: dict[str, Any] = {}
    if token.get("id_token"):
        who = identity(settings, str(token["id_token"]))
    entry = {
        "issuer": settings.issuer,
        "client_id": settings.client_id,
        "access_token": token["access_token"],
        "refresh_token": token.get("refresh_token"),
        "expires_at": token["expires_at"],
        "lifetime": token["lifetime"],
        "scope": token.get("scope", ""),
        "token_type": token.get("token_type", "Bearer"),
        "identity": who,
        "signed_in_at": time.time(),
    }
    tokenfile.save(settings.issuer, settings.client_id, entry)
    return entry
