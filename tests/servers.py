"""Local backend servers for the test suite.

Each server runs as a child process on a free loopback port, with its output
written to a log file.  Startup failures raise ``ServerStartError`` carrying
the tail of that log, and every process is killed at interpreter exit even if
the fixture teardown never ran.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0

# Well-known development account of the Azure storage emulators (public, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

_live: set[ManagedProcess] = set()


class ServerStartError(RuntimeError):
    """A test server did not come up."""


@contextlib.contextmanager
def serving(start: Callable[[], Any], what: str) -> Iterator[Any]:
    """The server *start* returns, for a fixture to yield, stopped when the fixture ends. A server
    that does not start fails the run with its output: a missing server is never a skip."""
    import pytest

    try:
        server = start()
    except (ServerStartError, FileNotFoundError) as exc:
        pytest.fail(f"could not start {what}:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.process.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return text[-limit:] if text else "<empty>"


class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _live.add(self)

    def wait_ready(self, probe: Callable[[], bool], timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise ServerStartError(
                    f"{self.name} exited with code {code} during startup\n"
                    f"command: {' '.join(self.argv)}\n"
                    f"log ({self.log_path}):\n{_log_tail(self.log_path)}"
                )
            try:
                if probe():
                    return
            except Exception:  # not up yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} did not become ready within {timeout:.0f}s\n"
                    f"command: {' '.join(self.argv)}\n"
                    f"log ({self.log_path}):\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        _live.discard(self)
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # The leader is gone; make sure nothing it spawned lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_live):
        p.stop()


def _http_answers(url: str) -> bool:
    """True once anything at all answers HTTP on ``url`` (an error status counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True


def _start_with_retries(start: Callable[[int], ManagedProcess], attempts: int = 3):
    """Start a server on a fresh port, retrying if the port was taken meanwhile."""
    last: ServerStartError | None = None
    for _ in range(attempts):
        port = free_port()
        try:
            return port, start(port)
        except ServerStartError as exc:
            last = exc
    assert last is not None
    raise last


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class MotoS3:
    endpoint_url: str
    process: ManagedProcess
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-east-1"
    _client: Any = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem(**opts)``."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.key,
                aws_secret_access_key=self.secret,
                region_name=self.region,
            )
        return self._client

    def make_bucket(self) -> str:
        name = f"mk-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


def start_moto(workdir: Path) -> MotoS3:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise ServerStartError(f"{exe} not found; install the test extra: pip install -e '.[test]'")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def start(port: int) -> ManagedProcess:
        proc = ManagedProcess(
            "moto_server",
            [str(exe), "-H", "127.0.0.1", "-p", str(port)],
            workdir / f"moto-{port}.log",
            env=env,
        )
        proc.wait_ready(lambda: _http_answers(f"http://127.0.0.1:{port}/moto-api/"))
        return proc

    port, proc = _start_with_retries(start)
    return MotoS3(endpoint_url=f"http://127.0.0.1:{port}", process=proc)


# --------------------------------------------------------------------- Azure (Azurite)


def azurite_bin() -> Path:
    return REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"


@dataclass
class Azurite:
    blob_endpoint: str
    process: ManagedProcess
    account_name: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY
    ca_file: Path | None = None  # HTTPS (OAuth mode): the certificate to trust
    _service: Any = field(default=None, repr=False)

    @property
    def connection_string(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return (
            f"DefaultEndpointsProtocol={scheme};"
            f"AccountName={self.account_name};"
            f"AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    @property
    def account_host(self) -> str:
        """adlfs's ``account_host``: the endpoint without its scheme."""
        return self.blob_endpoint.split("://", 1)[1]

    @property
    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``adlfs.AzureBlobFileSystem(**opts)``."""
        return {"connection_string": self.connection_string}

    def service(self):
        if self._service is None:
            from azure.storage.blob import BlobServiceClient

            verify: dict[str, Any] = {"connection_verify": str(self.ca_file)} \
                if self.ca_file else {}
            self._service = BlobServiceClient.from_connection_string(self.connection_string,
                                                                     **verify)
        return self._service

    def make_container(self) -> str:
        name = f"mk-{uuid.uuid4().hex[:20]}"
        self.service().create_container(name)
        return name


def self_signed_certificate(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (its own CA), as (cert, key) PEM files
    in *workdir*: a test server's HTTPS certificate, and the bundle a client trusts it with."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / "cert.pem", workdir / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@dataclass(frozen=True)
class ServerTLS:
    """An HTTPS server's certificate and key, and the CA its clients' certificates must come
    from; *client_pem* is a client certificate from that CA with its key, in one PEM file."""

    cert: Path
    key: Path
    client_ca: Path
    client_pem: Path

    @classmethod
    def make(cls, workdir: Path) -> ServerTLS:
        (workdir / "server").mkdir(parents=True, exist_ok=True)
        (workdir / "client").mkdir(parents=True, exist_ok=True)
        cert, key = self_signed_certificate(workdir / "server")
        client_cert, client_key = self_signed_certificate(workdir / "client")
        pem = workdir / "client.pem"
        pem.write_bytes(client_cert.read_bytes() + client_key.read_bytes())
        pem.chmod(0o600)
        return cls(cert, key, client_cert, pem)


def _https_answers(url: str, ca_file: Path, client_cert: Path | None = None) -> bool:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert))
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True


def start_azurite(workdir: Path, *, oauth: bool = False) -> Azurite:
    """Azurite's blob service on loopback; with *oauth*, over HTTPS (a certificate made here,
    ``ca_file`` of the result) and taking bearer tokens (``--oauth basic``: issuer, audience
    and lifetime are checked, not the signature) as well as the account key."""
    exe = azurite_bin()
    if not exe.exists():
        raise FileNotFoundError(
            f"{exe} is missing. The Azure tests need the Azurite emulator: "
            "run `make node_modules` at the repository root."
        )

    cert, key = self_signed_certificate(workdir) if oauth else (None, None)
    tls = ["--oauth", "basic", "--cert", str(cert), "--key", str(key)] if oauth else []
    scheme = "https" if oauth else "http"

    def start(port: int) -> ManagedProcess:
        location = workdir / f"azurite-{port}"
        location.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess(
            "azurite-blob",
            [
                str(exe),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--location",
                str(location),
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                *tls,
            ],
            workdir / f"azurite-{port}.log",
        )
        probe = f"{scheme}://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list"
        proc.wait_ready(lambda: _https_answers(probe, cert) if cert else _http_answers(probe))
        return proc

    port, proc = _start_with_retries(start)
    return Azurite(blob_endpoint=f"{scheme}://127.0.0.1:{port}/{AZURITE_ACCOUNT}", process=proc,
                   ca_file=cert)


# ------------------------------------------------------------------------- MLflow server


@dataclass
class MlflowServer:
    url: str
    process: ManagedProcess
    store: Path  # the modelkeep store run artifacts are proxied into
    backend_store_uri: str = ""
    admin: tuple[str, str] | None = None  # (username, password) with --app-name basic-auth


def start_mlflow_server(
    workdir: Path,
    backend_store_uri: str,
    *,
    app_name: str | None = None,
    env: dict[str, str] | None = None,
    tls: ServerTLS | None = None,
) -> MlflowServer:
    """``mlflow server`` on loopback over *backend_store_uri* (SQLite, PostgreSQL, MySQL), with
    this interpreter's plugins (modelkeep's artifact repository among them). Run artifacts are
    served by the server (``mlflow-artifacts:``) and stored in a modelkeep store under *workdir*.
    With ``app_name="basic-auth"`` the server asks for credentials: an admin ``admin`` with a
    random password (``admin`` of the result) is created in a SQLite user database in *workdir*.
    With *tls*, it serves HTTPS only and asks every client for a certificate (mutual TLS)."""
    exe = Path(sys.executable).parent / "mlflow"
    # Job execution would start a job runner and seven huey consumers per server (about 1.3 GB);
    # nothing here submits MLflow jobs.
    full_env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    store = workdir / "store"
    extra: list[str] = []
    admin = None
    if app_name is not None:
        extra = ["--app-name", app_name]
    if app_name == "basic-auth":
        # MLflow ships no default admin password and refuses the one older releases shipped
        # (password1234); the config names a fresh one and a user store of its own.
        admin = (AUTH_ADMIN_USERNAME, f"admin-{uuid.uuid4().hex[:16]}")
        config = workdir / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\n"
            f"admin_username = {admin[0]}\n"
            f"admin_password = {admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        full_env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        # The auth app's forms need a fixed CSRF secret; any value does for one process.
        full_env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", uuid.uuid4().hex)

    scheme = "http"
    if tls is not None:
        scheme = "https"
        extra += ["--uvicorn-opts", f"--ssl-certfile {tls.cert} --ssl-keyfile {tls.key} "
                  f"--ssl-ca-certs {tls.client_ca} --ssl-cert-reqs 2"]

    def start(port: int) -> ManagedProcess:
        probe = f"{scheme}://127.0.0.1:{port}/health"
        proc = ManagedProcess(
            "mlflow server",
            [str(exe), "server", "--backend-store-uri", backend_store_uri,
             "--artifacts-destination", f"modelkeep://file{store}/@runs",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra],
            workdir / f"mlflow-{port}.log",
            env=full_env,
        )
        proc.wait_ready(lambda: _https_answers(probe, tls.cert, tls.client_pem) if tls
                        else _http_answers(probe), timeout=120)
        return proc

    port, proc = _start_with_retries(start)
    return MlflowServer(url=f"{scheme}://127.0.0.1:{port}", process=proc, store=store,
                        backend_store_uri=backend_store_uri, admin=admin)


AUTH_ADMIN_USERNAME = "admin"


# ------------------------------------------------------- databases for mlflow server backends

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@dataclass
class Database:
    """A fresh, empty database on the machine's PostgreSQL or MariaDB, dropped by :meth:`drop`."""

    kind: str  # "postgresql" or "mysql"
    name: str

    @property
    def uri(self) -> str:
        """A SQLAlchemy URL for ``mlflow server --backend-store-uri``."""
        if self.kind == "postgresql":
            return (f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:"
                    f"{POSTGRES['port']}/{self.name}")
        return f"mysql+pymysql://{MARIADB['user']}@{MARIADB['host']}:{MARIADB['port']}/{self.name}"

    def drop(self) -> None:
        _admin_sql(self.kind, f"DROP DATABASE IF EXISTS {self.name}")


def _admin_sql(kind: str, statement: str) -> None:
    if kind == "postgresql":
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", connect_timeout=10, **POSTGRES)
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()
    else:
        import pymysql

        conn = pymysql.connect(connect_timeout=10, **MARIADB)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()


def create_database(kind: str) -> Database:
    """A new database named ``mk_<random>`` (so parallel sessions never share one)."""
    db = Database(kind, f"mk_{uuid.uuid4().hex[:16]}")
    try:
        _admin_sql(kind, f"CREATE DATABASE {db.name}")
    except Exception as exc:
        where = POSTGRES if kind == "postgresql" else MARIADB
        raise ServerStartError(
            f"cannot create a {kind} database on {where['host']}:{where['port']} "
            f"as {where['user']}: {exc}"
        ) from exc
    return db


# ------------------------------------------------------------------ OpenID provider (oidc-provider)


def oidc_provider_script() -> Path:
    return REPO_ROOT / "tests" / "oidc" / "provider.mjs"


@dataclass
class OidcClient:
    """A client registered with the test provider. *username* and *groups* are the claims its
    client-credentials tokens carry (the registry names the job by them)."""

    client_id: str
    secret: str | None  # None: a public client (the device flow)
    grant_types: tuple[str, ...]
    username: str | None = None
    groups: tuple[str, ...] = ()
    access_token_ttl: int = 3600


@dataclass
class OidcProvider:
    issuer: str
    process: ManagedProcess
    audience: str
    scope: str
    clients: dict[str, OidcClient]
    users: dict[str, tuple[str, ...]]  # login -> groups
    url: str = ""  # where it listens (the issuer, unless another issuer was given)

    @property
    def metadata_url(self) -> str:
        return f"{self.url or self.issuer}/.well-known/openid-configuration"

    def client_secret(self, client_id: str) -> str:
        secret = self.clients[client_id].secret
        assert secret is not None
        return secret


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def start_oidc_provider(
    workdir: Path, clients: Sequence[OidcClient], users: dict[str, tuple[str, ...]],
    *, audience: str = "urn:modelkeep:registry", scope: str = "mlflow",
    issuer: str | None = None, resources: dict[str, str] | None = None,
    not_before: bool = False,
) -> OidcProvider:
    """The npm ``oidc-provider`` (a certified OpenID provider) on loopback, run by
    ``tests/oidc/provider.mjs`` with *clients* and *users*; its access tokens are JWTs for
    *audience*, and for each of *resources* (indicator: scope). *issuer* replaces the loopback
    URL as the issuer it announces; *not_before* adds ``nbf`` to its access tokens."""
    script = oidc_provider_script()
    if not (REPO_ROOT / "node_modules" / "oidc-provider").is_dir():
        raise ServerStartError(
            "node_modules/oidc-provider is missing: run `make node_modules` at the repository root")

    def start(port: int) -> ManagedProcess:
        config = workdir / f"oidc-{port}.json"
        config.write_text(json.dumps({
            "port": port, "audience": audience, "scope": scope,
            "clients": [{"client_id": c.client_id, "client_secret": c.secret,
                         "grant_types": list(c.grant_types), "username": c.username,
                         "groups": list(c.groups), "access_token_ttl": c.access_token_ttl}
                        for c in clients],
            "users": {login: {"groups": list(groups)} for login, groups in users.items()},
            "issuer": issuer, "resources": resources or {}, "not_before": not_before,
        }))
        config.chmod(0o600)  # it holds the clients' secrets
        proc = ManagedProcess("oidc-provider", ["node", str(script), str(config)],
                              workdir / f"oidc-{port}.log", env={**os.environ,
                                                                  "NODE_ENV": "test"})
        proc.wait_ready(lambda: _http_answers(
            f"http://127.0.0.1:{port}/.well-known/openid-configuration"))
        return proc

    port, proc = _start_with_retries(start)
    url = f"http://127.0.0.1:{port}"
    return OidcProvider(issuer=(issuer or url).rstrip("/"), process=proc, audience=audience,
                        scope=scope, clients={c.client_id: c for c in clients}, users=users,
                        url=url)


def oidc_auth_env(workdir: Path, provider: OidcProvider) -> dict[str, str]:
    """The environment of ``mlflow server --app-name oidc-auth`` (the ``mlflow-oidc-auth``
    plugin) trusting *provider*: bearer tokens are checked against the provider's JWKS, its
    issuer and the registry's audience; a token's first use creates the user (their groups
    must include ``mlflow``; ``mlflow-admin`` makes an admin). Permissions live in a SQLite
    database of their own; a model is reachable only through a grant (its creator gets
    MANAGE)."""
    return {
        "OIDC_DISCOVERY_URL": f"{provider.issuer}/.well-known/openid-configuration",
        "OIDC_ISSUER": provider.issuer,
        "OIDC_AUDIENCE": provider.audience,
        # The browser sign-in's client; bearer tokens do not use it.
        "OIDC_CLIENT_ID": "mlflow-ui",
        "OIDC_CLIENT_SECRET": uuid.uuid4().hex,
        "OIDC_USERS_DB_URI": f"sqlite:///{workdir / 'oidc_auth.db'}",
        "SECRET_KEY": uuid.uuid4().hex,
        "OIDC_USERNAME_FIELD": "preferred_username",
        "OIDC_PROVISION_ON_BEARER_AUTH": "true",
        "OIDC_TRUST_BEARER_GROUP_CLAIMS": "true",
        "DEFAULT_MLFLOW_PERMISSION": "NO_PERMISSIONS",
    }


class _Forms(HTMLParser):
    """The forms of a page: (action, {name: value}) of each, hidden and filled inputs alike."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a.get("action", ""), {}))
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][1][a["name"]] = a.get("value", "")


def page_forms(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def confirm_device_code(provider: OidcProvider, verification_uri_complete: str,
                        login: str) -> str:
    """Do what a person does in a browser to finish a device sign-in, over HTTP against the
    provider's own pages: open the verification URL (its user-code form is submitted), confirm
    the code, sign in as *login* on the login page, consent. Returns the final page."""
    import requests

    browser = requests.Session()
    page = browser.get(verification_uri_complete, timeout=30)
    steps = [
        lambda fields: fields,  # the user code, pre-filled from the URL
        lambda fields: fields,  # "is this the code on your device?": yes (confirm=yes)
        lambda fields: {**fields, "login": login, "password": "any"},  # the login page
        lambda fields: fields,  # the consent page
    ]
    for fill in steps:
        assert page.status_code == 200, page.text[:500]
        forms = page_forms(page.text)
        assert forms, f"no form on {page.url}: {page.text[:500]}"
        action, fields = forms[0]
        page = browser.post(urllib.parse.urljoin(page.url, action), data=fill(fields),
                            timeout=30)
    assert page.status_code == 200 and "Sign-in Success" in page.text, page.text[:500]
    return page.text


# ------------------------------------------------------------------ an HTTP forward proxy


@dataclass
class HttpProxy:
    """proxy.py (PyPI ``proxy.py``) on loopback: a forward proxy for plain HTTP and for
    ``CONNECT`` tunnels, writing one access-log line per request it forwarded."""

    url: str
    access_log: Path
    process: ManagedProcess

    def forwarded(self, wait_for: str = "", timeout: float = 10.0) -> list[str]:
        """The access-log lines so far (``… - GET host:port/path - 200 OK …``, ``… - CONNECT
        host:port …``); with *wait_for*, waits until a line contains it. proxy.py writes a line
        when the client's connection closes."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            lines = [line for line in text.splitlines() if "access_log" in line]
            if not wait_for or any(wait_for in line for line in lines) or \
                    time.monotonic() > deadline:
                return lines
            time.sleep(0.1)


def start_http_proxy(workdir: Path) -> HttpProxy:
    workdir.mkdir(parents=True, exist_ok=True)
    port_file, access_log = workdir / "proxy.port", workdir / "proxy-access.log"
    exe = Path(sys.executable).parent / "proxy"
    proc = ManagedProcess(
        "proxy.py",
        [str(exe), "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
         "--num-acceptors", "1", "--num-workers", "1", "--log-level", "INFO",
         "--log-file", str(access_log)],
        workdir / "proxy.log",
    )
    proc.wait_ready(lambda: port_file.exists() and port_file.read_text().strip().isdigit())
    return HttpProxy(f"http://127.0.0.1:{port_file.read_text().strip()}", access_log, proc)
