"""moto_server with IAM enforced and STS's web-identity exchange as AWS does it, for the tests of
stores reached with the sign-in's identity (tests/test_store_identity_s3.py).

    python tests/moto_iam.py -H 127.0.0.1 -p PORT

moto checks signatures and policies once ``/moto-api/reset-auth`` turns it on, but three things
of AWS's it does not do, and the tests need all three; this launcher adds them to moto's own
server before starting it:

- ``AssumeRoleWithWebIdentity`` is accepted unsigned (moto answers 500 to it once IAM is
  enforced: it looks for the ``Authorization`` header every other action has).
- Its ``WebIdentityToken`` is checked as STS checks it: the role's trust policy names an IAM
  OpenID Connect provider as its ``Federated`` principal; the token is a JWT signed by a key of
  that provider's JWKS (found by OpenID discovery), issued by it, for one of its client IDs
  (``aud``), and not expired. moto takes any string.
- Assumed-role credentials expire: S3 answers ``ExpiredToken`` after their ``Expiration``.

Each exchange is logged as one line, ``web-identity: role=… sub=… jti=… token-exp=…``, never
the token, so a test can count the exchanges and tell the tokens apart.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_JWKS: dict[str, Any] = {}


def _jwks(issuer: str) -> Any:
    from joserfc.jwk import KeySet

    if issuer not in _JWKS:
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration",
                                    timeout=10) as answer:
            jwks_uri = json.load(answer)["jwks_uri"]
        with urllib.request.urlopen(jwks_uri, timeout=10) as answer:
            _JWKS[issuer] = KeySet.import_key_set(json.load(answer))
    return _JWKS[issuer]


def _federated_providers(role: Any) -> list[str]:
    policy = role.assume_role_policy_document
    policy = json.loads(policy) if isinstance(policy, str) else policy
    statements = policy.get("Statement", [])
    found = []
    for st in statements if isinstance(statements, list) else [statements]:
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if st.get("Effect") == "Allow" and "sts:AssumeRoleWithWebIdentity" in actions:
            federated = (st.get("Principal") or {}).get("Federated", [])
            found += [federated] if isinstance(federated, str) else federated
    return found


def check_web_identity(account_id: str, role_arn: str, token: str) -> dict[str, Any]:
    """The token's claims, or the STS error AWS would answer."""
    from joserfc import jwt
    from joserfc.errors import ExpiredTokenError, JoseError
    from moto.iam.models import iam_backends
    from moto.sts.exceptions import STSClientError

    iam = iam_backends[account_id]["aws"]
    try:
        role = iam.get_role_by_arn(role_arn)
    except Exception:
        raise STSClientError("AccessDenied",
                             "Not authorized to perform sts:AssumeRoleWithWebIdentity") from None
    providers = [iam.open_id_providers[arn] for arn in _federated_providers(role)
                 if arn in iam.open_id_providers]
    if not providers:
        raise STSClientError("AccessDenied",
                             "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    for provider in providers:
        issuer = f"http://{provider.url}"
        try:
            keys = _jwks(issuer)
        except OSError:  # a provider that cannot be reached vouches for no token
            continue
        try:
            decoded = jwt.decode(token, keys)
        except (JoseError, ValueError):
            continue
        claims = decoded.claims
        if claims.get("iss") != issuer:
            continue
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else (audiences or [])
        if not set(audiences) & set(provider.client_id_list):
            raise STSClientError("InvalidIdentityToken", "Incorrect token audience")
        try:
            jwt.JWTClaimsRegistry(exp={"essential": True}).validate(claims)
        except ExpiredTokenError:
            raise STSClientError("ExpiredTokenException", "Token expired") from None
        return dict(claims)
    raise STSClientError("InvalidIdentityToken",
                         "The web identity token is not from a provider the role trusts")


def patch_moto() -> None:
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.core.utils import utcnow
    from moto.iam import access_control
    from moto.s3.exceptions import S3ClientError
    from moto.sts.models import sts_backends
    from moto.sts.responses import TokenResponse

    authorize = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def unsigned_web_identity(self: Any, resource: str = "*") -> None:
        if self._get_action() == "AssumeRoleWithWebIdentity" and \
                "Authorization" not in self.headers:
            return
        authorize(self, resource)

    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = unsigned_web_identity

    assume = TokenResponse.assume_role_with_web_identity

    def checked_assume(self: Any) -> Any:
        role_arn = self._get_param("RoleArn")
        claims = check_web_identity(self.current_account, role_arn,
                                    self._get_param("WebIdentityToken") or "")
        print(f"web-identity: role={role_arn} sub={claims.get('sub')} "
              f"jti={claims.get('jti')} token-exp={claims.get('exp')} "
              f"duration={self._get_param('DurationSeconds')}", flush=True)
        return assume(self)

    TokenResponse.assume_role_with_web_identity = checked_assume

    init = access_control.AssumedRoleAccessKey.__init__

    def expiring(self: Any, account_id: str, partition: str, access_key_id: str,
                 headers: dict[str, str]) -> None:
        init(self, account_id, partition, access_key_id, headers)
        for role in sts_backends[account_id][partition].assumed_roles:
            if role.access_key_id == access_key_id and role.expiration < utcnow():
                raise access_control.CreateAccessKeyFailure(reason="ExpiredToken")

    access_control.AssumedRoleAccessKey.__init__ = expiring

    invalid = access_control.S3IAMRequest._raise_invalid_access_key

    def expired_token(self: Any, reason: str) -> None:
        if reason == "ExpiredToken":
            raise S3ClientError("ExpiredToken", "The provided token has expired.")
        invalid(self, reason)

    access_control.S3IAMRequest._raise_invalid_access_key = expired_token


# ------------------------------------------------------------------------ for the tests


@dataclass
class MotoIam:
    """A running server: ``endpoint_url``, an admin's keys (IAM user ``admin``, allowed
    everything), ``region``, and the log its exchanges are written to."""

    endpoint_url: str
    process: Any
    key: str
    secret: str
    region: str = "us-east-1"

    def client(self, service: str, *, admin: bool = True) -> Any:
        import boto3

        keys = {"aws_access_key_id": self.key, "aws_secret_access_key": self.secret} \
            if admin else {}
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region,
                            **keys)

    def exchanges(self) -> list[dict[str, str]]:
        """The web-identity exchanges so far, oldest first (their log lines' fields)."""
        found = []
        for line in Path(self.process.log_path).read_text(errors="replace").splitlines():
            if line.startswith("web-identity: "):
                found.append(dict(f.split("=", 1) for f in line.split()[1:]))
        return found


def start_moto_iam(workdir: Path) -> MotoIam:
    """The launcher on a free port, with an admin user made before IAM is turned on."""
    import boto3

    from tests.servers import ManagedProcess, _http_answers, _start_with_retries

    def start(port: int) -> ManagedProcess:
        proc = ManagedProcess(
            "moto_server (IAM enforced)",
            [sys.executable, str(Path(__file__).resolve()), "-H", "127.0.0.1", "-p", str(port)],
            workdir / f"moto-iam-{port}.log",
            env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "setup",
                 "AWS_SECRET_ACCESS_KEY": "setup", "AWS_DEFAULT_REGION": "us-east-1",
                 "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        proc.wait_ready(lambda: _http_answers(f"http://127.0.0.1:{port}/moto-api/"))
        return proc

    port, proc = _start_with_retries(start)
    url = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="admin")["AccessKey"]
    with urllib.request.urlopen(urllib.request.Request(
            f"{url}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "text/plain"}), timeout=10):
        pass
    # Keys moto makes are valid at once; the first signed call proves IAM is on and they work.
    deadline = time.monotonic() + 10
    while True:
        try:
            boto3.client("sts", endpoint_url=url, region_name="us-east-1",
                         aws_access_key_id=key["AccessKeyId"],
                         aws_secret_access_key=key["SecretAccessKey"]).get_caller_identity()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return MotoIam(url, proc, key["AccessKeyId"], key["SecretAccessKey"])


if __name__ == "__main__":
    patch_moto()
    from moto.server import main

    sys.exit(main())
