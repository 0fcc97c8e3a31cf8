"""Built-in default plugin: the MLflow Model Registry is the catalogue for every registry URI.

It answers last (``trylast``), so a plugin that returns a registry of its own for some URI wins.
MLflow itself is imported only when the registry is first used.
"""

from __future__ import annotations

from modelkeep.hooks._markers import hookimpl
from modelkeep.registry import Registry


@hookimpl(trylast=True)
def modelkeep_registry(uri: str | None) -> Registry:
    from modelkeep.plugins.mlflow.registry import MlflowRegistry

    return MlflowRegistry(uri)
