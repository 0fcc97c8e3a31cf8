"""The one HTTP session modelkeep uses to talk to an MLflow server, and where its credentials
come from.

The credentials are the ones MLflow's own client reads, with the same meaning
(``mlflow/utils/rest_utils.py``): ``MLFLOW_TRACKING_USERNAME`` + ``MLFLOW_TRACKING_PASSWORD`` (HTTP
basic), else ``MLFLOW_TRACKING_TOKEN`` (bearer); ``MLFLOW_TRACKING_INSECURE_TLS`` turns certificate
checks off, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` names a CA bundle and
``MLFLOW_TRACKING_CLIENT_CERT_PATH`` a client certificate. Every way of authenticating lives in
:func:`open_session`, so another (OAuth) is added in this one place.

Time is bounded: a server that does not accept the connection is given
:data:`CONNECT_TIMEOUT` seconds per attempt and :data:`CONNECT_RETRIES` retries, so an unreachable
registry is reported in seconds (MLflow's client retries for minutes). Only connection failures,
and 429/5xx answers to reads, are retried here: a write whose answer was lost is not sent twice.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from modelkeep.errors import MissingExtraError

if TYPE_CHECKING:
    import requests

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


def open_session() -> requests.Session:
    """A session with connection reuse, bounded retries and MLflow's credentials."""
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

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        session.auth = (user, password)
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    if _truthy(os.environ.get("MLFLOW_TRACKING_INSECURE_TLS")):
        session.verify = False
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return session
