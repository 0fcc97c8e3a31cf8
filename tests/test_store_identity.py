"""Azure Blob stores signed in with the ``[auth]`` identity (the store option ``identity``), on
real servers: Azurite in OAuth mode (HTTPS, bearer tokens; it checks their issuer, audience and
lifetime) and the npm ``oidc-provider`` announcing an Entra-shaped issuer
(``https://sts.windows.net/TENANT/``) and issuing JWT access tokens for Azure Storage's
audience, found through ``[auth] metadata_url``.

Covered: register and pull through the command line with the identity only (no account key), a
job's (client credentials) and a person's (``modelkeep login``); the refusals (no credential at
all, a token for another audience, options that cannot work), each in one line; tokens renewed in a
process that outlasts their 20-second lifetime; no token in any output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests

from modelkeep.auth import azure as auth_azure
from modelkeep.auth import tokens
from modelkeep.auth.stores import storage_options
from modelkeep.errors import ConfigError, SignInError
from tests.backends import unique_name
from tests.helpers import tensors, write_model
from tests.servers import (
    AZURITE_ACCOUNT,
    DEVICE_GRANT,
    REPO_ROOT,
    Azurite,
    OidcClient,
    OidcProvider,
    serving,
    start_azurite,
    start_oidc_provider,
)

pytestmark = pytest.mark.xdist_group("store-identity")

TENANT = "3f0c5a8e-6d1b-4c2a-9e7f-0b1d2c3e4f5a"
ENTRA_ISSUER = f"https://sts.windows.net/{TENANT}/"
STORAGE = "https://storage.azure.com"
REGISTRY_AUDIENCE = "urn:modelkeep:registry"
JOB = "mk-storage-job"
SHORT_JOB = "mk-storage-short"  # 20-second access tokens
PERSON = "mk-storage-cli"  # public client: the device flow, refresh tokens
# Entra's v1 way of asking for a storage token: the resource, no scope.
IDENTITY = {"kind": "sign-in", "audience": STORAGE, "scopes": []}

OUTPUTS: list[str] = []
SECRETS: set[str] = set()


@pytest.fixture(scope="module")
def entra(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An OpenID provider whose tokens look like Entra ID's v1 tokens for Azure Storage."""
    cc = ("client_credentials",)
    clients = [OidcClient(JOB, f"cs-{os.urandom(12).hex()}", cc),
               OidcClient(SHORT_JOB, f"cs-{os.urandom(12).hex()}", cc, access_token_ttl=20),
               OidcClient(PERSON, None, (DEVICE_GRANT, "refresh_token"), access_token_ttl=20)]
    SECRETS.update(c.secret for c in clients if c.secret)
    with serving(lambda: start_oidc_provider(
            tmp_path_factory.mktemp("entra"), clients, {"alice": ()}, audience=REGISTRY_AUDIENCE,
            issuer=ENTRA_ISSUER, resources={STORAGE: ""}, not_before=True),
            "the OpenID provider") as provider:
        yield provider


@pytest.fixture(scope="module")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Azurite over HTTPS taking bearer tokens (``--oauth basic``)."""
    with serving(lambda: start_azurite(tmp_path_factory.mktemp("azurite-oauth"), oauth=True),
                 "Azurite") as server:
        yield server


def store_options(azurite: Azurite, identity: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {"account_name": AZURITE_ACCOUNT,
                               "account_host": azurite.account_host}
    if identity is not None:
        options["identity"] = identity
    return options


def inline_table(value: Any) -> str:
    """*value* (strings, booleans, lists and dicts of them) as TOML."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {inline_table(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(inline_table(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string or boolean is a TOML one


def write_settings(folder: Path, provider: OidcProvider, azurite: Azurite, container: str,
                   identity: dict[str, Any] | None, client_id: str = JOB) -> None:
    """modelkeep.toml: a SQLite registry, the Azure store named ``blob`` with *identity* (no
    key), and ``[auth]`` naming the provider by its Entra issuer and its metadata URL."""
    options = inline_table(store_options(azurite, identity))
    (folder / "modelkeep.toml").write_text(textwrap.dedent(f"""\
        registry = "sqlite:///{folder / 'mlflow.db'}"
        default_store = "blob"

        [stores.blob]
        url = "az://{container}/keep"
        options = {options}

        [auth]
        issuer = "{provider.issuer}"
        client_id = "{client_id}"
        metadata_url = "{provider.metadata_url}"
        """))


def cli_env(provider: OidcProvider, azurite: Azurite, client_id: str = JOB) -> dict[str, str]:
    """A command's environment: the job's secret, the Azurite certificate trusted (aiohttp,
    under adlfs, reads SSL_CERT_FILE), no other credential."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODELKEEP_AUTH_", "AZURE_", "MLFLOW_TRACKING_"))}
    env.update({"PYTHONPATH": str(REPO_ROOT / "src"), "SSL_CERT_FILE": str(azurite.ca_file),
                "MODELKEEP_AUTH_CLIENT_SECRET": provider.client_secret(client_id),
                "MODELKEEP_TOKEN_FILE": "/nonexistent/tokens.json"})
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "modelkeep", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    OUTPUTS.extend((done.stdout, done.stderr))
    return done


def blobs(azurite: Azurite, container: str) -> list[str]:
    """What the container holds, listed with the account key (a view the test trusts)."""
    client = azurite.service().get_container_client(container)
    return [b.name for b in client.list_blobs()]


def test_azurite_takes_the_providers_storage_tokens(entra, azurite_oauth) -> None:  # type: ignore[no-untyped-def]
    """The test servers agree with each other: the provider's storage token opens Azurite, its
    registry token does not (wrong audience)."""
    meta = requests.get(entra.metadata_url, timeout=10).json()
    assert meta["issuer"] == ENTRA_ISSUER
    secret = entra.client_secret(JOB)
    account = f"{azurite_oauth.blob_endpoint}?comp=list"
    for resource, expected in ((STORAGE, 200), (REGISTRY_AUDIENCE, 403)):
        token = requests.post(meta["token_endpoint"], auth=(JOB, secret), timeout=10, data={
            "grant_type": "client_credentials", "resource": resource}).json()["access_token"]
        SECRETS.add(token)
        answer = requests.get(account, verify=str(azurite_oauth.ca_file), timeout=10, headers={
            "Authorization": f"Bearer {token}", "x-ms-version": "2021-08-06"})
        assert answer.status_code == expected, answer.text


def test_register_and_pull_with_only_the_identity(  # type: ignore[no-untyped-def]
    entra, azurite_oauth, tmp_path: Path,
) -> None:
    container = azurite_oauth.make_container()
    write_settings(tmp_path, entra, azurite_oauth, container, IDENTITY)
    env = cli_env(entra, azurite_oauth)
    model = write_model(tmp_path / "m", tensors(n=3), extra=False)
    name = unique_name()

    done = run(["register", name, str(model), "--alias", "champion"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    stored = blobs(azurite_oauth, container)
    assert any(b.startswith("keep/") for b in stored), stored

    done = run(["pull", f"{name}@champion", str(tmp_path / "pulled")], tmp_path, env)
    assert done.returncode == 0, done.stderr
    for f in model.iterdir():
        assert (tmp_path / "pulled" / f.name).read_bytes() == f.read_bytes()

    done = run(["--json", "show", f"{name}@champion"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 1


def test_refusals_are_one_line(  # type: ignore[no-untyped-def]
    entra, azurite_oauth, tmp_path: Path,
) -> None:
    container = azurite_oauth.make_container()
    env = cli_env(entra, azurite_oauth)
    model = write_model(tmp_path / "m", tensors(n=2), extra=False)

    # No identity and no key: Azure's own credential chain finds nothing here.
    write_settings(tmp_path, entra, azurite_oauth, container, None)
    done = run(["register", unique_name(), str(model)], tmp_path, env)
    assert done.returncode == 5, done.stderr
    assert done.stderr.startswith(f"error: access to store az://{container}/keep was refused "
                                  "or has no credentials")
    assert "(set AZURE_STORAGE_CONNECTION_STRING" in done.stderr and "AWS_" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr

    # The identity, asking for a token of another audience (the registry's): Azurite says why.
    write_settings(tmp_path, entra, azurite_oauth, container,
                   {**IDENTITY, "audience": REGISTRY_AUDIENCE})
    done = run(["register", unique_name(), str(model)], tmp_path, env)
    assert done.returncode == 5, done.stderr
    assert done.stderr.startswith(
        f"error: access to store az://{container}/keep was refused for client {JOB!r} of "
        f"{ENTRA_ISSUER.rstrip('/')} (Invalid token audience.)"), done.stderr
    assert "Storage Blob Data Contributor" in done.stderr and done.stderr.count("\n") == 1

    # A secret the provider refuses: the provider's refusal, not the store's.
    done = run(["register", unique_name(), str(model)], tmp_path,
               {**env, "MODELKEEP_AUTH_CLIENT_SECRET": "wrong"})
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert f"the OpenID provider {ENTRA_ISSUER.rstrip('/')} refused" in done.stderr
    assert not blobs(azurite_oauth, container)


def test_a_person_signed_in_with_modelkeep_login(  # type: ignore[no-untyped-def]
    entra, azurite_oauth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A person's storage tokens are asked with their login's refresh token (the login keeps
    the registry's); a refresh token rotated on the way is written back to the login."""
    from tests.test_signin import login_as

    for var in list(os.environ):
        if var.startswith(("MODELKEEP_AUTH_", "AZURE_")):
            monkeypatch.delenv(var)
    token_file = tmp_path / "tokens.json"
    monkeypatch.setenv("MODELKEEP_TOKEN_FILE", str(token_file))
    container = azurite_oauth.make_container()
    write_settings(tmp_path, entra, azurite_oauth, container, IDENTITY, client_id=PERSON)
    out, err = login_as(entra, "alice", tmp_path)
    OUTPUTS.extend((out, err))
    login = json.loads(token_file.read_text())
    (entry,) = login.values()
    SECRETS.update((entry["access_token"], entry["refresh_token"]))

    env = {**cli_env(entra, azurite_oauth), "MODELKEEP_TOKEN_FILE": str(token_file)}
    del env["MODELKEEP_AUTH_CLIENT_SECRET"]
    model = write_model(tmp_path / "m", tensors(n=2), extra=False)
    name = unique_name()
    done = run(["register", name, str(model)], tmp_path, env)
    assert done.returncode == 0, done.stderr
    done = run(["pull", f"{name}@1", str(tmp_path / "pulled")], tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == \
        sorted(p.name for p in model.iterdir())
    (after,) = json.loads(token_file.read_text()).values()
    SECRETS.add(after["refresh_token"])
    # The login still holds the registry's token; its refresh token is the current one.
    assert after["access_token"] == entry["access_token"]
    answer = requests.post(requests.get(entra.metadata_url, timeout=10).json()["token_endpoint"],
                           data={"grant_type": "refresh_token", "client_id": PERSON,
                                 "refresh_token": after["refresh_token"]}, timeout=10)
    assert answer.status_code == 200, answer.text
    SECRETS.update(str(v) for k, v in answer.json().items() if k.endswith("token"))


def test_options_that_cannot_work_are_refused(  # type: ignore[no-untyped-def]
    entra, azurite_oauth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in list(os.environ):
        if var.startswith(("MODELKEEP_AUTH_", "AZURE_STORAGE_")):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    base = store_options(azurite_oauth, None)
    assert storage_options("az", base) == base  # no identity: untouched
    cases = [
        ("memory", {**base, "identity": IDENTITY}, "not supported for memory:// stores"),
        ("az", {**base, "identity": "sign-in"}, "must be a table"),
        ("az", {**base, "identity": {"kind": "ad"}}, "has kind 'ad'"),
        ("az", {**base, "identity": {**IDENTITY, "tenant": "x"}}, "unknown key 'tenant'"),
        ("az", {**base, "identity": IDENTITY, "account_key": "k"}, "two credentials"),
        ("az", {"identity": IDENTITY}, "needs the store's account_name"),
        ("az", {**base, "identity": IDENTITY}, "no sign-in is configured"),
        ("az", {**base, "identity": {"kind": "azure-default", "colour": "blue"}},
         "kind 'azure-default'"),
    ]
    for protocol, options, message in cases:
        with pytest.raises(ConfigError, match=message) as refused:
            storage_options(protocol, options)
        OUTPUTS.append(str(refused.value))
        assert "\n" not in str(refused.value)

    # The metadata must name the configured issuer, wherever it is read from (RFC 8414).
    monkeypatch.setenv("MODELKEEP_AUTH_ISSUER", "https://sts.windows.net/another-tenant/")
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_ID", JOB)
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_SECRET", entra.client_secret(JOB))
    monkeypatch.setenv("MODELKEEP_AUTH_METADATA_URL", entra.metadata_url)
    credential = storage_options("az", {**base, "identity": IDENTITY})["credential"]
    with pytest.raises(SignInError, match=r"calls itself 'https://sts\.windows\.net/3f0c"):
        credential.source().access_token()


def test_azure_default_is_azure_identitys_credential(tmp_path: Path) -> None:
    """``azure-default`` is azure-identity's DefaultAzureCredential with the table's other keys,
    one per process and keys (its token cache lives as long as the process)."""
    from azure.identity.aio import DefaultAzureCredential

    table = {"kind": "azure-default", "managed_identity_client_id": "0000-mi",
             "exclude_cli_credential": True}
    first = storage_options("az", {"account_name": "acct", "identity": table})["credential"]
    again = storage_options("az", {"account_name": "acct", "identity": dict(table)})["credential"]
    assert isinstance(first.inner, DefaultAzureCredential) and first is again
    assert repr(first) == ("DefaultCredential(exclude_cli_credential=True, "
                           "managed_identity_client_id='0000-mi')")
    with pytest.raises(ConfigError, match=r"'process_timeout' .* must be a whole number"):
        storage_options("az", {"account_name": "acct",
                               "identity": {"kind": "azure-default", "process_timeout": "9"}})


RENEWING = """
import json, sys, time
import modelkeep
from modelkeep.auth import settings, tokens
from modelkeep.hooks import make_plugin_manager

keep = modelkeep.open(plugins=make_plugin_manager(entry_points=False))
model, name = sys.argv[1], sys.argv[2]
started = time.monotonic()
keep.register(name, model, aliases=["champion"])
time.sleep(22)  # the storage token of the register has expired
keep.pull(name + "@champion", sys.argv[3])
source = tokens.source_for(settings.configured(),
                           tokens.Resource("https://storage.azure.com", ()))
print(json.dumps({"renewals": source.renewals, "took": time.monotonic() - started,
                  "who": repr(source)}))
"""


def test_tokens_are_renewed_in_a_process_that_outlasts_them(  # type: ignore[no-untyped-def]
    entra, azurite_oauth, tmp_path: Path,
) -> None:
    """20-second storage tokens, and a process that registers, waits past the token's expiry,
    then pulls: the pull runs on a renewed token."""
    container = azurite_oauth.make_container()
    write_settings(tmp_path, entra, azurite_oauth, container, IDENTITY, client_id=SHORT_JOB)
    model = write_model(tmp_path / "m", tensors(n=2), extra=False)
    done = subprocess.run([sys.executable, "-c", RENEWING, str(model), unique_name(),
                           str(tmp_path / "pulled")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=cli_env(entra, azurite_oauth, SHORT_JOB))
    OUTPUTS.extend((done.stdout, done.stderr))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["took"] > 22 and report["renewals"] >= 2, report
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == \
        sorted(p.name for p in model.iterdir())


def test_no_token_in_any_output(entra, azurite_oauth, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                tmp_path: Path) -> None:
    """Runs last in this module: no secret or token is in anything the tests above printed or
    raised, nor in the credential's ``repr``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELKEEP_AUTH_ISSUER", entra.issuer)
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_ID", JOB)
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_SECRET", entra.client_secret(JOB))
    monkeypatch.setenv("MODELKEEP_AUTH_METADATA_URL", entra.metadata_url)
    tokens.forget()
    credential = storage_options(
        "az", store_options(azurite_oauth, IDENTITY))["credential"]
    assert isinstance(credential, auth_azure.SignInCredential)
    source = credential.source()
    SECRETS.add(source.access_token())
    OUTPUTS.extend((repr(credential), repr(source), credential.who))
    assert len(OUTPUTS) >= 15 and len(SECRETS) >= 4
    everything = "\n".join(OUTPUTS)
    assert "eyJ" not in everything  # no JSON Web Token at all
    leaked = [s[:6] + "..." for s in SECRETS if s in everything]
    assert not leaked, f"secrets in the output: {leaked}"
