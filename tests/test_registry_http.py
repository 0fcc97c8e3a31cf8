"""The HTTP client of the REST registry (:mod:`modelkeep.plugins.mlflow._http`) against real
servers: MLflow's TLS variables on an ``mlflow server`` that serves HTTPS only and asks for a
client certificate, the environment's proxy (proxy.py on loopback, plain and ``CONNECT``), and the
retries of a fault-injecting proxy (:mod:`tests.faultproxy`): a 429 to a read waits for its
``Retry-After``, a refused write is not sent twice, a stalled answer ends in the read timeout.

Each setting is checked the way a user meets it: the ``modelkeep`` command in a fresh process,
and MLflow's own client, given the same variables, reading back what was written.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import modelkeep
from modelkeep.errors import RegistryError
from modelkeep.hooks import make_plugin_manager
from modelkeep.plugins.mlflow.rest import RestRegistry
from tests.backends import unique_name
from tests.faultproxy import Fault, FaultProxy, in_front_of
from tests.helpers import imports_of, tensors, write_model
from tests.servers import (
    HttpProxy,
    MlflowServer,
    ServerTLS,
    serving,
    start_http_proxy,
    start_mlflow_server,
)

pytestmark = pytest.mark.xdist_group("mlflow-servers")

SRC = Path(__file__).resolve().parents[1] / "src"
TLS_VARS = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
            "MLFLOW_TRACKING_INSECURE_TLS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTLS:
    return ServerTLS.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_server(tls: ServerTLS, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[MlflowServer]:
    workdir = tmp_path_factory.mktemp("mlflow-https")
    with serving(lambda: start_mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}",
                                             tls=tls), "mlflow server over HTTPS") as server:
        yield server


@pytest.fixture(scope="module")
def http_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpProxy]:
    with serving(lambda: start_http_proxy(tmp_path_factory.mktemp("proxy")),
                 "proxy.py") as proxy:
        yield proxy


@pytest.fixture
def faulty(mlflow_server: Any) -> Iterator[FaultProxy]:
    with in_front_of(mlflow_server.url) as proxy:
        yield proxy


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
           and k not in TLS_VARS and k.lower() not in PROXY_VARS}
    return {**env, "PYTHONPATH": str(SRC), **extra}


def _modelkeep(cwd: Path, registry: str, *args: str, **env: str
               ) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "modelkeep", "--store", str(cwd / "store"), "--registry",
         registry, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
        timeout=120)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in (*TLS_VARS, *PROXY_VARS, *(v.upper() for v in PROXY_VARS)):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# -- TLS ---------------------------------------------------------------------------------------


def test_a_server_certificate_nobody_trusts_is_one_line(https_server: MlflowServer,
                                                        tmp_path: Path) -> None:
    line = _one_line(_modelkeep(tmp_path, https_server.url, "list"))
    assert "TLS certificate is not trusted" in line, line
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in line, line


def test_a_server_that_wants_a_client_certificate_is_one_line(
        https_server: MlflowServer, tls: ServerTLS, tmp_path: Path) -> None:
    line = _one_line(_modelkeep(tmp_path, https_server.url, "list",
                                MLFLOW_TRACKING_SERVER_CERT_PATH=str(tls.cert)))
    # uvicorn closes the connection (TLS 1.3: after the handshake) rather than send an alert.
    assert "closed the connection without answering" in line, line
    assert "MLFLOW_TRACKING_CLIENT_CERT_PATH" in line, line


def test_mlflows_tls_variables_reach_the_server_and_mlflow_reads_it_back(
        https_server: MlflowServer, tls: ServerTLS, tmp_path: Path,
        clean_env: pytest.MonkeyPatch) -> None:
    """The server's CA from MLFLOW_TRACKING_SERVER_CERT_PATH and the client certificate from
    MLFLOW_TRACKING_CLIENT_CERT_PATH: a version registered through them is the version MLflow's
    client, given the same two variables, reads."""
    clean_env.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tls.cert))
    clean_env.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", str(tls.client_pem))
    name = unique_name()
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=https_server.url,
                          plugins=make_plugin_manager(entry_points=False))
    version = keep.register(name, write_model(tmp_path / "m", tensors(seed=3, n=2)),
                            aliases=["prod"], message="over mutual TLS")
    mv = MlflowClient(tracking_uri=https_server.url,
                      registry_uri=https_server.url).get_model_version_by_alias(name, "prod")
    assert int(mv.version) == version.version
    assert "over mutual TLS" in (mv.description or "")

    listed = _modelkeep(tmp_path, https_server.url, "--json", "list", name,
                        MLFLOW_TRACKING_SERVER_CERT_PATH=str(tls.cert),
                        MLFLOW_TRACKING_CLIENT_CERT_PATH=str(tls.client_pem))
    assert listed.returncode == 0, listed.stderr
    assert f'"version": {version.version}' in listed.stdout


@pytest.mark.parametrize("trust", ["MLFLOW_TRACKING_INSECURE_TLS", "REQUESTS_CA_BUNDLE",
                                   "CURL_CA_BUNDLE"])
def test_other_ways_to_trust_the_server(https_server: MlflowServer, tls: ServerTLS,
                                        tmp_path: Path, trust: str) -> None:
    """No certificate check at all, or the CA bundle requests (MLflow's client) reads."""
    value = "true" if trust == "MLFLOW_TRACKING_INSECURE_TLS" else str(tls.cert)
    proc = _modelkeep(tmp_path, https_server.url, "list",
                      MLFLOW_TRACKING_CLIENT_CERT_PATH=str(tls.client_pem), **{trust: value})
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower()


def test_a_missing_client_certificate_file_is_one_line(https_server: MlflowServer,
                                                       tls: ServerTLS, tmp_path: Path) -> None:
    line = _one_line(_modelkeep(tmp_path, https_server.url, "list",
                                MLFLOW_TRACKING_SERVER_CERT_PATH=str(tls.cert),
                                MLFLOW_TRACKING_CLIENT_CERT_PATH=str(tmp_path / "nope.pem")))
    assert "client certificate" in line and "nope.pem" in line, line


# -- proxies -----------------------------------------------------------------------------------


def test_the_environments_proxy_carries_plain_http_unless_no_proxy_names_the_host(
        mlflow_server: Any, http_proxy: HttpProxy, tmp_path: Path) -> None:
    port = mlflow_server.url.rsplit(":", 1)[1]
    endpoint = f"127.0.0.1:{port}/api/2.0/mlflow/registered-models/search"
    before = len(http_proxy.forwarded())
    proc = _modelkeep(tmp_path, mlflow_server.url, "list", http_proxy=http_proxy.url)
    assert proc.returncode == 0, proc.stderr
    forwarded = http_proxy.forwarded(wait_for=endpoint)[before:]
    assert any(f"GET {endpoint}" in line for line in forwarded), forwarded

    before = len(http_proxy.forwarded())
    proc = _modelkeep(tmp_path, mlflow_server.url, "list", http_proxy=http_proxy.url,
                      no_proxy="127.0.0.1")
    assert proc.returncode == 0, proc.stderr
    time.sleep(0.5)
    assert http_proxy.forwarded()[before:] == []


def test_https_goes_through_the_proxys_tunnel(https_server: MlflowServer, tls: ServerTLS,
                                              http_proxy: HttpProxy, tmp_path: Path) -> None:
    port = https_server.url.rsplit(":", 1)[1]
    before = len(http_proxy.forwarded())
    proc = _modelkeep(tmp_path, https_server.url, "list", HTTPS_PROXY=http_proxy.url,
                      MLFLOW_TRACKING_SERVER_CERT_PATH=str(tls.cert),
                      MLFLOW_TRACKING_CLIENT_CERT_PATH=str(tls.client_pem))
    assert proc.returncode == 0, proc.stderr
    forwarded = http_proxy.forwarded(wait_for=f"CONNECT 127.0.0.1:{port}")[before:]
    assert any(f"CONNECT 127.0.0.1:{port}" in line for line in forwarded), forwarded


def test_a_proxy_that_is_not_http_is_one_line(mlflow_server: Any, tmp_path: Path) -> None:
    line = _one_line(_modelkeep(tmp_path, mlflow_server.url, "list",
                                http_proxy="socks5://127.0.0.1:1080"))
    assert "not an http:// proxy" in line, line


def test_an_unreachable_proxy_is_named_not_the_registry(mlflow_server: Any,
                                                        tmp_path: Path) -> None:
    """The registry runs; the proxy the environment sends it through does not."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # a port nothing listens on once this socket is closed
    line = _one_line(_modelkeep(tmp_path, mlflow_server.url, "list",
                                http_proxy=f"http://user:pw-not-shown@127.0.0.1:{closed}"))
    assert line == (f"error: registry {mlflow_server.url}: the proxy it goes through, "
                    f"127.0.0.1:{closed}, is unreachable (check http_proxy, or name the "
                    "registry's host in no_proxy)"), line


# -- retries -----------------------------------------------------------------------------------


def _asked(proxy: FaultProxy) -> list[str]:
    return [f"{r.method} {r.target.split('?', 1)[0].removeprefix('/api/2.0/mlflow/')}"
            for r in proxy.log]


def test_a_429_to_a_read_is_asked_again_after_its_retry_after(faulty: FaultProxy,
                                                              clean_env: pytest.MonkeyPatch
                                                              ) -> None:
    registry = RestRegistry(faulty.url)
    faulty.set(Fault(kind="status", status=429, retry_after=1.0, rate=1.0, limit=1,
                     methods=("GET",)))
    started = time.monotonic()
    registry.models()
    waited = time.monotonic() - started
    assert _asked(faulty) == ["GET registered-models/search"] * 2
    assert waited >= 1.0, waited


def test_503s_to_a_read_end_in_the_servers_answer_after_two_retries(
        faulty: FaultProxy, clean_env: pytest.MonkeyPatch) -> None:
    registry = RestRegistry(faulty.url)
    faulty.set(Fault(kind="status", status=503, rate=1.0, methods=("GET",)))
    with pytest.raises(RegistryError):
        registry.models()
    assert _asked(faulty) == ["GET registered-models/search"] * 3


def test_a_write_refused_with_503_is_not_sent_again(faulty: FaultProxy, tmp_path: Path,
                                                    mlflow_server: Any,
                                                    clean_env: pytest.MonkeyPatch) -> None:
    name = unique_name()
    registry = RestRegistry(faulty.url)
    registry.create_model(name)
    faulty.set(Fault(kind="status", status=503, rate=1.0, methods=("POST",),
                     path="model-versions/create"))
    with pytest.raises(RegistryError) as raised:
        registry.create_version(name, "file:///nowhere", tags={}, description="", run_id="")
    assert "\n" not in str(raised.value)
    assert _asked(faulty).count("POST model-versions/create") == 1
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    assert client.search_model_versions(f"name = '{name}'") == []


def test_a_stalled_answer_ends_in_the_read_timeout(faulty: FaultProxy,
                                                   clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry = RestRegistry(faulty.url)
    faulty.set(Fault(kind="stall", stall=60, rate=1.0))
    started = time.monotonic()
    with pytest.raises(RegistryError, match="did not answer within 2 s"):
        registry.models()
    assert time.monotonic() - started < 10


def test_kept_alive_connections_are_reused_and_a_closed_one_replaced(
        faulty: FaultProxy, clean_env: pytest.MonkeyPatch) -> None:
    """Requests in a row share one connection; after the server closes it (here: the proxy
    drops every connection), the next request opens a new one and is answered."""
    registry = RestRegistry(faulty.url)
    faulty.set()
    for _ in range(3):
        registry.models()
    assert len({r.client for r in faulty.log}) == 1, faulty.log
    faulty.kill()
    faulty.revive()
    registry.models()
    assert len({r.client for r in faulty.log}) == 2, faulty.log


# -- what a read command loads -------------------------------------------------------------------

def test_read_commands_against_a_server_load_no_http_library(mlflow_server: Any,
                                                             tmp_path: Path) -> None:
    """The registry's requests go through ``http.client``: requests and urllib3 (65 and 42 ms
    of every command's start) and MLflow stay unloaded."""
    name = unique_name()
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_server.url,
                          plugins=make_plugin_manager(entry_points=False))
    keep.register(name, write_model(tmp_path / "m", tensors(seed=5, n=2)), aliases=["prod"])
    for args in (["list"], ["list", name], ["log", name], ["show", f"{name}@prod"],
                 ["lineage", f"{name}@prod"]):
        for mode in ([], ["--json"]):
            proc, loaded = imports_of(
                ["--store", str(tmp_path / "store"), "--registry", mlflow_server.url, *mode,
                 *args], tmp_path, ("requests", "urllib3", "mlflow"))
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip(), f"{mode + args} printed nothing"
            assert loaded == set(), f"{mode + args} loaded {loaded}"


_THREAD_PROBE = (
    "import sys, threading\n"
    "seen = {}\n"
    "class Watch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'rich.console':\n"
    "            seen.setdefault(name, threading.current_thread().name)\n"
    "sys.meta_path.insert(0, Watch())\n"
    "from modelkeep.cli.main import main\n"
    "try:\n"
    "    rc = main(sys.argv[1:])\n"
    "finally:\n"
    "    print('\\nrich imported in: ' + seen.get('rich.console', '-'))\n"
    "sys.exit(rc)\n"
)


def test_rich_is_imported_while_the_server_answers(mlflow_server: Any, tmp_path: Path) -> None:
    """A read command that prints for a person imports rich in the time it waits for the
    server (modelkeep._waiting), not after; with --json it never imports it."""
    name = unique_name()
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_server.url,
                          plugins=make_plugin_manager(entry_points=False))
    keep.register(name, write_model(tmp_path / "m", tensors(seed=6, n=2)), aliases=["prod"])
    for mode, expected in (([], "modelkeep-meanwhile"), (["--json"], "-")):
        for args in (["list"], ["list", name], ["log", name], ["show", f"{name}@prod"]):
            proc = subprocess.run(
                [sys.executable, "-c", _THREAD_PROBE, "--store", str(tmp_path / "store"),
                 "--registry", mlflow_server.url, *mode, *args],
                cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            where = proc.stdout.rstrip("\n").rsplit("rich imported in: ", 1)[1]
            assert where == expected, f"{mode + args}: {where}"
