"""Settings: where the stores and the registry are, and the policies to pass on.

Found by walking up from the working folder to the first ``modelkeep.toml``, or ``pyproject.toml``
with a ``[tool.modelkeep]`` table (a ``pyproject.toml`` without one is passed over, and in one
folder ``modelkeep.toml`` wins); ``MODELKEEP_CONFIG`` names a file and skips the search. The folder
holding the file is the *project root*; without a file, the working folder is. Relative store paths
and ``sqlite:///`` registry URIs in the file are relative to the project root.

Precedence, highest first: explicit arguments (``--store``, ``modelkeep.open(store=…)``),
``MODELKEEP_*`` environment variables, ``MLFLOW_TRACKING_URI`` (registry only), the file, the
defaults::

    # modelkeep.toml
    registry = "sqlite:///mlflow.db"            # any MLflow tracking/registry URI
    default_store = "team"                      # which named store commands use

    [stores.team]                               # a named store: a URL and its fsspec options
    url = "s3://ml-models/keep"
    options = { client_kwargs = { endpoint_url = "http://127.0.0.1:9000" } }

    [stores.laptop]
    url = ".modelkeep/store"                    # relative to this file

    [policies."llm-*"]                          # rules per model-name glob (docs/policies.md)
    keep_last = 5

The single-store form keeps working: ``store = "URL"`` with a ``[store_options]`` table is an
unnamed default store. ``default_store`` and ``store`` are exclusive; with neither, the default is
``.modelkeep/store``. Named stores were chosen over a ``default = true`` flag on one of them
because one top-level key cannot name two defaults.

A store named on the command line, in ``MODELKEEP_STORE`` or by the file's ``store`` key is looked
up among the named stores first, then taken as a URL or path (write ``./team`` for a folder that
shares a store's name).

Environment: ``MODELKEEP_CONFIG`` (the file), ``MODELKEEP_STORE`` (a store name or URL),
``MODELKEEP_STORE_OPTIONS`` (a JSON object merged over the options of the store in use),
``MODELKEEP_REGISTRY``; ``MODELKEEP_PLUGINS`` is read by :mod:`modelkeep.hooks`, and
``MODELKEEP_KEY`` (an encrypted store's key) by :mod:`modelkeep.store.store`, and the
``MODELKEEP_AUTH_*`` variables with the ``[auth]`` table (sign-in to the registry) by
:mod:`modelkeep.auth.settings`. Credentials
belong in the environment the backend already reads (``AWS_*``, ``AZURE_STORAGE_*``) or a plugin
that provides storage options, not in a committed file; :func:`redact` hides them when settings are
shown.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.errors import ConfigError

# Re-exported: the redaction helpers were here before modelkeep.redaction held them.
from modelkeep.redaction import REDACTED as REDACTED
from modelkeep.redaction import is_secret_key as is_secret_key
from modelkeep.redaction import redact as redact
from modelkeep.redaction import redact_url as redact_url

if TYPE_CHECKING:
    from modelkeep.policy.rules import Policies

CONFIG_NAME = "modelkeep.toml"
PYPROJECT = "pyproject.toml"
DEFAULT_STORE = ".modelkeep/store"
_KNOWN_KEYS = {"store", "registry", "store_options", "default_store", "stores", "policies",
               "auth"}
_STORE_KEYS = {"url", "options"}
_STORE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class StoreConfig:
    """One named store: its URL (resolved against the project root) and fsspec options."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreChoice:
    """The store an operation uses: its name if it is a named store, URL and options."""

    name: str | None
    url: str
    options: dict[str, Any]


@dataclass
class Config:
    root: Path
    store: str
    registry: str | None
    store_options: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None
    store_name: str | None = None  # set when the default store is a named one
    stores: dict[str, StoreConfig] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    # The [auth] table: sign-in to the registry (read by modelkeep.auth.settings).
    auth: dict[str, Any] = field(default_factory=dict)
    # Where each effective value came from ("file", "default", "env MODELKEEP_STORE" …).
    sources: dict[str, str] = field(default_factory=dict)

    def resolve_store(self, value: str | None = None) -> StoreChoice:
        """The store *value* names: a configured store name, a URL or path, or (None) the
        default store. URLs and paths get the default store's options, as before named stores."""
        if value is None:
            return StoreChoice(self.store_name, self.store, dict(self.store_options))
        named = self.stores.get(value)
        if named is not None:
            return StoreChoice(named.name, named.url, _with_env_options(named.options))
        return StoreChoice(None, value, dict(self.store_options))

    @property
    def policy_set(self) -> Policies:
        """The parsed ``[policies]`` tables (validated when the file was loaded)."""
        from modelkeep.policy.rules import parse_policies

        prefix = "tool.modelkeep." if self.file is not None and self.file.name == PYPROJECT else ""
        return parse_policies(self.policies, file=self.file, prefix=prefix, stores=self.stores)

    def to_json(self, *, redacted: bool = True) -> dict[str, Any]:
        """The effective settings, with secrets replaced by ``***`` unless *redacted* is False."""
        data: dict[str, Any] = {
            "file": str(self.file) if self.file else None,
            "root": str(self.root),
            "store": {"name": self.store_name, "url": self.store, "options": self.store_options,
                      "source": self.sources.get("store", "default")},
            "registry": {"uri": self.registry, "source": self.sources.get("registry", "default")},
            "stores": {n: {"url": s.url, "options": s.options} for n, s in self.stores.items()},
            "policies": self.policies,
            # Not "auth": a key of that name would be hidden whole by redact().
            "sign_in": self.auth,
            "plugins": os.environ.get("MODELKEEP_PLUGINS"),
        }
        return redact(data) if redacted else data


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="fix the TOML syntax") from None


def _tool_table(data: dict[str, Any]) -> Any:
    tool = data.get("tool")
    return tool.get("modelkeep") if isinstance(tool, dict) else None


def find_config(start: Path | None = None) -> Path | None:
    """The settings file that applies in *start* (default: the working folder), or None."""
    explicit = os.environ.get("MODELKEEP_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"MODELKEEP_CONFIG names {explicit!r}, which is not a file",
                              hint="point it at a modelkeep.toml or pyproject.toml")
        return path.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
        candidate = folder / PYPROJECT
        if candidate.is_file() and _tool_table(_read_toml(candidate)) is not None:
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


def _env_options() -> dict[str, Any]:
    env_opts = os.environ.get("MODELKEEP_STORE_OPTIONS")
    if not env_opts:
        return {}
    try:
        parsed = json.loads(env_opts)
        if not isinstance(parsed, dict):
            raise ValueError
    except ValueError:
        raise ConfigError(
            "MODELKEEP_STORE_OPTIONS is not a JSON object", hint='e.g. {"anon": false}'
        ) from None
    return parsed


def _with_env_options(options: dict[str, Any]) -> dict[str, Any]:
    return {**options, **_env_options()}


def _validate(data: dict[str, Any], file: Path, prefix: str) -> None:
    """Check the file's shape; every message names the key (as written in the file) and file."""

    def q(key: str) -> str:
        return repr(prefix + key)

    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"unknown key {q(sorted(unknown)[0])} in {file}",
                          hint=f"known keys: {', '.join(sorted(_KNOWN_KEYS))}")
    for key in ("store", "registry", "default_store"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{q(key)} in {file} must be a string")
    for key in ("store_options", "stores", "policies", "auth"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{q(key)} in {file} must be a table")
    if "store" in data and "default_store" in data:
        raise ConfigError(f"both {q('store')} and {q('default_store')} are set in {file}",
                          hint="name the default store with one of them")
    stores = data.get("stores", {})
    for name, table in stores.items():
        key = f"stores.{name}"
        if not _STORE_NAME.match(name):
            raise ConfigError(f"store name {q(key)} in {file} is not valid",
                              hint="use letters, digits, '-' and '_' (at most 64)")
        if not isinstance(table, dict):
            raise ConfigError(f"{q(key)} in {file} must be a table",
                              hint=f'e.g. [stores.{name}] url = "s3://bucket/prefix"')
        extra = set(table) - _STORE_KEYS
        if extra:
            raise ConfigError(f"unknown key {q(key + '.' + sorted(extra)[0])} in {file}",
                              hint="a store has 'url' and an 'options' table")
        if not isinstance(table.get("url"), str) or not table["url"]:
            raise ConfigError(f"{q(key + '.url')} in {file} must be a non-empty string")
        if not isinstance(table.get("options", {}), dict):
            raise ConfigError(f"{q(key + '.options')} in {file} must be a table")
    default = data.get("default_store")
    if default is not None and default not in stores:
        known = ", ".join(sorted(stores)) or "none"
        raise ConfigError(f"{q('default_store')} in {file} names {default!r}, which is not "
                          f"a configured store", hint=f"named stores: {known}")


def load_config(start: Path | None = None) -> Config:
    file = find_config(start)
    root = file.parent if file else (start or Path.cwd()).resolve()
    data: dict[str, Any] = {}
    if file is not None:
        raw = _read_toml(file)
        prefix = ""
        if file.name == PYPROJECT:
            raw = _tool_table(raw)
            prefix = "tool.modelkeep."
            if not isinstance(raw, dict):
                raise ConfigError(f"'tool.modelkeep' in {file} must be a table")
        data = raw
        _validate(data, file, prefix)
        # Policies are checked here too, so a bad rule fails every command, not only the ones
        # that apply it; modelkeep.policy owns their rules.
        from modelkeep.policy.rules import parse_policies

        parse_policies(data.get("policies", {}), file=file, prefix=prefix,
                       stores=data.get("stores", {}).keys())
        check_auth_table(data.get("auth", {}), file=file, prefix=prefix)
    sources: dict[str, str] = {}

    stores = {
        name: StoreConfig(name, _resolve_store(t["url"], root), dict(t.get("options", {})))
        for name, t in data.get("stores", {}).items()
    }
    # The default store: a named one, or an unnamed URL with the top-level store_options.
    store_name: str | None = data.get("default_store")
    if data.get("store") in stores:  # a store's name, looked up first as on the command line
        store_name = data["store"]
    store = _resolve_store(data.get("store", DEFAULT_STORE), root)
    if "store" in data or store_name:
        sources["store"] = "file"
    env_store = os.environ.get("MODELKEEP_STORE")
    if env_store:
        sources["store"] = "env MODELKEEP_STORE"
        store_name = env_store if env_store in stores else None
        store = _resolve_store(env_store, Path.cwd())
    if store_name is not None:
        store, options = stores[store_name].url, dict(stores[store_name].options)
    else:
        options = dict(data.get("store_options", {}))
    options = _with_env_options(options)

    registry = None
    for var in ("MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        if os.environ.get(var):
            registry, sources["registry"] = os.environ[var], f"env {var}"
            break
    else:
        if data.get("registry"):
            registry, sources["registry"] = data["registry"], "file"
    return Config(
        root=root,
        store=store,
        registry=_resolve_sqlite(registry, root) if registry else None,
        store_options=options,
        file=file,
        store_name=store_name,
        stores=stores,
        policies=dict(data.get("policies", {})),
        auth=dict(data.get("auth", {})),
        sources=sources,
    )


def write_config(
    folder: Path, *, store: str | None, registry: str | None, key_file: str | None = None
) -> Path:
    """Write a new ``modelkeep.toml`` in *folder* (refuses to overwrite one). *key_file* is
    recorded in ``[store_options]`` (a path, never a key)."""
    path = folder / CONFIG_NAME
    if path.exists():
        raise ConfigError(f"{path} already exists", hint="edit it, or remove it first")
    lines = ["# modelkeep settings; see `modelkeep --help`", ""]
    lines.append(f"store = {json.dumps(store or DEFAULT_STORE)}")
    lines.append(f"registry = {json.dumps(registry or 'sqlite:///mlflow.db')}")
    if key_file is not None:
        lines += ["", "[store_options]", f"key_file = {json.dumps(key_file)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# The [auth] table (sign-in): its keys and checks. modelkeep.auth.settings resolves it, with
# the MODELKEEP_AUTH_* variables over it, into the identity modelkeep signs in as.
AUTH_KEYS = ("issuer", "client_id", "scopes", "audience", "audience_parameter",
             "client_secret_file", "metadata_url")
# How the audience is asked for: RFC 8707's ``resource`` (oidc-provider, Entra v1, PingFederate),
# or ``audience`` (Auth0, Okta's custom authorization servers ignore it).
AUDIENCE_PARAMETERS = ("resource", "audience")
SECRET_ENV = "MODELKEEP_AUTH_CLIENT_SECRET"


def auth_scopes(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(s for v in value for s in v.split())
    raise ConfigError(f"{where} must be a list of strings or one space-separated string")


def check_auth_table(table: Any, *, file: Path | None, prefix: str = "") -> None:
    """Refuse an ``[auth]`` table that cannot be used, naming the key and the file."""
    where = f" in {file}" if file else ""
    if not isinstance(table, dict):
        raise ConfigError(f"'{prefix}auth'{where} must be a table")
    if "client_secret" in table:
        raise ConfigError(
            f"'{prefix}auth.client_secret'{where}: a client secret does not belong in a settings "
            "file (it would be committed with the project)",
            hint=f"set {SECRET_ENV}, or name a file with client_secret_file")
    unknown = sorted(set(table) - set(AUTH_KEYS))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}auth.{unknown[0]}'{where}",
                          hint=f"known keys: {', '.join(AUTH_KEYS)}")
    for key in ("issuer", "client_id", "audience", "audience_parameter", "client_secret_file",
                "metadata_url"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise ConfigError(f"'{prefix}auth.{key}'{where} must be a non-empty string")
    if table.get("audience_parameter", "resource") not in AUDIENCE_PARAMETERS:
        raise ConfigError(f"'{prefix}auth.audience_parameter'{where} must be one of "
                          f"{', '.join(AUDIENCE_PARAMETERS)}")
    if "scopes" in table:
        auth_scopes(table["scopes"], f"'{prefix}auth.scopes'{where}")
    issuer = table.get("issuer")
    if isinstance(issuer, str) and not issuer.startswith(("https://", "http://")):
        raise ConfigError(f"'{prefix}auth.issuer'{where} must be an http(s) URL",
                          hint="the provider's issuer, e.g. https://login.example.com/realms/ml")
    metadata_url = table.get("metadata_url")
    if isinstance(metadata_url, str) and not metadata_url.startswith(("https://", "http://")):
        raise ConfigError(f"'{prefix}auth.metadata_url'{where} must be an http(s) URL",
                          hint="the provider's metadata document, ending in "
                          "/.well-known/openid-configuration")
