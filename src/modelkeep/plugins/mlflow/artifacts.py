"""MLflow artifact repository for ``modelkeep://`` URIs (the ``mlflow.artifact_repository``
entry point).

Two kinds of URI reach it:

* a **version** source, ``modelkeep://…/@SNAPSHOT[/PATH]``. MLflow resolves ``models:/NAME@ALIAS``
  and ``models:/NAME/3`` to it, so ``mlflow.pyfunc.load_model``,
  ``mlflow.artifacts.download_artifacts`` and an ``mlflow server`` serving the UI read through
  here. A whole version is read through the machine's shared read cache (downloaded once, then
  linked: a second ``load_model`` downloads nothing); a single file fetches only its chunks.
  Every chunk is verified, and writes are refused: a version never changes.
* a **run artifact location**, ``modelkeep://…/@runs[/PREFIX]``, set as an experiment's artifact
  location or as ``mlflow server --artifacts-destination``. MLflow appends
  ``/<run id>/artifacts``; every ``log_artifact``/``log_model`` of a run is then stored
  chunk-deduplicated (:mod:`modelkeep.store.runs`), so checkpoints logged every epoch share their
  unchanged bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from modelkeep.errors import ModelkeepError
from modelkeep.plugins.versions import open_runs, open_version
from modelkeep.store import parse_runs_uri
from modelkeep.store.readcache import link_or_copy

if TYPE_CHECKING:
    from modelkeep.plugins.versions import VersionView
    from modelkeep.store import RunArtifacts, SnapshotFile
    from modelkeep.store.snapshot import FileEntry

_COPY_BUFFER = 4 << 20
_MLMODEL = "MLmodel"  # the file that makes a folder an MLflow model


def _mlflow_error(exc: ModelkeepError) -> MlflowException:
    return MlflowException(str(exc), error_code=RESOURCE_DOES_NOT_EXIST)


class ModelkeepArtifactRepository(ArtifactRepository):
    """Chooses the repository for a ``modelkeep://`` URI: a version's files, or run artifacts."""

    def __new__(cls, artifact_uri: str, *args: Any, **kwargs: Any) -> ModelkeepArtifactRepository:
        if cls is ModelkeepArtifactRepository:
            runs = parse_runs_uri(artifact_uri) is not None
            cls = RunArtifactRepository if runs else VersionArtifactRepository
        return super().__new__(cls)

    def _rel(self, path: str | None) -> str:
        raise NotImplementedError

    def _entry(self, rel: str) -> FileEntry:
        raise NotImplementedError

    def _open(self, rel: str) -> SnapshotFile:
        raise NotImplementedError

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        rel = self._rel(remote_file_path)
        try:
            entry = self._entry(rel)
            with self._open(rel) as src, open(local_path, "wb") as out:
                shutil.copyfileobj(src, out, _COPY_BUFFER)
            os.chmod(local_path, entry.mode)
        except ModelkeepError as exc:
            if os.path.exists(local_path):
                os.unlink(local_path)  # never leave a partial or unverified file behind
            raise _mlflow_error(exc) from exc


class VersionArtifactRepository(ModelkeepArtifactRepository):
    """The files of one modelkeep version, read-only."""

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        try:
            self._view: VersionView = open_version(artifact_uri)
        except ModelkeepError as exc:
            raise _mlflow_error(exc) from exc

    def _rel(self, path: str | None) -> str:
        """*path* (relative to this repository's URI) as a path inside the version."""
        return "/".join(p for p in (self._view.path, (path or "").strip("/")) if p)

    def _entry(self, rel: str) -> FileEntry:
        return self._view.entry(rel)

    def _open(self, rel: str) -> SnapshotFile:
        return self._view.store.open_file(self._view.snapshot, rel)

    def download_artifacts(self, artifact_path: str, dst_path: str | None = None) -> str:
        """The whole version through the shared read cache (:mod:`modelkeep.store.readcache`):
        downloaded once per machine, then only linked. Without *dst_path*, a version with no
        ``MLmodel`` file is answered with the cache's read-only folder itself, as MLflow's
        local repository answers with its own folder: nothing is written to a temporary folder,
        so a load that then fails leaves nothing behind. An MLflow model gets a new folder of
        links, since MLflow writes its ``registered_model_meta`` file into what it downloads.
        A single file or subfolder, or a store whose option ``read_cache`` is false, is read
        file by file as before (only the chunks those files use)."""
        view = self._view
        base: Any = super()  # MLflow's own, untyped
        if self._rel(artifact_path) or not view.store.read_cache:
            return str(base.download_artifacts(artifact_path, dst_path))
        if dst_path is not None and not os.path.isdir(dst_path):
            return str(base.download_artifacts(artifact_path, dst_path))  # MLflow's errors
        try:
            folder = view.store.fetch_cached(view.snapshot).path
        except ModelkeepError as exc:
            raise _mlflow_error(exc) from exc
        if dst_path is None:
            if view.snapshot.file(_MLMODEL) is None:
                return str(folder)
            dst_path = tempfile.mkdtemp()
        dest = os.path.abspath(dst_path)
        for entry in view.snapshot.files:
            target = os.path.join(dest, *entry.path.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.unlink(target)  # MLflow's download replaces what is there
            link_or_copy(folder.joinpath(*entry.path.split("/")), Path(target))
        return dest

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


class RunArtifactRepository(ModelkeepArtifactRepository):
    """A run's artifacts, stored chunk-deduplicated; MLflow may log a path again."""

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        super().__init__(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        try:
            runs = open_runs(artifact_uri)
        except ModelkeepError as exc:
            raise _mlflow_error(exc) from exc
        assert runs is not None  # __new__ chose this class because the URI is a runs URI
        self._runs: RunArtifacts = runs

    def _rel(self, path: str | None) -> str:
        return (path or "").strip("/")

    def _entry(self, rel: str) -> FileEntry:
        return self._runs.entry(rel)

    def _open(self, rel: str) -> SnapshotFile:
        return self._runs.open(rel)

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        name = os.path.basename(local_file)
        rel = f"{artifact_path.strip('/')}/{name}" if artifact_path else name
        try:
            self._runs.log_file(local_file, rel)
        except ModelkeepError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        prefix = (artifact_path or "").strip("/")
        for folder, _dirs, files in os.walk(local_dir):
            rel_folder = os.path.relpath(folder, local_dir)
            for name in sorted(files):
                parts = [p for p in (prefix, "" if rel_folder == "." else rel_folder) if p]
                self.log_artifact(
                    os.path.join(folder, name), "/".join(parts).replace(os.sep, "/") or None
                )

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        try:
            children = self._runs.children(self._rel(path))
        except ModelkeepError as exc:
            raise _mlflow_error(exc) from exc
        return [
            FileInfo(rel, entry is None, entry.size if entry is not None else None)
            for rel, entry in children
        ]
