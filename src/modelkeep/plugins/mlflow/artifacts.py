"""MLflow artifact repository for ``modelkeep://`` URIs (the ``mlflow.artifact_repository``
entry point).

A version registered by modelkeep has a ``modelkeep://…/@SNAPSHOT`` source. MLflow resolves
``models:/NAME@ALIAS`` and ``models:/NAME/3`` to that source and asks the repository registered for
its scheme to list and download the files, so ``mlflow.pyfunc.load_model``,
``mlflow.artifacts.download_artifacts`` and an ``mlflow server`` serving the UI read through
here: each chunk is fetched and verified, and only the files asked for are fetched.

A snapshot is immutable, so this repository refuses writes.
"""

from __future__ import annotations

import os
import shutil

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from modelkeep.errors import ModelkeepError
from modelkeep.plugins.versions import VersionView, open_version

_COPY_BUFFER = 4 << 20


class ModelkeepArtifactRepository(ArtifactRepository):
    """The files of one modelkeep version, as MLflow artifacts."""

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        try:
            self._view: VersionView = open_version(artifact_uri)
        except ModelkeepError as exc:
            raise MlflowException(str(exc), error_code=RESOURCE_DOES_NOT_EXIST) from exc

    def _rel(self, path: str | None) -> str:
        """*path* (relative to this repository's URI) as a path inside the version."""
        parts = [p for p in (self._view.path, (path or "").strip("/")) if p]
        return "/".join(parts)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        folder = self._rel(path)
        view = self._view
        if view.snapshot.file(folder) is not None or not view.is_dir(folder):
            return []  # MLflow's convention: listing a file or a missing path is empty
        base = len(view.path) + 1 if view.path else 0
        return [
            FileInfo(rel[base:], entry is None, entry.size if entry is not None else None)
            for rel, entry in view.children(folder)
        ]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        rel = self._rel(remote_file_path)
        try:
            entry = self._view.entry(rel)
            with (
                self._view.store.open_file(self._view.snapshot, entry.path) as src,
                open(local_path, "wb") as out,
            ):
                shutil.copyfileobj(src, out, _COPY_BUFFER)
            os.chmod(local_path, entry.mode)
        except ModelkeepError as exc:
            if os.path.exists(local_path):
                os.unlink(local_path)  # never leave a partial or unverified file behind
            raise MlflowException(str(exc), error_code=RESOURCE_DOES_NOT_EXIST) from exc

    def _immutable(self) -> MlflowException:
        return MlflowException(
            f"{self.artifact_uri} is a modelkeep version, which never changes; "
            "register a new version with `modelkeep register` instead",
            error_code=INVALID_PARAMETER_VALUE,
        )

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        raise self._immutable()

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        raise self._immutable()

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        raise self._immutable()
