"""MLflow integration: the Model Registry as modelkeep's catalogue."""

from __future__ import annotations

from modelkeep.plugins.mlflow.registry import MlflowRegistry

__all__ = ["MlflowRegistry"]
