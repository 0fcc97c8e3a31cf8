"""An OpenID provider's metadata, found by OpenID Connect Discovery
(``ISSUER/.well-known/openid-configuration``, or the ``[auth] metadata_url`` a provider such as
Entra ID's v1 endpoint needs) and kept for the life of the process. The document must name the
configured issuer exactly (RFC 8414), wherever it was read from.

Every exchange with the provider goes through :func:`http_session` (bounded time, requests' TLS
settings: ``REQUESTS_CA_BUNDLE`` names a CA bundle). A provider that cannot be reached, or that
publishes no discovery document, or one for another issuer, is one :class:`SignInError` line
naming the issuer and what to check.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelkeep.errors import MissingExtraError, SignInError

if TYPE_CHECKING:
    import requests

TIMEOUT = (5.0, 30.0)  # connect, read: a provider is asked small questions
_cache: dict[str, ProviderMetadata] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    token_endpoint: str
    jwks_uri: str | None
    device_authorization_endpoint: str | None
    revocation_endpoint: str | None


def http_session() -> requests.Session:
    try:
        import requests
    except ImportError as exc:
        raise MissingExtraError("requests", "auth") from exc
    session = requests.Session()
    session.headers["User-Agent"] = "modelkeep"
    return session


def unreachable(issuer: str) -> SignInError:
    return SignInError(f"the OpenID provider {issuer} is unreachable",
                       hint="check [auth] issuer (or MODELKEEP_AUTH_ISSUER) and the network")


def get_json(session: requests.Session, url: str, issuer: str) -> dict[str, Any]:
    import requests

    try:
        response = session.get(url, timeout=TIMEOUT)
    except requests.RequestException:
        raise unreachable(issuer) from None
    if response.status_code != 200:
        raise SignInError(f"the OpenID provider {issuer} answered {url} with HTTP "
                          f"{response.status_code}",
                          hint="check [auth] issuer: it must be the provider's issuer URL")
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise SignInError(f"the OpenID provider {issuer} answered {url} with something that is "
                          "not a JSON object", hint="check [auth] issuer")
    return data


def metadata(issuer: str, url: str | None = None) -> ProviderMetadata:
    """The provider's endpoints, from *url* (default: the issuer's discovery document), fetched
    once per process and document."""
    url = url or f"{issuer}/.well-known/openid-configuration"
    with _lock:
        found = _cache.get(url)
    if found is not None and found.issuer == issuer:
        return found
    data = get_json(http_session(), url, issuer)
    if str(data.get("issuer", "")).rstrip("/") != issuer:
        raise SignInError(f"the OpenID provider at {url} calls itself "
                          f"{data.get('issuer')!r}, not {issuer!r}",
                          hint="set [auth] issuer to exactly the issuer the provider announces")
    if not isinstance(data.get("token_endpoint"), str):
        raise SignInError(f"the OpenID provider {issuer} announces no token endpoint")
    found = ProviderMetadata(
        issuer=issuer,
        token_endpoint=data["token_endpoint"],
        jwks_uri=data.get("jwks_uri"),
        device_authorization_endpoint=data.get("device_authorization_endpoint"),
        revocation_endpoint=data.get("revocation_endpoint"),
    )
    with _lock:
        _cache[url] = found
    return found
