"""Tags every MLflow run with the code and store it works with (the ``mlflow.run_context_provider``
entry point).

MLflow asks each registered provider for tags when ``mlflow.start_run()`` creates a run. This one
adds ``modelkeep.git.commit`` (``git rev-parse HEAD`` in the working folder, when it is inside a
git work tree) and ``modelkeep.store`` (the store the project's modelkeep settings name, with any
user, password and query removed), so a run says which code produced it and where its versions go.

It must never make starting a run slow or fail: git gets a short timeout, and anything that goes
wrong (no git, not a repository, bad settings) only leaves the tag out.
"""

from __future__ import annotations

import subprocess

from mlflow.tracking.context.abstract_context import RunContextProvider

from modelkeep.plugins.git import strip_credentials

GIT_TIMEOUT = 5.0
COMMIT_TAG = "modelkeep.git.commit"
STORE_TAG = "modelkeep.store"


def git_commit(cwd: str | None = None) -> str | None:
    """The commit checked out in the git work tree holding *cwd*, or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=cwd, capture_output=True,
            text=True, timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) in (40, 64) else None


def store_url() -> str | None:
    """The default store of the project's settings, without credentials, or None."""
    try:
        from modelkeep.config import load_config

        url = load_config().resolve_store(None).url
    except Exception:  # settings are the user's to fix when they use modelkeep, not here
        return None
    return strip_credentials(url)


class ModelkeepRunContext(RunContextProvider):
    """Adds ``modelkeep.git.commit`` and ``modelkeep.store`` to every new run."""

    def in_context(self) -> bool:
        return True

    def tags(self) -> dict[str, str]:
        tags = {}
        commit = git_commit()
        if commit:
            tags[COMMIT_TAG] = commit
        url = store_url()
        if url:
            tags[STORE_TAG] = url
        return tags
