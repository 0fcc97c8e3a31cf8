"""Built-in default plugin: the MLflow Model Registry is the catalogue for every registry URI.

It answers last (``trylast``), so a plugin that returns a registry of its own for some URI wins.
How modelkeep talks to MLflow depends on the URI (:func:`registry_for`); MLflow itself is imported
only by the paths that need its client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelkeep.hooks._markers import hookimpl

if TYPE_CHECKING:
    from modelkeep.registry import Registry


def default_uri() -> str | None:
    """MLflow's registry URI when none is configured, worked out without importing MLflow:
    ``MLFLOW_REGISTRY_URI``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
    working folder. None when MLflow's own rules must decide (an ``mlruns`` folder beside it
    makes MLflow keep its file store)."""
    import os
    from pathlib import Path

    for var in ("MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_URI"):
        if os.environ.get(var):
            return os.environ[var]
    if Path("mlruns").exists():
        return None
    return "sqlite:///" + str(Path("mlflow.db").absolute())


def registry_for(uri: str | None) -> Registry:
    """The registry adapter for *uri*: MLflow's REST API for ``http(s)://`` servers, MLflow's
    tables read directly for SQLite files, MLflow's client for everything else."""
    import os

    uri = uri or default_uri()
    if uri is not None:
        scheme = uri.split(":", 1)[0].lower()
        # An auth-provider plugin or a workspace is MLflow's client's business; modelkeep's own
        # auth provider sends the tokens the REST adapter sends itself.
        auth = os.environ.get("MLFLOW_TRACKING_AUTH")
        special = (auth and auth != "modelkeep") or bool(os.environ.get("MLFLOW_WORKSPACE"))
        if scheme in ("http", "https") and not special:
            from modelkeep.plugins.mlflow.rest import RestRegistry

            return RestRegistry(uri)
        if scheme == "sqlite":
            from modelkeep.plugins.mlflow.sqlite import SqliteRegistry, sqlite_path

            path = sqlite_path(uri)
            if path is not None:
                return SqliteRegistry(uri, path)
    from modelkeep.plugins.mlflow.registry import MlflowRegistry

    return MlflowRegistry(uri)


@hookimpl(trylast=True)
def modelkeep_registry(uri: str | None) -> Registry:
    return registry_for(uri)
