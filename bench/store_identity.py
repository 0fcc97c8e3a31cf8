"""What reaching an S3 store with the sign-in's identity costs the store's first request, against
the same request signed with an IAM user's static keys: the identity adds a token from the OpenID
provider (client credentials) and an ``AssumeRoleWithWebIdentity`` exchange at STS. Both run
against the same moto_server with IAM enforced (tests/moto_iam.py) and the npm
``oidc-provider``, on loopback; each round makes a new filesystem of each kind, in turn, so both
share the machine's load, and the identity's round forgets the tokens it held.

    .venv/bin/python bench/store_identity.py --repeat 15

Prints a Markdown table of medians (ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.moto_iam import start_moto_iam
from tests.servers import OidcClient, start_oidc_provider
from tests.test_store_identity_s3 import make_bucket, make_role


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    import s3fs

    from modelkeep.auth import tokens
    from modelkeep.auth.stores import storage_options

    for var in [v for v in os.environ if v.startswith(("AWS_", "MODELKEEP_AUTH_"))]:
        del os.environ[var]
    os.environ.update({"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    work = Path(tempfile.mkdtemp(prefix="mk-bench-identity-"))
    secret = f"cs-{uuid.uuid4().hex}"
    provider = start_oidc_provider(
        work, [OidcClient("bench-job", secret, ("client_credentials",), username="bench")], {})
    moto = start_moto_iam(work)
    try:
        bucket = make_bucket(moto)
        role = make_role(moto, provider.issuer, provider.audience, bucket)
        iam = moto.client("iam")
        iam.create_user(UserName="static")
        iam.put_user_policy(UserName="static", PolicyName="store", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
        key = iam.create_access_key(UserName="static")["AccessKey"]
        client_kwargs = {"endpoint_url": moto.endpoint_url, "region_name": moto.region}
        os.environ.update({"MODELKEEP_AUTH_ISSUER": provider.issuer,
                           "MODELKEEP_AUTH_CLIENT_ID": "bench-job",
                           "MODELKEEP_AUTH_CLIENT_SECRET": secret,
                           "MODELKEEP_AUTH_SCOPES": provider.scope,
                           "MODELKEEP_AUTH_AUDIENCE": provider.audience})
        os.chdir(work)

        def static() -> float:
            fs = s3fs.S3FileSystem(key=key["AccessKeyId"], secret=key["SecretAccessKey"],
                                   client_kwargs=client_kwargs, skip_instance_cache=True)
            started = time.perf_counter()
            fs.ls(bucket)
            return time.perf_counter() - started

        def identity() -> float:
            tokens.forget()
            started = time.perf_counter()
            options = storage_options("s3", {"client_kwargs": client_kwargs,
                                             "identity": {"role_arn": role}})
            fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
            fs.ls(bucket)
            return time.perf_counter() - started

        static(), identity()  # warm-up: imports, provider discovery, first connections
        times: dict[str, list[float]] = {"static keys (IAM user)": [],
                                         "identity (token + STS)": []}
        for _ in range(args.repeat):
            times["static keys (IAM user)"].append(static())
            times["identity (token + STS)"].append(identity())
        exchanges = len(moto.exchanges())
    finally:
        moto.process.stop()
        provider.process.stop()
    print(f"| first request of a store | median ms | ({args.repeat} rounds, interleaved) |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) * 1000:.0f} | "
              f"min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f} |")
    print(f"\nSTS exchanges seen by the server: {exchanges} "
          f"(one per identity round, plus the warm-up)")


if __name__ == "__main__":
    main()
