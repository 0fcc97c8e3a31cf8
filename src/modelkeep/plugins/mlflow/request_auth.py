"""MLflow's own client signing in as modelkeep does: the ``mlflow.request_auth_provider`` entry
point ``modelkeep``.

With ``MLFLOW_TRACKING_AUTH=modelkeep``, everything that talks to the server through MLflow's
client (``MlflowClient``, ``mlflow.pyfunc.load_model("models:/…")``, ``mlflow.log_metric`` in a
training script) sends the access tokens of the sign-in in ``[auth]`` / ``MODELKEEP_AUTH_*``
(:mod:`modelkeep.auth`): a job's client credentials, or the login of ``modelkeep login``, renewed
as modelkeep's own requests renew them, with one renewal and one retry on a 401.
"""

from __future__ import annotations

from typing import Any

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider

from modelkeep.errors import ConfigError

NAME = "modelkeep"


class ModelkeepRequestAuth(RequestAuthProvider):
    """The ``requests`` auth of modelkeep's sign-in, for MLflow's client."""

    def get_name(self) -> str:
        return NAME

    def get_auth(self) -> Any:
        from modelkeep.auth.tokens import BearerAuth, source_for
        from modelkeep.plugins.mlflow._http import sign_in_settings

        settings = sign_in_settings()
        if settings is None:
            raise ConfigError(f"MLFLOW_TRACKING_AUTH={NAME}, but no sign-in is configured",
                              hint="set [auth] issuer and client_id in modelkeep.toml, or "
                              "MODELKEEP_AUTH_ISSUER and MODELKEEP_AUTH_CLIENT_ID")
        return BearerAuth(source_for(settings))
