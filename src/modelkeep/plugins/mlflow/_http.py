"""The one HTTP session modelkeep uses to talk to an MLflow server, and where its credentials
come from.

The credentials are the ones MLflow's own client reads, with the same meaning
(``mlflow/utils/rest_utils.py``): ``MLFLOW_TRACKING_USERNAME`` + ``MLFLOW_TRACKING_PASSWORD`` (HTTP
basic), else ``MLFLOW_TRACKING_TOKEN`` (bearer); ``MLFLOW_TRACKING_INSECURE_TLS`` turns certificate
checks off, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` names a CA bundle and
``MLFLOW_TRACKING_CLIENT_CERT_PATH`` a client certificate. Without those, a sign-in configured
in ``[auth]`` of ``modelkeep.toml`` or ``MODELKEEP_AUTH_*`` (:mod:`modelkeep.auth`) sends OAuth
access tokens: a job's by the client-credentials grant, a person's from ``modelkeep login``,
renewed before they expire. Every way of authenticating is chosen in :func:`credentials`, which
also says, for messages, who is asking and what to do when the server refuses them.

Time is bounded: a server that does not accept the connection is given
:data:`CONNECT_TIMEOUT` seconds per attempt and :data:`CONNECT_RETRIES` retries, so an unreachable
registry is reported in seconds (MLflow's client retries for minutes). Only connection failures,
and 429/5xx answers to reads, are retried here: a write whose answer was lost is not sent twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelkeep.errors import MissingExtraError

if TYPE_CHECKING:
    import requests

    from modelkeep.auth.settings import AuthSettings

CONNECT_TIMEOUT = 2.0
CONNECT_RETRIES = 2
READ_TIMEOUT_DEFAULT = 120.0  # MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT default


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def read_timeout() -> float:
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or READ_TIMEOUT_DEFAULT)
    except ValueError:
        return READ_TIMEOUT_DEFAULT


@dataclass(frozen=True)
class Credentials:
    """How requests to the registry authenticate: *kind* is ``basic``, ``token`` (a static
    bearer token), ``client`` (client credentials), ``login`` (``modelkeep login``) or ``none``;
    *who* names the identity in a refusal, *sign_in* says what to do about a 401. No secret."""

    kind: str
    who: str
    sign_in: str
    auth: Any = None  # what requests sends with (basic pair or OAuth bearer auth)
    settings: AuthSettings | None = None


def sign_in_settings() -> AuthSettings | None:
    """The ``[auth]`` settings in force (None: no sign-in configured)."""
    from modelkeep.auth.settings import configured

    return configured()


def credentials() -> Credentials:
    """The credentials requests to the registry carry, chosen in MLflow's order (basic, then
    ``MLFLOW_TRACKING_TOKEN``), then a configured sign-in."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return Credentials("basic", f"user {user!r}",
                           "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for "
                           "this server", auth=(user, os.environ["MLFLOW_TRACKING_PASSWORD"]))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return Credentials("token", "the token in MLFLOW_TRACKING_TOKEN",
                           "the token in MLFLOW_TRACKING_TOKEN was refused (expired, or for "
                           "another server): set a current one, or unset it and sign in with "
                           "`modelkeep login`")
    settings = sign_in_settings()
    if settings is None:
        from modelkeep.plugins.mlflow._errors import NO_CREDENTIALS_HINT

        return Credentials("none", "this anonymous user", NO_CREDENTIALS_HINT)
    from modelkeep.auth.settings import CLIENT_CREDENTIALS
    from modelkeep.auth.tokens import BearerAuth, source_for

    source = source_for(settings)
    if settings.flow == CLIENT_CREDENTIALS:
        return Credentials("client", source.who,
                           f"the registry refused a fresh token of client "
                           f"{settings.client_id!r} from {settings.issuer}: check that it "
                           "trusts this issuer and audience", auth=BearerAuth(source),
                           settings=settings)
    return Credentials("login", source.who,
                       f"run `modelkeep login` (signed in to {settings.issuer} as client "
                       f"{settings.client_id!r})", auth=BearerAuth(source), settings=settings)


def open_session(creds: Credentials | None = None) -> requests.Session:
    """A session with connection reuse, bounded retries and the registry credentials
    (*creds*, else :func:`credentials`)."""
    try:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry
    except ImportError as exc:
        raise MissingExtraError("requests", "mlflow") from exc

    session = requests.Session()
    retry = Retry(total=CONNECT_RETRIES + 2, connect=CONNECT_RETRIES, read=0,
                  status=2, other=0, backoff_factor=0.2,
                  status_forcelist=(429, 502, 503, 504),
                  allowed_methods=frozenset({"GET"}), respect_retry_after_header=True,
                  raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=16)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "modelkeep"

    creds = creds or credentials()
    if creds.auth is not None:
        session.auth = creds.auth
    elif creds.kind == "token":
        session.headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    if _truthy(os.environ.get("MLFLOW_TRACKING_INSECURE_TLS")):
        session.verify = False
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return session
