"""Sign-in to a registry behind an OpenID provider: the npm ``oidc-provider`` and ``mlflow server``
with the ``mlflow-oidc-auth`` plugin trusting it, both on loopback, started once per session.

Covered: a static bearer token (``MLFLOW_TRACKING_TOKEN``), client credentials for jobs, the device
flow for people (``modelkeep login``, completed here by posting to the provider's own pages),
renewal of short-lived tokens, per-model permissions, refusals read as one line, and no secret in
any output.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import requests

import modelkeep
from modelkeep.auth import settings as auth_settings
from modelkeep.auth import tokens
from modelkeep.cli.main import main
from modelkeep.errors import ConfigError, RegistryAuthError, RegistryPermissionError
from modelkeep.hooks import make_plugin_manager
from tests.backends import unique_name
from tests.conftest import OIDC_ADMIN, OIDC_CLI, OIDC_JOB, OIDC_OTHER_JOB, OIDC_SHORT_JOB
from tests.faultproxy import FaultProxy
from tests.helpers import tensors, write_model
from tests.servers import REPO_ROOT, confirm_device_code
from tests.test_json_schema import SCHEMA_FILE, validator

pytestmark = pytest.mark.xdist_group("signin")

API = "/api/2.0/mlflow"
PLUGINS = make_plugin_manager(entry_points=False)
REPO_SRC = REPO_ROOT / "src"
# Seconds every store request is held back in the long register: it then takes over a minute.
LONG_REGISTER_LATENCY = 4.0
# A training run of this many checkpoints, this many seconds apart, lasts over two minutes.
TRAINING_CHECKPOINTS = 5
TRAINING_STEP = 25.0

# Everything the commands and errors of this module said, and every secret and token they were
# given or that was issued: the last test checks that none of the second is in the first.
OUTPUTS: list[str] = []
SECRETS: set[str] = set()


def said(*texts: str) -> None:
    OUTPUTS.extend(texts)


def captured(capsys: pytest.CaptureFixture[str]) -> Any:
    result = capsys.readouterr()
    said(result.out, result.err)
    return result


def remember_tokens(token_file: Path) -> None:
    """The tokens of a login, as secrets no output may contain."""
    if token_file.exists():
        for entry in json.loads(token_file.read_text()).values():
            SECRETS.update(str(entry[k]) for k in ("access_token", "refresh_token")
                           if entry.get(k))


def client_token(provider: Any, client_id: str) -> str:
    """An access token for *client_id* by the client-credentials grant, asked of the provider
    directly."""
    response = requests.post(f"{provider.issuer}/token",
                             data={"grant_type": "client_credentials", "scope": provider.scope},
                             auth=(client_id, provider.client_secret(client_id)), timeout=10)
    response.raise_for_status()
    token = str(response.json()["access_token"])
    SECRETS.add(token)
    return token


def grant(server: Any, provider: Any, username: str, model: str, permission: str) -> None:
    """Give *username* *permission* on *model* through mlflow-oidc-auth's permission API, as
    the registry's admin."""
    headers = {"Authorization": f"Bearer {client_token(provider, OIDC_ADMIN)}"}
    url = f"{server.url}{API}/permissions/users/{username}/registered-models/{model}"
    answer = requests.post(url, json={"permission": permission}, headers=headers, timeout=30)
    if answer.status_code == 409:  # granted before: change it
        answer = requests.patch(url, json={"permission": permission}, headers=headers,
                                timeout=30)
    assert answer.status_code in (200, 201), answer.text


@pytest.fixture
def signed_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No registry credentials of any kind; a token file of this test's own."""
    for var in list(os.environ):
        if var.startswith(("MLFLOW_TRACKING_", "MODELKEEP_AUTH_")):
            monkeypatch.delenv(var)
    token_file = tmp_path / "config" / "modelkeep" / "tokens.json"
    monkeypatch.setenv("MODELKEEP_TOKEN_FILE", str(token_file))
    monkeypatch.chdir(tmp_path)
    tokens.forget()  # no token held from an earlier test: each counts its own renewals
    return token_file


def as_job(monkeypatch: pytest.MonkeyPatch, provider: Any, client_id: str) -> None:
    """Sign in as the job *client_id* through the environment."""
    monkeypatch.setenv("MODELKEEP_AUTH_ISSUER", provider.issuer)
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_ID", client_id)
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_SECRET", provider.client_secret(client_id))
    monkeypatch.setenv("MODELKEEP_AUTH_SCOPES", provider.scope)
    monkeypatch.setenv("MODELKEEP_AUTH_AUDIENCE", provider.audience)


def stored_files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()} \
        if store.exists() else set()


def test_the_registry_trusts_the_providers_tokens(oidc_provider, mlflow_oidc_server) -> None:  # type: ignore[no-untyped-def]
    url = f"{mlflow_oidc_server.url}{API}/registered-models/search"
    assert requests.get(url, timeout=10).status_code == 401
    token = client_token(oidc_provider, OIDC_JOB)
    answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert requests.get(url, headers={"Authorization": f"Bearer {forged}"},
                        timeout=10).status_code == 401


def test_a_static_bearer_token(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url = mlflow_oidc_server.url
    store = tmp_path / "store"
    name = unique_name()
    model = write_model(tmp_path / "m", tensors(n=2), extra=False)

    def keep():  # type: ignore[no-untyped-def]
        return modelkeep.open(store=str(store), registry=url, plugins=PLUGINS)

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", client_token(oidc_provider, OIDC_JOB))
    v = keep().register(name, model, aliases=["champion"])
    assert keep().get(f"{name}@champion").snapshot_id == v.snapshot_id

    # Another identity, granted nothing on the model: refused, in one line that says what it
    # lacks and what to do.
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", client_token(oidc_provider, OIDC_OTHER_JOB))
    with pytest.raises(RegistryPermissionError) as denied:
        keep().get(v.ref)
    text = str(denied.value)
    said(text)
    assert f"registry {url} refused" in text and "MLFLOW_TRACKING_TOKEN" in text
    assert f"needs READ on model {name!r}" in text

    # No token: the registry wants one.
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    with pytest.raises(RegistryAuthError):
        keep().get(v.ref)
    captured(capsys)
    assert main(["--store", str(store), "--registry", url, "list"]) == 6
    err = captured(capsys).err
    assert err.startswith(f"error: registry {url} refused") and "not logged in" in err
    assert "modelkeep login" in err and err.count("\n") == 1

    # A token the registry does not accept (expired, or another server's).
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "not-a-token")
    with pytest.raises(RegistryAuthError, match="MLFLOW_TRACKING_TOKEN was refused"):
        keep().models()


def test_a_job_signs_in_with_client_credentials(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url = mlflow_oidc_server.url
    store = str(tmp_path / "store")
    name = unique_name()
    model = write_model(tmp_path / "m", tensors(n=2), extra=False)
    as_job(monkeypatch, oidc_provider, OIDC_JOB)
    keep = modelkeep.open(store=store, registry=url, plugins=PLUGINS)
    v1 = keep.register(name, model)
    keep.set_alias(v1.ref, "champion")
    pulled = keep.pull(f"{name}@champion", tmp_path / "pulled")
    assert sorted(p.name for p in pulled.iterdir()) == sorted(p.name for p in model.iterdir())

    # MLflow's own client, with modelkeep's auth provider, sends the same tokens.
    import mlflow
    from mlflow.tracking.request_auth import registry as auth_providers

    from modelkeep.plugins.mlflow.request_auth import ModelkeepRequestAuth

    if not any(p.get_name() == "modelkeep" for p in auth_providers._request_auth_provider_registry):
        # What MLflow does for the entry point of an installed modelkeep.
        auth_providers._request_auth_provider_registry.register(ModelkeepRequestAuth)
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "modelkeep")
    client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    monkeypatch.delenv("MLFLOW_TRACKING_AUTH")
    with pytest.raises(mlflow.exceptions.MlflowException):
        mlflow.MlflowClient(tracking_uri=url, registry_uri=url).get_registered_model(name)

    # The same from the command line, with the settings in modelkeep.toml and the secret in a
    # file beside it.
    monkeypatch.delenv("MODELKEEP_AUTH_ISSUER")
    monkeypatch.delenv("MODELKEEP_AUTH_CLIENT_ID")
    secret = oidc_provider.client_secret(OIDC_JOB)
    monkeypatch.delenv("MODELKEEP_AUTH_CLIENT_SECRET")
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "modelkeep.toml").write_text(
        f'store = "store"\nregistry = "{url}"\n\n[auth]\nissuer = "{oidc_provider.issuer}"\n'
        f'client_id = "{OIDC_JOB}"\nclient_secret_file = "secret"\n')
    captured(capsys)
    assert main(["alias", f"{name}@1", "production"]) == 0
    assert main(["--json", "show", f"{name}@production"]) == 0
    assert '"version": 1' in captured(capsys).out

    # The same calls with no sign-in get the one-line 401 message.
    (tmp_path / "modelkeep.toml").write_text(f'store = "store"\nregistry = "{url}"\n')
    assert main(["show", f"{name}@production"]) == 6
    err = captured(capsys).err
    assert "not logged in" in err and "modelkeep login" in err and err.count("\n") == 1


def test_permissions_per_model(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = mlflow_oidc_server.url
    store = tmp_path / "store"
    name = unique_name()
    as_job(monkeypatch, oidc_provider, OIDC_JOB)
    v = modelkeep.open(store=str(store), registry=url, plugins=PLUGINS).register(
        name, write_model(tmp_path / "a", tensors(n=2), extra=False))

    as_job(monkeypatch, oidc_provider, OIDC_OTHER_JOB)
    other_store = tmp_path / "other-store"
    keep = modelkeep.open(store=str(other_store), registry=url, plugins=PLUGINS)
    with pytest.raises(RegistryPermissionError) as no_read:
        keep.get(v.ref)
    said(str(no_read.value))
    assert f"client {OIDC_OTHER_JOB!r}" in str(no_read.value)
    assert f"needs READ on model {name!r}" in str(no_read.value)
    update = write_model(tmp_path / "b", tensors(seed=3, n=2), extra=False)
    with pytest.raises(RegistryPermissionError, match=r"nothing was uploaded.*needs EDIT"):
        keep.register(name, update)
    assert not stored_files(other_store)

    # READ lets the other job read, not register: it is refused before anything is uploaded.
    grant(mlflow_oidc_server, oidc_provider, "other-job", name, "READ")
    assert keep.get(v.ref).snapshot_id == v.snapshot_id
    before = stored_files(other_store)
    with pytest.raises(RegistryPermissionError) as no_edit:
        keep.register(name, update)
    said(str(no_edit.value))
    assert f"needs EDIT on model {name!r}" in str(no_edit.value)
    assert "nothing was uploaded" in str(no_edit.value)
    assert stored_files(other_store) == before
    assert [x.version for x in keep.versions(name)] == [1]

    # EDIT lets it move aliases (registering also needs the registry's admin: see conftest).
    with pytest.raises(RegistryPermissionError, match="needs EDIT"):
        keep.set_alias(v.ref, "champion")
    grant(mlflow_oidc_server, oidc_provider, "other-job", name, "EDIT")
    assert "champion" in keep.set_alias(v.ref, "champion").aliases


def as_person(monkeypatch: pytest.MonkeyPatch, provider: Any) -> None:
    """Sign-in settings of the public device-flow client, through the environment."""
    monkeypatch.setenv("MODELKEEP_AUTH_ISSUER", provider.issuer)
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_ID", OIDC_CLI)
    monkeypatch.setenv("MODELKEEP_AUTH_SCOPES", f"profile email {provider.scope}")
    monkeypatch.setenv("MODELKEEP_AUTH_AUDIENCE", provider.audience)


def login_as(provider: Any, who: str, cwd: Path) -> tuple[str, str]:
    """``modelkeep login`` in a process of its own, completed by confirming its code at the
    provider as *who*; its (stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "modelkeep", "login"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("To sign in, open "), first
        url = first.split("open ", 1)[1].strip()
        second = proc.stderr.readline()
        code = second.split("confirm the code ", 1)[1].split()[0]
        assert code in urllib.parse.unquote(url)
        confirm_device_code(provider, url, who)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return out, first + second + err


def test_a_person_signs_in_with_the_device_flow(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    url = mlflow_oidc_server.url
    store = str(tmp_path / "store")
    name = unique_name()
    as_job(monkeypatch, oidc_provider, OIDC_JOB)
    v = modelkeep.open(store=store, registry=url, plugins=PLUGINS).register(
        name, write_model(tmp_path / "m", tensors(n=2), extra=False), aliases=["champion"])
    for var in ("MODELKEEP_AUTH_CLIENT_SECRET",):
        monkeypatch.delenv(var)
    as_person(monkeypatch, oidc_provider)

    out, err = login_as(oidc_provider, "alice", tmp_path)
    said(out, err)
    remember_tokens(signed_out)
    assert f"signed in to {oidc_provider.issuer} as alice" in out and "To sign in" in err
    assert stat.S_IMODE(signed_out.stat().st_mode) == 0o600
    assert stat.S_IMODE(signed_out.parent.stat().st_mode) == 0o700

    captured(capsys)
    assert main(["whoami", "--json"]) == 0
    me = json.loads(captured(capsys).out)
    assert me["subject"] == "alice" and me["name"] == "alice"  # the provider's sub
    assert me["issuer"] == oidc_provider.issuer and me["flow"] == "device"
    assert oidc_provider.scope in me["scopes"] and me["expires_at"]
    schema = json.loads(SCHEMA_FILE.read_text())
    errors = list(validator(schema, "whoami").iter_errors(me))
    assert not errors, errors

    # The person reads once the model's owner (here the registry's admin) grants READ.
    keep = modelkeep.open(store=store, registry=url, plugins=PLUGINS)
    with pytest.raises(RegistryPermissionError, match="'alice'"):
        keep.get(f"{name}@champion")
    grant(mlflow_oidc_server, oidc_provider, "alice", name, "READ")
    assert keep.get(f"{name}@champion").snapshot_id == v.snapshot_id

    # A token the registry refuses before its expiry is renewed once and the call retried.
    entry_key = f"{oidc_provider.issuer} {OIDC_CLI}"
    data = json.loads(signed_out.read_text())
    data[entry_key]["access_token"] = "refused-by-the-registry"
    signed_out.write_text(json.dumps(data))
    fresh = modelkeep.open(store=store, registry=url, plugins=PLUGINS)
    tokens.forget()  # as a new process would, read the file
    assert fresh.get(f"{name}@champion").version == v.version
    assert json.loads(signed_out.read_text())[entry_key]["access_token"] != \
        "refused-by-the-registry"
    remember_tokens(signed_out)

    # A token file others can read is refused, in one line.
    signed_out.chmod(0o644)
    assert main(["whoami"]) == 6
    err_line = captured(capsys).err
    assert "can be read by other users" in err_line and "chmod 600" in err_line
    assert err_line.count("\n") == 1
    signed_out.chmod(0o600)

    assert main(["logout"]) == 0
    assert f"signed out of {oidc_provider.issuer}" in captured(capsys).out
    assert not signed_out.exists()
    assert main(["logout", "--json"]) == 0  # once more: nothing left to forget
    gone = json.loads(captured(capsys).out)
    assert gone["signed_out"] is False
    assert not list(validator(json.loads(SCHEMA_FILE.read_text()), "logout").iter_errors(gone))
    assert main(["--store", store, "--registry", url, "show", f"{name}@champion"]) == 6
    err_line = captured(capsys).err
    assert "not signed in" in err_line and "modelkeep login" in err_line


def test_short_lived_tokens_are_renewed_during_a_long_register(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, moto_s3, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20-second access tokens and a register that takes more than a minute: the store is S3
    behind a proxy that holds every request back (tests/faultproxy.py), so the token of the
    registry check made before the upload has long expired when the version is created."""
    proxy = FaultProxy("127.0.0.1", int(moto_s3.endpoint_url.rsplit(":", 1)[1]))
    try:
        proxy.set(latency=LONG_REGISTER_LATENCY)
        bucket = moto_s3.make_bucket()
        options = {**moto_s3.storage_options,
                   "client_kwargs": {"endpoint_url": proxy.url, "region_name": moto_s3.region}}
        as_job(monkeypatch, oidc_provider, OIDC_SHORT_JOB)
        keep = modelkeep.open(store=f"s3://{bucket}/keep", registry=mlflow_oidc_server.url,
                              store_options=options, plugins=PLUGINS)
        name = unique_name()
        started = time.monotonic()
        v = keep.register(name, write_model(tmp_path / "m", tensors(n=2), extra=False),
                          aliases=["champion"])
        took = time.monotonic() - started
    finally:
        proxy.stop()
    settings = auth_settings.resolve({})
    assert settings is not None
    source = tokens.source_for(settings)
    SECRETS.add(source.access_token())
    assert took > 60, f"the register took {took:.0f} s"
    # The token of the check before the upload had expired when the version was created.
    assert source.renewals >= 2, (source.renewals, took)
    assert keep.get(f"{name}@champion").snapshot_id == v.snapshot_id


def test_short_lived_tokens_are_renewed_during_a_long_training_run(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20-second access tokens and a training run that checkpoints for over two minutes: each
    checkpoint is registered in the background, on whatever token is current."""
    as_job(monkeypatch, oidc_provider, OIDC_SHORT_JOB)
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_oidc_server.url,
                          plugins=PLUGINS)
    name = unique_name()
    started = time.monotonic()
    with modelkeep.track(name, keep=keep) as run:
        for step in range(1, TRAINING_CHECKPOINTS + 1):
            write_model(tmp_path / "ckpt", tensors(seed=step, n=2), extra=False)
            run.checkpoint(tmp_path / "ckpt", step=step)
            time.sleep(TRAINING_STEP)  # the training between two checkpoints
    took = time.monotonic() - started
    settings = auth_settings.resolve({})
    assert settings is not None
    # Every checkpoint came after the token of the one before had expired.
    assert took > 120 and tokens.source_for(settings).renewals >= TRAINING_CHECKPOINTS
    versions = keep.versions(name)
    assert [int(v.tags["step"]) for v in versions] == list(range(1, TRAINING_CHECKPOINTS + 1))


# -- settings, no server ---------------------------------------------------------------------------


def test_auth_settings_from_the_file_and_the_environment(
    signed_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from modelkeep.config import load_config

    toml = tmp_path / "modelkeep.toml"
    (tmp_path / "secret").write_text("s3cret-from-file\n")
    SECRETS.add("s3cret-from-file")
    toml.write_text('[auth]\nissuer = "https://id.example.com/"\nclient_id = "job"\n'
                    'scopes = "mlflow profile"\naudience = "https://mlflow.example.com"\n'
                    'client_secret_file = "secret"\n')
    config = load_config()
    settings = auth_settings.resolve(config.auth, file=config.file, root=config.root)
    assert settings is not None
    assert (settings.issuer, settings.client_id, settings.flow) == (
        "https://id.example.com", "job", "client_credentials")
    assert settings.scopes == ("mlflow", "profile")
    assert settings.client_secret == "s3cret-from-file"
    assert settings.secret_from == str(tmp_path / "secret")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.describe())

    # The environment wins, key by key; without a secret it is a person's sign-in.
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_ID", "cli")
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the client secret file"):
        auth_settings.resolve(config.auth, file=config.file, root=config.root)
    monkeypatch.delenv("MODELKEEP_AUTH_CLIENT_SECRET_FILE")
    toml.write_text('[auth]\nissuer = "https://id.example.com"\nclient_id = "job"\n')
    config = load_config()
    person = auth_settings.resolve(config.auth, file=config.file, root=config.root)
    assert person is not None and (person.client_id, person.flow) == ("cli", "device")

    # Refused in one line: a secret in the file, an unknown key, a bad issuer.
    for table, message in (('client_secret = "x"', "does not belong in a settings file"),
                           ('issuer = "id.example.com"', "must be an http(s) URL"),
                           ('client = "x"', "unknown key 'auth.client'"),
                           ('audience_parameter = "aud"', "must be one of")):
        toml.write_text(f"[auth]\n{table}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config()
        assert main(["config"]) == 2
        err = captured(capsys).err
        assert err.count("\n") == 1 and str(toml) in err
    toml.write_text("")

    # Not configured: the sign-in commands say what to set.
    monkeypatch.delenv("MODELKEEP_AUTH_CLIENT_ID")
    assert main(["whoami"]) == 2
    assert "MODELKEEP_AUTH_ISSUER" in captured(capsys).err


def test_no_secret_in_any_output(  # type: ignore[no-untyped-def]
    oidc_provider, mlflow_oidc_server, signed_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Runs last in this module: no secret or token given to or issued in the tests above is
    in anything they printed or raised, nor in the settings listing, nor in a ``repr``."""
    secret = oidc_provider.client_secret(OIDC_JOB)
    as_job(monkeypatch, oidc_provider, OIDC_JOB)
    (tmp_path / "modelkeep.toml").write_text(
        f'registry = "{mlflow_oidc_server.url}"\n[auth]\nissuer = "{oidc_provider.issuer}"\n'
        f'client_id = "{OIDC_JOB}"\n')
    for args in (["--json", "config"], ["config"], ["whoami", "--json"], ["whoami"],
                 ["login", "--json"], ["list"]):
        rc = main(args)
        result = captured(capsys)
        assert rc == 0, (args, result.err)  # the error, should a run fail here again
        out = result.out
        if args[0] == "login":
            check = validator(json.loads(SCHEMA_FILE.read_text()), "login")
            assert not list(check.iter_errors(json.loads(out)))
    from modelkeep.auth.settings import resolve

    settings = resolve({})
    assert settings is not None
    source = tokens.source_for(settings)
    SECRETS.add(source.access_token())
    said(repr(settings), repr(source), repr(tokens.BearerAuth(source)), str(settings.describe()))

    SECRETS.update(c.secret for c in oidc_provider.clients.values() if c.secret)
    assert secret in SECRETS and len(SECRETS) >= 6 and len(OUTPUTS) >= 10
    everything = "\n".join(OUTPUTS)
    assert "eyJ" not in everything  # no JSON Web Token at all
    leaked = [s[:6] + "..." for s in SECRETS if s in everything]
    assert not leaked, f"secrets in the output: {leaked}"
