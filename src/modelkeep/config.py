"""Settings: where the store and the registry are.

Found by walking up from the working folder to the first ``modelkeep.toml``; the folder holding it
is the *project root*. Without one, the working folder is the project root. Precedence, highest
first: explicit arguments (``--store``, ``modelkeep.open(store=…)``), ``MODELKEEP_*`` environment
variables, ``MLFLOW_TRACKING_URI`` (registry only), the file, the defaults::

    # modelkeep.toml
    store = ".modelkeep/store"                  # any fsspec URL; relative to this file
    registry = "sqlite:///mlflow.db"            # any MLflow tracking/registry URI

    [store_options]                             # passed to the fsspec filesystem
    client_kwargs = { endpoint_url = "http://127.0.0.1:9000" }

Environment: ``MODELKEEP_STORE``, ``MODELKEEP_REGISTRY``, ``MODELKEEP_STORE_OPTIONS`` (a JSON
object). Credentials belong in the environment the backend already reads (``AWS_*``,
``AZURE_STORAGE_*``), not in a committed file.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkeep.errors import ConfigError

CONFIG_NAME = "modelkeep.toml"
DEFAULT_STORE = ".modelkeep/store"
_KNOWN_KEYS = {"store", "registry", "store_options"}


@dataclass
class Config:
    root: Path
    store: str
    registry: str | None
    store_options: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _resolve_sqlite(uri: str, root: Path) -> str:
    """Make ``sqlite:///relative.db`` relative to the project root, not the working folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(root / uri[len(prefix):])
    return uri


def _resolve_store(url: str, root: Path) -> str:
    if "://" in url:
        if url.startswith("file://"):
            return url[len("file://"):]
        return url
    path = Path(os.path.expanduser(url))
    return str(path if path.is_absolute() else root / path)


def load_config(start: Path | None = None) -> Config:
    file = find_config(start)
    root = file.parent if file else (start or Path.cwd()).resolve()
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}", hint="fix the TOML syntax") from None
        unknown = set(data) - _KNOWN_KEYS
        if unknown:
            raise ConfigError(
                f"unknown key {sorted(unknown)[0]!r} in {file}",
                hint=f"known keys: {', '.join(sorted(_KNOWN_KEYS))}",
            )
        for key in ("store", "registry"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(f"{key!r} in {file} must be a string")
        if "store_options" in data and not isinstance(data["store_options"], dict):
            raise ConfigError(f"'store_options' in {file} must be a table")
    env_store = os.environ.get("MODELKEEP_STORE")
    store = (
        _resolve_store(env_store, Path.cwd())
        if env_store
        else _resolve_store(data.get("store", DEFAULT_STORE), root)
    )
    options = dict(data.get("store_options", {}))
    env_opts = os.environ.get("MODELKEEP_STORE_OPTIONS")
    if env_opts:
        try:
            parsed = json.loads(env_opts)
            if not isinstance(parsed, dict):
                raise ValueError
        except ValueError:
            raise ConfigError(
                "MODELKEEP_STORE_OPTIONS is not a JSON object", hint='e.g. {"anon": false}'
            ) from None
        options.update(parsed)
    registry = (
        os.environ.get("MODELKEEP_REGISTRY")
        or os.environ.get("MLFLOW_TRACKING_URI")
        or data.get("registry")
    )
    return Config(
        root=root,
        store=store,
        registry=_resolve_sqlite(registry, root) if registry else None,
        store_options=options,
        file=file,
    )


def write_config(folder: Path, *, store: str | None, registry: str | None) -> Path:
    """Write a new ``modelkeep.toml`` in *folder* (refuses to overwrite one)."""
    path = folder / CONFIG_NAME
    if path.exists():
        raise ConfigError(f"{path} already exists", hint="edit it, or remove it first")
    lines = ["# modelkeep settings; see `modelkeep --help`", ""]
    lines.append(f"store = {json.dumps(store or DEFAULT_STORE)}")
    lines.append(f"registry = {json.dumps(registry or 'sqlite:///mlflow.db')}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
