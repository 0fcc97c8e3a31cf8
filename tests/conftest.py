"""Shared fixtures: real local backends (moto S3, Azurite) and an MLflow registry URI.

Session-scoped, so under pytest-xdist each worker starts its own servers.
"""

from __future__ import annotations

import os

import pytest

from tests.servers import (
    DEVICE_GRANT,
    OidcClient,
    OidcProvider,
    ServerStartError,
    create_database,
    oidc_auth_env,
    serving,
    start_azurite,
    start_mlflow_server,
    start_moto,
    start_oidc_provider,
)

# Installed third-party plugins (the example plugin among them) stay out of every test that does
# not enable one explicitly; subprocesses inherit this.
os.environ["MODELKEEP_PLUGINS"] = ""

# Keras picks its backend at import: torch, the one installed with the test extra.
os.environ.setdefault("KERAS_BACKEND", "torch")
# Transformers builds tiny models from configs in the tests; nothing may be fetched from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on a free loopback port (``endpoint_url``, ``storage_options``,
    ``make_bucket()``)."""
    with serving(lambda: start_moto(tmp_path_factory.mktemp("moto")),
                 "moto S3 server") as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """An Azurite blob server on a free loopback port (``connection_string``,
    ``storage_options``, ``make_container()``)."""
    with serving(lambda: start_azurite(tmp_path_factory.mktemp("azurite")),
                 "Azurite") as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``sqlite:///`` URI for an MLflow tracking/registry store; the schema is
    created on first use."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """An ``mlflow server`` process on a free loopback port over a SQLite file (``url``)."""
    workdir = tmp_path_factory.mktemp("mlflow-server")
    with serving(lambda: start_mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}"),
                 "mlflow server") as server:
        yield server


def _database_server(tmp_path_factory: pytest.TempPathFactory, kind: str):
    workdir = tmp_path_factory.mktemp(f"mlflow-{kind}")
    try:
        db = create_database(kind)
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with serving(lambda: start_mlflow_server(workdir, db.uri),
                     f"mlflow server on {kind}") as server:
            yield server
    finally:
        db.drop()


@pytest.fixture(scope="session")
def mlflow_postgres_server(tmp_path_factory: pytest.TempPathFactory):
    """An ``mlflow server`` over a fresh database on the local PostgreSQL (``url``)."""
    yield from _database_server(tmp_path_factory, "postgresql")


@pytest.fixture(scope="session")
def mlflow_mariadb_server(tmp_path_factory: pytest.TempPathFactory):
    """An ``mlflow server`` over a fresh database on the local MariaDB (``url``)."""
    yield from _database_server(tmp_path_factory, "mysql")


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory):
    """An ``mlflow server --app-name basic-auth`` over SQLite (``url``, ``admin``)."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    with serving(lambda: start_mlflow_server(workdir, f"sqlite:///{workdir / 'mlflow.db'}",
                                             app_name="basic-auth"),
                 "mlflow server with basic-auth") as server:
        yield server


# Clients and users of the test OpenID provider. Secrets are made per session.
OIDC_ADMIN = "mk-admin"  # client credentials, in the registry's admin group
# mlflow-oidc-auth lets only its administrators create a version whose source is not inside an
# MLflow run's artifacts (a `modelkeep://` source is not): the jobs that register are admins.
OIDC_JOB = "mk-job"  # client credentials, registers
OIDC_SHORT_JOB = "mk-job-short"  # client credentials, registers, 20-second access tokens
OIDC_OTHER_JOB = "mk-other"  # client credentials, not an admin, granted nothing
OIDC_CLI = "mk-cli"  # public client: the device flow, 20-second access tokens, refresh tokens
OIDC_USERS = {"alice": ("mlflow",), "bob": ("mlflow",)}


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory):
    """An OpenID provider (npm ``oidc-provider``) on a free loopback port (``issuer``,
    ``clients``, ``client_secret(id)``, ``users``, ``audience``)."""
    import uuid

    def secret() -> str:
        return f"cs-{uuid.uuid4().hex}"

    cc = ("client_credentials",)
    clients = [
        OidcClient(OIDC_ADMIN, secret(), cc, username="mk-admin", groups=("mlflow-admin",)),
        OidcClient(OIDC_JOB, secret(), cc, username="ci-job", groups=("mlflow-admin",)),
        OidcClient(OIDC_SHORT_JOB, secret(), cc, username="ci-short", groups=("mlflow-admin",),
                   access_token_ttl=20),
        OidcClient(OIDC_OTHER_JOB, secret(), cc, username="other-job", groups=("mlflow",)),
        OidcClient(OIDC_CLI, None, (DEVICE_GRANT, "refresh_token"), access_token_ttl=20),
    ]
    with serving(lambda: start_oidc_provider(tmp_path_factory.mktemp("oidc"), clients,
                                             OIDC_USERS),
                 "the OpenID provider") as provider:
        yield provider


@pytest.fixture(scope="session")
def mlflow_oidc_server(oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory):
    """``mlflow server --app-name oidc-auth`` (the ``mlflow-oidc-auth`` plugin) over SQLite,
    trusting ``oidc_provider``'s tokens (``url``)."""
    workdir = tmp_path_factory.mktemp("mlflow-oidc")
    with serving(lambda: start_mlflow_server(
            workdir, f"sqlite:///{workdir / 'mlflow.db'}", app_name="oidc-auth",
            env=oidc_auth_env(workdir, oidc_provider)),
            "mlflow server with mlflow-oidc-auth") as server:
        yield server
