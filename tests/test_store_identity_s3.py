"""S3 stores reached with the sign-in's identity: the store option ``identity`` names an IAM role,
assumed at STS with the sign-in's access token (``AssumeRoleWithWebIdentity``).

The servers are real: the npm ``oidc-provider`` issues the tokens, and moto_server with IAM
enforced (tests/moto_iam.py) is S3 and STS: it checks each web-identity token against the
provider's keys, its audience and its expiry, expires the credentials it hands out, and refuses
S3 requests not signed by credentials the role's policy allows. No AWS key is in the environment
of the commands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelkeep
from modelkeep.auth import settings as auth_settings
from modelkeep.auth import tokens
from modelkeep.auth.stores import storage_options
from modelkeep.errors import ConfigError
from tests.backends import unique_name
from tests.conftest import OIDC_CLI, OIDC_JOB, OIDC_SHORT_JOB
from tests.helpers import tensors, tree_digest, write_model
from tests.moto_iam import MotoIam, start_moto_iam
from tests.servers import REPO_ROOT, serving
from tests.test_signin import as_job, login_as

pytestmark = pytest.mark.xdist_group("signin")

# Everything the commands and errors of this module said, and every secret they were given or
# that was issued: the last test checks that none of the second is in the first.
OUTPUTS: list[str] = []
SECRETS: set[str] = set()
RAN: set[str] = set()  # this module's tests that ran in this process
SHORT_SESSION = 20  # seconds the short-lived test's credentials last (STS itself wants >= 900)


@pytest.fixture(scope="module")
def moto_iam(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with serving(lambda: start_moto_iam(tmp_path_factory.mktemp("moto-iam")),
                 "moto_server with IAM enforced") as server:
        yield server


def make_role(moto: MotoIam, issuer: str, audience: str, bucket: str) -> str:
    """An IAM role that trusts *issuer*'s tokens for *audience* and may use *bucket*."""
    iam = moto.client("iam")
    host = urllib.parse.urlparse(issuer).netloc
    arns = [p["Arn"] for p in iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]]
    arn = next((a for a in arns if a.endswith(f"/{host}")), None) or \
        iam.create_open_id_connect_provider(Url=issuer, ClientIDList=[audience],
                                            ThumbprintList=["0" * 40])["OpenIDConnectProviderArn"]
    name = f"mk-{uuid.uuid4().hex[:12]}"
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Federated": arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {f"{host}:aud": audience}}}]}
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=name, PolicyName="store", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
    return str(role["Role"]["Arn"])


def make_bucket(moto: MotoIam) -> str:
    name = f"mk-{uuid.uuid4().hex[:20]}"
    moto.client("s3").create_bucket(Bucket=name)
    return name


def store_options(moto: MotoIam, role_arn: str, **identity: Any) -> dict[str, Any]:
    return {"client_kwargs": {"endpoint_url": moto.endpoint_url, "region_name": moto.region},
            "identity": {"role_arn": role_arn, **identity}}


def toml_value(value: Any) -> str:
    """A TOML inline value for the JSON-like *value*."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def command_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `modelkeep` process with no AWS credentials of any kind."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MODELKEEP_AUTH_", "MLFLOW_TRACKING_", "MODELKEEP_STORE"))}
    env.update({"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO_ROOT / "src"),
                "MODELKEEP_TOKEN_FILE": str(tmp_path / "tokens.json"),
                "MODELKEEP_CACHE_DIR": str(tmp_path / "cache"), **extra})
    return env


def run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "modelkeep", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    OUTPUTS.extend((done.stdout, done.stderr))
    return done


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process, too, without AWS credentials or a sign-in from elsewhere."""
    for var in list(os.environ):
        if var.startswith(("AWS_", "MODELKEEP_AUTH_", "MLFLOW_TRACKING_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MODELKEEP_TOKEN_FILE", str(tmp_path / "tokens.json"))
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    tokens.forget()


def test_register_and_pull_as_the_sign_in(  # type: ignore[no-untyped-def]
    oidc_provider, moto_iam: MotoIam, tmp_path: Path,
) -> None:
    bucket = make_bucket(moto_iam)
    role = make_role(moto_iam, oidc_provider.issuer, oidc_provider.audience, bucket)
    options = store_options(moto_iam, role, session_name="ci-models")
    store = f"s3://{bucket}/keep"
    auth = (f'[auth]\nissuer = "{oidc_provider.issuer}"\nclient_id = "{OIDC_JOB}"\n'
            f'scopes = "{oidc_provider.scope}"\naudience = "{oidc_provider.audience}"\n')
    config = (f'registry = "sqlite:///{tmp_path / "mlflow.db"}"\ndefault_store = "team"\n\n'
              f'[stores.team]\nurl = "{store}"\noptions = {toml_value(options)}\n\n')
    (tmp_path / "modelkeep.toml").write_text(config + auth)
    secret = oidc_provider.client_secret(OIDC_JOB)
    SECRETS.add(secret)
    env = command_env(tmp_path, MODELKEEP_AUTH_CLIENT_SECRET=secret)
    model = write_model(tmp_path / "model", tensors(n=3), extra=False)
    name = unique_name()
    before = len(moto_iam.exchanges())

    done = run(tmp_path, env, "register", name, str(model), "--alias", "champion")
    assert done.returncode == 0, done.stderr
    done = run(tmp_path, env, "pull", f"{name}@champion", str(tmp_path / "pulled"))
    assert done.returncode == 0, done.stderr
    assert tree_digest(tmp_path / "pulled") == tree_digest(model)

    # Each command exchanged the job's token once, for the role, as the session name asked.
    exchanges = moto_iam.exchanges()[before:]
    assert len(exchanges) == 2, exchanges
    assert {e["role"] for e in exchanges} == {role}
    assert {e["sub"] for e in exchanges} == {OIDC_JOB}
    assert len({e["jti"] for e in exchanges}) == 2
    # The chunks are in the bucket, written with the role's credentials (IAM is enforced).
    listed = moto_iam.client("s3").list_objects_v2(Bucket=bucket, Prefix="keep/")
    assert listed["KeyCount"] > 3

    # The role allows this bucket only: writing to another one is refused, in one line.
    other = make_bucket(moto_iam)
    (tmp_path / "modelkeep.toml").write_text(config.replace(store, f"s3://{other}/keep") + auth)
    done = run(tmp_path, env, "register", unique_name(), str(model))
    assert done.returncode == 5 and done.stderr.count("\n") == 1, done.stderr
    assert f"access to store s3://{other}/keep was refused for role {role} (assumed as " \
        f"client {OIDC_JOB!r}" in done.stderr and "the role's policy must allow" in done.stderr

    # A role that trusts another provider: STS's refusal, in one line.
    strangers = make_role(moto_iam, "http://127.0.0.1:9", "urn:elsewhere", bucket)
    (tmp_path / "modelkeep.toml").write_text(config.replace(role, strangers) + auth)
    done = run(tmp_path, env, "pull", f"{name}@champion", str(tmp_path / "refused"))
    assert done.returncode == 5 and done.stderr.count("\n") == 1, done.stderr
    assert f"STS refused the web identity of client {OIDC_JOB!r}" in done.stderr
    assert f"for role {strangers}" in done.stderr and "InvalidIdentityToken" in done.stderr
    assert f"OpenID Connect provider of {oidc_provider.issuer}" in done.stderr

    # Without the identity, nothing in the environment signs the requests: S3 refuses.
    plain = {k: v for k, v in options.items() if k != "identity"}
    (tmp_path / "modelkeep.toml").write_text(
        config.replace(toml_value(options), toml_value(plain)) + auth)
    done = run(tmp_path, env, "pull", f"{name}@champion", str(tmp_path / "plain"))
    assert done.returncode == 5 and done.stderr.count("\n") == 1, done.stderr
    assert "refused or has no credentials" in done.stderr
    assert "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE" in done.stderr
    assert "AZURE_" not in done.stderr

    # With the identity and no sign-in configured: a one-line settings error, as on Azure.
    (tmp_path / "modelkeep.toml").write_text(config)
    done = run(tmp_path, command_env(tmp_path), "pull", f"{name}@champion",
               str(tmp_path / "unsigned"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"reached as role {role}" in done.stderr and "no sign-in is configured" in done.stderr
    assert "MODELKEEP_AUTH_ISSUER" in done.stderr
    assert not (tmp_path / "unsigned").exists()


def test_a_person_signed_in_with_modelkeep_login(  # type: ignore[no-untyped-def]
    oidc_provider, moto_iam: MotoIam, no_aws: None, tmp_path: Path,
) -> None:
    """The token STS gets is the login's: the role session is the person's (``sub``)."""
    bucket = make_bucket(moto_iam)
    role = make_role(moto_iam, oidc_provider.issuer, oidc_provider.audience, bucket)
    options = store_options(moto_iam, role)
    (tmp_path / "modelkeep.toml").write_text(
        f'registry = "sqlite:///{tmp_path / "mlflow.db"}"\nstore = "s3://{bucket}/keep"\n'
        f'store_options = {toml_value(options)}\n\n'
        f'[auth]\nissuer = "{oidc_provider.issuer}"\nclient_id = "{OIDC_CLI}"\n'
        f'scopes = "profile email {oidc_provider.scope}"\n'
        f'audience = "{oidc_provider.audience}"\n')
    out, err = login_as(oidc_provider, "alice", tmp_path)
    OUTPUTS.extend((out, err))
    for entry in json.loads((tmp_path / "tokens.json").read_text()).values():
        SECRETS.update(str(entry[k]) for k in ("access_token", "refresh_token") if entry.get(k))
    before = len(moto_iam.exchanges())
    model = write_model(tmp_path / "model", tensors(n=2), extra=False)
    done = run(tmp_path, command_env(tmp_path), "register", unique_name(), str(model))
    assert done.returncode == 0, done.stderr
    assert [e["sub"] for e in moto_iam.exchanges()[before:]] == ["alice"]


def test_credentials_and_tokens_are_renewed(  # type: ignore[no-untyped-def]
    oidc_provider, moto_iam: MotoIam, no_aws: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20-second access tokens and 20-second sessions: after a pause longer than both, the
    store's next requests are signed with new credentials, had for a new token (STS refuses an
    expired token, S3 refuses expired credentials)."""
    bucket = make_bucket(moto_iam)
    role = make_role(moto_iam, oidc_provider.issuer, oidc_provider.audience, bucket)
    as_job(monkeypatch, oidc_provider, OIDC_SHORT_JOB)
    keep = modelkeep.open(store=f"s3://{bucket}/keep",
                          registry=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          store_options=store_options(moto_iam, role, duration=SHORT_SESSION))
    name = unique_name()
    before = len(moto_iam.exchanges())
    first = write_model(tmp_path / "a", tensors(seed=1, n=2), extra=False)
    keep.register(name, first)
    time.sleep(SHORT_SESSION + 3)  # the credentials and the token have both expired
    pulled = keep.pull(f"{name}@1", tmp_path / "pulled", cache=False)
    assert tree_digest(pulled) == tree_digest(first)
    time.sleep(SHORT_SESSION + 3)
    second = write_model(tmp_path / "b", tensors(seed=2, n=2), extra=False)
    assert keep.register(name, second).version == 2

    exchanges = moto_iam.exchanges()[before:]
    assert len(exchanges) >= 3, exchanges
    assert all(e["duration"] == str(SHORT_SESSION) for e in exchanges)
    assert len({e["jti"] for e in exchanges}) == len(exchanges)  # a new token each time
    settings = auth_settings.resolve({})
    assert settings is not None
    source = tokens.source_for(settings)
    assert source.renewals >= 3
    SECRETS.add(source.access_token())
    session = keep.stores.home.location.options["session"]
    frozen = session._credentials._frozen_credentials  # the credentials it signs with now
    SECRETS.update({frozen.secret_key, frozen.token})
    OUTPUTS.extend((repr(session), str(session), repr(keep.stores.home.location)))


def test_identity_options_are_checked(
    tmp_path: Path, no_aws: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    role = "arn:aws:iam::123456789012:role/modelkeep"
    never = pytest.fail  # no sign-in is asked for before the options are found good

    def options(protocol: str, given: dict[str, Any]) -> dict[str, Any]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(auth_settings, "configured", lambda: never("asked for a sign-in"))
            return storage_options(protocol, given)

    assert options("s3", {"anon": False, "x": 1}) == {"anon": False, "x": 1}
    for protocol, given, message in (
        ("s3", {"identity": "role"}, "'identity' must be a table"),
        ("s3", {"identity": {"role": role}}, "unknown key 'identity.role'"),
        ("s3", {"identity": {"kind": "azure-default", "role_arn": role}},
         "has kind 'azure-default'"),
        ("s3", {"identity": {"role_arn": "modelkeep"}}, "must be an IAM role's ARN"),
        ("s3", {"identity": {"role_arn": role}, "key": "AKIA", "secret": "x"},
         "both 'identity' and 'key'"),
        ("s3", {"identity": {"role_arn": role, "duration": "1h"}}, "whole number of seconds"),
        ("s3", {"identity": {"role_arn": role, "session_name": "a b"}}, "2 to 64 letters"),
        ("s3", {"identity": {"role_arn": role, "sts_endpoint_url": "sts.local"}},
         "must be an http(s) URL"),
        ("file", {"identity": {}}, "not supported for file:// stores"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)) as refused:
            options(protocol, given)
        OUTPUTS.append(str(refused.value))
        assert "\n" not in str(refused.value)

    # Defaults: the store's endpoint is STS's, its region the role's; the repr names the role.
    monkeypatch.setenv("MODELKEEP_AUTH_ISSUER", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_ID", "job")
    monkeypatch.setenv("MODELKEEP_AUTH_CLIENT_SECRET", "s3cret-of-the-job")
    SECRETS.add("s3cret-of-the-job")
    got = storage_options("s3", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9",
                                                   "region_name": "eu-west-3"},
                                 "identity": {"kind": "sign-in", "role_arn": role}})
    assert "identity" not in got
    session = got["session"]
    identity = session.identity
    assert (identity.sts_endpoint_url, identity.region, identity.duration,
            identity.session_name) == ("http://127.0.0.1:9", "eu-west-3", 3600, "modelkeep")
    assert repr(session) == str(session) == (
        f"WebIdentitySession(role_arn={role!r}, session_name='modelkeep', "
        "sts='http://127.0.0.1:9')")
    OUTPUTS.append(repr(got))
    for var in ("MODELKEEP_AUTH_ISSUER", "MODELKEEP_AUTH_CLIENT_ID"):
        monkeypatch.delenv(var)
    with pytest.raises(ConfigError, match="no sign-in is configured"):
        storage_options("s3", {"identity": {"role_arn": role}})


def _leaks(oidc_provider) -> list[str]:  # type: ignore[no-untyped-def]
    SECRETS.update(c.secret for c in oidc_provider.clients.values() if c.secret)
    SECRETS.discard("")
    everything = "\n".join(OUTPUTS)
    found = ["a JSON Web Token"] if "eyJ" in everything else []
    return found + [s[:6] + "..." for s in SECRETS if s and s in everything]


@pytest.fixture(scope="module", autouse=True)
def _no_secret_left_behind(oidc_provider):  # type: ignore[no-untyped-def]
    """Whichever of this module's tests ran in this process (a scheduler may split a module),
    nothing they printed or raised holds a secret, token or credential given or issued."""
    yield
    leaked = _leaks(oidc_provider)
    assert not leaked, f"secrets in the output: {leaked}"


def test_no_secret_in_any_output(oidc_provider, request: pytest.FixtureRequest) -> None:  # type: ignore[no-untyped-def]
    """Runs last in this module: no secret, token or credential given to or issued in the tests
    above is in anything they printed or raised (checked again when the module ends)."""
    leaked = _leaks(oidc_provider)
    assert not leaked, f"secrets in the output: {leaked}"
    module = request.node.nodeid.split("::")[0]
    earlier = [i for i in request.session.items
               if i.nodeid.split("::")[0] == module and i is not request.node]
    if all(i.name in RAN for i in earlier):
        # Every test above ran here: the check had something to look at.
        assert len(SECRETS) >= 5 and len(OUTPUTS) >= 10


@pytest.fixture(autouse=True)
def _ran(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    RAN.add(request.node.name)
