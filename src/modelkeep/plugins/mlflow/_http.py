"""The HTTP client modelkeep talks to an MLflow server with, and where its credentials come
from.

The credentials are the ones MLflow's own client reads, with the same meaning
(``mlflow/utils/rest_utils.py``): ``MLFLOW_TRACKING_USERNAME`` + ``MLFLOW_TRACKING_PASSWORD`` (HTTP
basic), else ``MLFLOW_TRACKING_TOKEN`` (bearer), else a user and password in the server's URL;
``MLFLOW_TRACKING_INSECURE_TLS`` turns certificate checks off, ``MLFLOW_TRACKING_SERVER_CERT_PATH``
names a CA bundle (else ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's, as requests
does) and ``MLFLOW_TRACKING_CLIENT_CERT_PATH`` a client certificate; ``http_proxy``,
``https_proxy`` and ``no_proxy`` are honoured. Without those credentials, a sign-in configured in
``[auth]`` of ``modelkeep.toml`` or ``MODELKEEP_AUTH_*`` (:mod:`modelkeep.auth`) sends OAuth
access tokens: a job's by the client-credentials grant, a person's from ``modelkeep login``,
renewed before they expire, and once more when the server refuses one (a 401). Every way of
authenticating is chosen in :func:`credentials`, which also says, for messages, who is asking and
what to do when the server refuses them.

The client is the standard library's ``http.client`` with a pool of kept-alive connections,
chosen over requests for what importing it costs every command, measured whole-process: requests
65 ms, urllib3 alone 40 ms, ``http.client`` 17 ms; more than a read command's requests take on a
local network.

Time is bounded: a server that does not accept the connection is given
:data:`CONNECT_TIMEOUT` seconds per attempt and :data:`CONNECT_RETRIES` retries, so an unreachable
registry is reported in seconds (MLflow's client retries for minutes). Only connection failures,
and 429/502/503/504 answers to reads (at most :data:`STATUS_RETRIES` times, after the server's
``Retry-After``), are retried here: a write whose answer was lost is not sent twice.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import random
import select
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit

from modelkeep import _waiting
from modelkeep.errors import ConfigError

if TYPE_CHECKING:
    import socket
    from email.message import Message

    from modelkeep.auth.settings import AuthSettings
    from modelkeep.auth.tokens import TokenSource

CONNECT_TIMEOUT = 2.0
CONNECT_RETRIES = 2
STATUS_RETRIES = 2
RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_AFTER_MAX = 30.0  # a longer Retry-After is cut to this: a command does not hang for it
BACKOFF = 0.2
READ_TIMEOUT_DEFAULT = 120.0  # MLflow's MLFLOW_HTTP_REQUEST_TIMEOUT default


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def default_read_timeout() -> float:
    """``MLFLOW_HTTP_REQUEST_TIMEOUT``, as MLflow's client reads it."""
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or READ_TIMEOUT_DEFAULT)
    except ValueError:
        return READ_TIMEOUT_DEFAULT


@dataclass(frozen=True)
class Credentials:
    """How requests to the registry authenticate: *kind* is ``basic``, ``token`` (a static
    bearer token), ``client`` (client credentials), ``login`` (``modelkeep login``) or ``none``;
    *who* names the identity in a refusal, *sign_in* says what to do about a 401. The secrets
    are *basic* (user and password), *token*, or *source* (the sign-in's renewing
    :class:`~modelkeep.auth.tokens.TokenSource`); none of them is in the ``repr``."""

    kind: str
    who: str
    sign_in: str
    basic: tuple[str, str] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: TokenSource | None = field(default=None, repr=False)
    settings: AuthSettings | None = None

    def authorization(self) -> str | None:
        """The ``Authorization`` header a request carries now (None: none)."""
        if self.basic is not None:
            pair = f"{self.basic[0]}:{self.basic[1]}".encode()
            return f"Basic {base64.b64encode(pair).decode('ascii')}"
        if self.token is not None:
            return f"Bearer {self.token}"
        if self.source is not None:
            return f"Bearer {self.source.access_token()}"
        return None


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
                           "this server", basic=(user, os.environ["MLFLOW_TRACKING_PASSWORD"]))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return Credentials("token", "the token in MLFLOW_TRACKING_TOKEN",
                           "the token in MLFLOW_TRACKING_TOKEN was refused (expired, or for "
                           "another server): set a current one, or unset it and sign in with "
                           "`modelkeep login`", token=os.environ["MLFLOW_TRACKING_TOKEN"])
    settings = sign_in_settings()
    if settings is None:
        from modelkeep.plugins.mlflow._errors import NO_CREDENTIALS_HINT

        return Credentials("none", "this anonymous user", NO_CREDENTIALS_HINT)
    from modelkeep.auth.settings import CLIENT_CREDENTIALS
    from modelkeep.auth.tokens import source_for

    source = source_for(settings)
    if settings.flow == CLIENT_CREDENTIALS:
        return Credentials("client", source.who,
                           f"the registry refused a fresh token of client "
                           f"{settings.client_id!r} from {settings.issuer}: check that it "
                           "trusts this issuer and audience", source=source, settings=settings)
    return Credentials("login", source.who,
                       f"run `modelkeep login` (signed in to {settings.issuer} as client "
                       f"{settings.client_id!r})", source=source, settings=settings)


# -- transport -------------------------------------------------------------------------------


class TransportError(Exception):
    """A request that got no HTTP answer. *kind*: ``unreachable`` (no connection, after the
    retries), ``timeout`` (connected, no answer within the read timeout), ``untrusted`` (the
    server's certificate is not trusted), ``tls`` (another TLS failure, such as a client
    certificate the server wants), ``proxy`` (the proxy refused the tunnel),
    ``proxy-unreachable`` (no connection to the proxy; *detail* is its host:port), ``closed`` (the
    server closed the connection without an answer) or ``broken`` (the connection failed
    mid-exchange)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _ConnectFailed(Exception):
    def __init__(self, detail: str, proxy: str | None = None) -> None:
        super().__init__(detail)
        self.proxy = proxy  # host:port of the proxy that could not be reached, if one was used


@dataclass(frozen=True)
class Response:
    """A whole answer: status, headers and the body, read to its end."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        """The body as JSON (:class:`ValueError` if it is not)."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)


def _proxy_for(scheme: str, host: str) -> _Proxy | None:
    """The HTTP proxy a request to *host* goes through: the environment's ``http_proxy`` /
    ``https_proxy`` / ``all_proxy``, unless ``no_proxy`` names the host (as requests and
    MLflow's client read them; macOS and Windows add the system's settings)."""
    if sys.platform not in ("darwin", "win32") and not any(
            k.lower().endswith("_proxy") for k in os.environ):
        return None  # spares importing urllib.request on every command
    import urllib.request

    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"proxy {parts.scheme}://{parts.hostname or ''} for {scheme}:// "
                          "is not an http:// proxy",
                          hint=f"set {scheme}_proxy to an http://host:port proxy, or name the "
                          "registry's host in no_proxy")
    authorization = None
    if parts.username:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = f"Basic {base64.b64encode(pair).decode('ascii')}"
    return _Proxy(parts.hostname, parts.port or 80, authorization)


def tls_context() -> ssl.SSLContext:
    """The TLS settings of MLflow's client: ``MLFLOW_TRACKING_INSECURE_TLS`` checks nothing,
    else the CA bundle (file or folder) of ``MLFLOW_TRACKING_SERVER_CERT_PATH``, else of
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's (requests' default);
    ``MLFLOW_TRACKING_CLIENT_CERT_PATH`` is a PEM file with the client's certificate and key."""
    if _truthy(os.environ.get("MLFLOW_TRACKING_INSECURE_TLS")):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        bundle = (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
                  or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"))
        if bundle is None:
            try:
                import certifi

                bundle = certifi.where()
            except ImportError:
                bundle = None
        try:
            if bundle is not None and os.path.isdir(bundle):
                context = ssl.create_default_context(capath=bundle)
            else:
                context = ssl.create_default_context(cafile=bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read the CA bundle {bundle}: {exc}",
                              hint="set MLFLOW_TRACKING_SERVER_CERT_PATH to a PEM file of the "
                              "server's CA certificates") from None
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        try:
            context.load_cert_chain(client_cert)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read the client certificate {client_cert}: {exc}",
                              hint="MLFLOW_TRACKING_CLIENT_CERT_PATH must name a PEM file with "
                              "the certificate and its private key") from None
    return context


def _retry_after(response: Response, attempt: int) -> float:
    """How long to wait before asking again: the server's ``Retry-After`` (seconds or a date,
    at most :data:`RETRY_AFTER_MAX`), else exponential back-off with jitter."""
    value = response.headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = float(BACKOFF * 2**attempt)
        return max(0.0, min(RETRY_AFTER_MAX, seconds))
    return float(BACKOFF * 2**attempt * (0.5 + random.random()))


class Client:
    """Requests to one server at *base_url* (``http(s)://host[:port][/prefix]``), with the
    registry credentials: kept-alive connections (one per thread at a time, reused), the
    environment's proxy, MLflow's TLS settings, and bounded retries (see the module
    docstring). Thread-safe."""

    def __init__(self, base_url: str, creds: Credentials | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s):// URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        if creds is None:
            creds = credentials()
        if creds.kind == "none" and parts.username:
            # As requests does for MLflow's client: credentials in the URL are HTTP basic.
            creds = dataclasses.replace(
                creds, kind="basic", who=f"user {unquote(parts.username)!r}",
                basic=(unquote(parts.username), unquote(parts.password or "")))
        self.creds = creds
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout if read_timeout is not None else default_read_timeout()
        self._proxy = _proxy_for(parts.scheme, self._host)
        self._context: ssl.SSLContext | None = None
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json_body: Mapping[str, Any] | None = None) -> Response:
        """*method* of *path* (below the base URL's prefix): *params* as the query, *json_body*
        as a JSON body. Returns every answer the server gives, after the retries for 429/5xx
        to a GET; raises :class:`TransportError` when there is none."""
        target = self._prefix + path
        if params:
            target += "?" + urlencode(
                {k: (v if isinstance(v, list | tuple) else str(v)) for k, v in params.items()},
                doseq=True)
        payload = None if json_body is None else json.dumps(json_body).encode()
        connect_failures = status_retries = 0
        renewed = False
        while True:
            headers = {"User-Agent": "modelkeep", "Accept": "application/json",
                       "Accept-Encoding": "identity"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            authorization = self.creds.authorization()
            if authorization is not None:
                headers["Authorization"] = authorization
            try:
                response = self._exchange(method, target, headers, payload)
            except _ConnectFailed as exc:
                if connect_failures >= CONNECT_RETRIES:
                    if exc.proxy is not None:
                        raise TransportError("proxy-unreachable", exc.proxy) from None
                    raise TransportError("unreachable", str(exc)) from None
                connect_failures += 1
                time.sleep(BACKOFF * 2 ** (connect_failures - 1))
                continue
            if (response.status == 401 and self.creds.source is not None and not renewed
                    and authorization is not None):
                # A token refused before its time (a rotated key, a revoked session): one
                # renewal and one retry; a second refusal is the registry's answer.
                self.creds.source.renew_refused(authorization.removeprefix("Bearer "))
                renewed = True
                continue
            if (method == "GET" and response.status in RETRY_STATUSES
                    and status_retries < STATUS_RETRIES):
                time.sleep(_retry_after(response, status_retries))
                status_retries += 1
                continue
            return response

    # -- connections ---------------------------------------------------------------------------

    def _exchange(self, method: str, target: str, headers: dict[str, str],
                  payload: bytes | None) -> Response:
        conn, reused = self._connection()
        url = target
        if self._proxy is not None and not self._https:
            url = self._origin + target  # a plain-HTTP proxy takes the absolute URL
            if self._proxy.authorization:
                headers["Proxy-Authorization"] = self._proxy.authorization
        try:
            try:
                conn.request(method, url, body=payload, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The server closed the kept-alive connection as this request was sent: it read
                # nothing, so the request goes again on a new connection.
                conn.close()
                conn, reused = self._connection(fresh=True)
                conn.request(method, url, body=payload, headers=headers)
            _waiting.now_waiting()
            try:
                answer = conn.getresponse()
            except http.client.RemoteDisconnected:
                if not (reused and method == "GET"):
                    raise
                conn.close()
                conn, reused = self._connection(fresh=True)
                conn.request(method, url, body=payload, headers=headers)
                answer = conn.getresponse()
            body = answer.read()
        except TimeoutError:
            conn.close()
            raise TransportError("timeout", f"no answer within {self.read_timeout:.0f} s"
                                 ) from None
        except ssl.SSLError as exc:
            # After a TLS 1.3 handshake, a server that wants a client certificate says so here
            # (or just closes the connection: "closed").
            conn.close()
            raise TransportError("tls", _tls_reason(exc)) from None
        except http.client.RemoteDisconnected:
            conn.close()
            raise TransportError("closed", "the server closed the connection without answering"
                                 ) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError("broken", f"{type(exc).__name__}: {exc}") from None
        response = Response(answer.status, answer.headers, body)
        if answer.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return response

    def _connection(self, *, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A kept-alive connection the server has not closed, else a new one; and whether it
        was reused."""
        while not fresh:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()  # readable while idle: the server closed it
        return self._connect(), False

    def _connect(self) -> http.client.HTTPConnection:
        host, port = (self._proxy.host, self._proxy.port) if self._proxy else (self._host,
                                                                               self._port)
        conn: http.client.HTTPConnection
        if self._https:
            if self._context is None:
                self._context = tls_context()
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout,
                                               context=self._context)
            if self._proxy is not None:
                tunnel = ({"Proxy-Authorization": self._proxy.authorization}
                          if self._proxy.authorization else None)
                conn.set_tunnel(self._host, self._port, headers=tunnel)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise TransportError("untrusted", _tls_reason(exc)) from None
        except ssl.SSLError as exc:
            conn.close()
            raise TransportError("tls", _tls_reason(exc)) from None
        except OSError as exc:
            conn.close()
            if str(exc).startswith("Tunnel connection failed"):
                raise TransportError("proxy", str(exc)) from None
            raise _ConnectFailed(f"{type(exc).__name__}: {exc}",
                                 f"{host}:{port}" if self._proxy else None) from None
        assert conn.sock is not None
        conn.sock.settimeout(self.read_timeout)
        return conn


def _readable(sock: socket.socket) -> bool:
    """Whether *sock* has something to read now: on an idle kept-alive connection, that the
    server closed it. poll, not select, which fails on descriptors above 1023 (a process with
    many files open)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _tls_reason(exc: Exception) -> str:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return str(reason)
