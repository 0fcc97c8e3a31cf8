"""How a registry failure reads to a person, whichever way modelkeep talked to MLflow.

MLflow's client, the REST adapter and the SQLite reader all end here, so a missing version, a
refused login or an unreachable server gives the same one line and the same error class however
the registry was reached. It also holds the one search filter both MLflow adapters send.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from modelkeep.errors import (
    Hint,
    MissingDriverError,
    NotFoundError,
    Option,
    RegistryAuthError,
    RegistryError,
    RegistryPermissionError,
)

if TYPE_CHECKING:
    from modelkeep.errors import (
        ModelkeepError,
    )

NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
DENIED_CODES = frozenset({"PERMISSION_DENIED"})
UNAUTHENTICATED_CODES = frozenset({"UNAUTHENTICATED", "UNAUTHORIZED"})
NO_CREDENTIALS_HINT = ("sign in with `modelkeep login` ([auth] in modelkeep.toml), or set "
                       "MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and "
                       "MLFLOW_TRACKING_PASSWORD for this server")
# SQLite lets one writer in at a time; concurrent registers from several processes see "database
# is locked" or a lost race on the version number. Both are safe to retry. An MLflow server
# retries a lost race itself a few times, rolling each back, then gives up with "Model Version
# creation error" (SqlAlchemyStore.create_model_version): nothing was created, so that too.
RETRYABLE = ("database is locked", "unique constraint", "integrityerror", "deadlock",
             "lock wait timeout", "duplicate entry", "already exists",
             "model version creation error")


def not_found(uri: str, what: str) -> NotFoundError:
    return NotFoundError(f"{what} not found in registry {uri}",
                         hint="list models with `modelkeep list`")


def translate(uri: str, what: str, *, code: str, status: int | None, message: str,
              model: str | None = None, need: str | None = None, who: str | None = None,
              sign_in: str | None = None) -> ModelkeepError:
    """The modelkeep error for a registry answer: MLflow's *code*, the HTTP *status* when
    there was one, and its *message*. A refusal names *who* was refused (the credential in use)
    and the permission it lacks (*need*, on *model*); *sign_in* says what to do about a 401
    with the credentials in use."""
    # A missing alias comes back as INVALID_PARAMETER_VALUE "... not found".
    if code in NOT_FOUND_CODES or status == 404 or "not found" in message.lower():
        return not_found(uri, what)
    if code in UNAUTHENTICATED_CODES or status == 401:
        return RegistryAuthError(
            f"registry {uri} refused {what}: not logged in (credentials missing or wrong)",
            hint=sign_in or NO_CREDENTIALS_HINT,
        )
    if code in DENIED_CODES or status == 403:
        if who is None:
            user = os.environ.get("MLFLOW_TRACKING_USERNAME")
            who = f"user {user!r}" if user else "this user"
        on = f" on model {model!r}" if model else " on the model"
        if need:
            hint = f"ask an admin of the registry, or the model's owner, for {need}{on}"
        else:
            hint = ("ask an MLflow admin for EDIT on the model (to register and move "
                    "aliases) or MANAGE (to delete aliases)")
        return RegistryPermissionError(
            f"registry {uri} refused {what}: permission denied for {who}"
            + (f" (needs {need}{on})" if need else ""),
            hint=hint,
        )
    first = message.splitlines()[0][:300] if message else f"HTTP {status}"
    return RegistryError(f"registry error on {what}: {first}")


# SQLAlchemy picks a database's driver from the URI's scheme: ``postgresql://`` means psycopg
# (version 3, SQLAlchemy 2.1) and ``mysql://`` mysqlclient. The package each driver module comes
# in, and the scheme of the other driver modelkeep is tested with.
_DRIVERS = {
    "psycopg": ("psycopg[binary]", "psycopg2", "postgresql+psycopg2://"),
    "psycopg2": ("psycopg2-binary", "psycopg", "postgresql+psycopg://"),
    "MySQLdb": ("mysqlclient", "pymysql", "mysql+pymysql://"),
    "pymysql": ("pymysql", "MySQLdb", "mysql+mysqldb://"),
}


def missing_driver(uri: str, exc: ImportError) -> MissingDriverError | None:
    """The error for a database registry whose driver module is not installed, or None when
    *exc* is about something else."""
    module = (exc.name or "").partition(".")[0]
    if module not in _DRIVERS:
        return None
    package, other, scheme = _DRIVERS[module]
    hint = f"pip install '{package}'"
    if importlib.util.find_spec(other) is not None:
        hint += f", or name the driver that is installed: {scheme}…"
    return MissingDriverError(uri, module, hint)


_MIGRATED = Option(api="modelkeep.open(registry='sqlite:///mlflow.db')",
                   cli="--registry sqlite:///mlflow.db")


def unopenable(uri: str, message: str) -> RegistryError:
    """The error for a registry MLflow's client refused to open: an MLflow file store
    (``mlruns``), which MLflow 3 opens only when asked to, or another refusal in one line."""
    if "MLFLOW_ALLOW_FILE_STORE" in message:
        path = (uri.removeprefix("file://") or "mlruns").replace("{", "{{").replace("}", "}}")
        return RegistryError(
            f"registry {uri} is an MLflow file store (mlruns), which MLflow no longer opens "
            "by default",
            hint=Hint(f"move it into a database: mlflow migrate-filestore --source {path} "
                      "--target sqlite:///mlflow.db, then open that: {registry}; or set "
                      "MLFLOW_ALLOW_FILE_STORE=true", registry=_MIGRATED))
    first = message.strip().splitlines()[0][:300] if message.strip() else "no reason given"
    if uri.lower().startswith("postgres:"):  # Heroku's spelling, which SQLAlchemy dropped
        return RegistryError(f"registry {uri} cannot be opened: MLflow does not know the "
                             "scheme postgres://", hint="write it postgresql+psycopg2://…")
    return RegistryError(f"registry {uri} cannot be opened: {first}")


def unreachable(uri: str) -> RegistryError:
    return RegistryError(f"registry {uri} is unreachable",
                         hint="check the registry URI and that the server runs")


def active_run_id() -> str | None:
    """The id of the MLflow run active in this process, if any: a version registered inside a
    training run is linked to it, as ``mlflow.register_model`` does.

    A run can only be active if something in this process imported MLflow and started it, so a
    process that never imported MLflow is not made to pay its start-up to learn there is none.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "active_run"):
        return None
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def search_filter(name: str | None, tags: Mapping[str, str]) -> str:
    """MLflow's ``search_model_versions`` filter for model *name* and exact *tags*; a term whose
    key or value MLflow's filter cannot quote (a backtick, a quote) is left out, for the caller
    to check itself (:func:`modelkeep.ops.search.candidates` checks every tag again)."""
    terms = []
    if name is not None and "'" not in name:
        terms.append(f"name = '{name}'")
    for key, value in sorted(tags.items()):
        if "`" not in key and "'" not in value and "\\" not in value:
            terms.append(f"tags.`{key}` = '{value}'")
    return " AND ".join(terms)
