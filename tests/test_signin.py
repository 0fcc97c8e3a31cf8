"""Sign-in to a registry behind an OpenID provider: the npm ``oidc-provider`` and ``mlflow server``
with the ``mlflow-oidc-auth`` plugin trusting it, both on loopback, started once per session.

Covered: a static bearer token (``MLFLOW_TRACKING_TOKEN``), client credentials for jobs, the device
flow for people (``modelkeep login``, completed here by posting to the provider's own pages),
renewal of short-lived tokens, refusals read as one line, and no secret in any output.
"""

from __future__ import annotations

import pytest
import requests

from tests.conftest import OIDC_JOB

pytestmark = pytest.mark.xdist_group("signin")

API = "/api/2.0/mlflow"


def client_token(provider, client_id: str) -> str:  # type: ignore[no-untyped-def]
    """An access token for *client_id* by the client-credentials grant, asked of the provider
    directly."""
    response = requests.post(f"{provider.issuer}/token",
                             data={"grant_type": "client_credentials", "scope": provider.scope},
                             auth=(client_id, provider.client_secret(client_id)), timeout=10)
    response.raise_for_status()
    return str(response.json()["access_token"])


def test_the_registry_trusts_the_providers_tokens(oidc_provider, mlflow_oidc_server) -> None:  # type: ignore[no-untyped-def]
    url = f"{mlflow_oidc_server.url}{API}/registered-models/search"
    assert requests.get(url, timeout=10).status_code == 401
    token = client_token(oidc_provider, OIDC_JOB)
    answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert requests.get(url, headers={"Authorization": f"Bearer {forged}"},
                        timeout=10).status_code == 401
