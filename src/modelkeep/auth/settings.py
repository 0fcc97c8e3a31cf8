"""Which OpenID provider and client modelkeep signs in with: the ``[auth]`` table and the
``MODELKEEP_AUTH_*`` environment variables (which win, key by key)::

    # modelkeep.toml
    [auth]
    issuer = "https://login.example.com/realms/ml"  # + /.well-known/openid-configuration
    client_id = "modelkeep-cli"
    scopes = ["openid", "offline_access"]          # or one space-separated string
    audience = "https://mlflow.example.com"         # the registry, as the provider names it
    audience_parameter = "resource"                # RFC 8707; "audience" for Auth0
    client_secret_file = "/run/secrets/mk-client"   # jobs only; or MODELKEEP_AUTH_CLIENT_SECRET
    # metadata_url = "https://login.microsoftonline.com/TENANT/.well-known/openid-configuration"

Environment: ``MODELKEEP_AUTH_ISSUER``, ``MODELKEEP_AUTH_CLIENT_ID``, ``MODELKEEP_AUTH_SCOPES``,
``MODELKEEP_AUTH_AUDIENCE``, ``MODELKEEP_AUTH_AUDIENCE_PARAMETER``,
``MODELKEEP_AUTH_CLIENT_SECRET``, ``MODELKEEP_AUTH_CLIENT_SECRET_FILE``,
``MODELKEEP_AUTH_METADATA_URL``.

``metadata_url`` is for a provider whose metadata is not at ``ISSUER/.well-known/...``: Entra
ID's v1 tokens (the ones Azure Storage takes) name ``https://sts.windows.net/TENANT/`` as their
issuer while its metadata is served under ``https://login.microsoftonline.com/TENANT/``. The
metadata's ``issuer`` must still be the configured issuer (RFC 8414).

With a client secret, modelkeep is a job: it gets its own tokens by the client-credentials grant.
Without one, it is a person: tokens come from ``modelkeep login`` (the device flow). A secret is
never read from the settings file itself (it would be committed with the project) nor from a
command-line argument (other users see those in the process list).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The table's keys and their checks live with the settings file's other rules (config.py,
# which checks every table when the file is read); resolving them into settings is here.
from modelkeep.config import (
    AUDIENCE_PARAMETERS,
    AUTH_KEYS,
    SECRET_ENV,
    auth_scopes,
    check_auth_table,
)
from modelkeep.errors import ConfigError

ENV_PREFIX = "MODELKEEP_AUTH_"
SECRET_FILE_ENV = "MODELKEEP_AUTH_CLIENT_SECRET_FILE"
CLIENT_CREDENTIALS = "client_credentials"
DEVICE = "device"


@dataclass(frozen=True)
class AuthSettings:
    """One identity at one provider. ``client_secret`` is left out of ``repr`` and
    :meth:`describe`."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    audience_parameter: str = "resource"
    client_secret: str | None = field(default=None, repr=False, compare=False)
    secret_from: str | None = None  # the variable or file the secret was read from
    source: str = "environment"  # where the settings came from, for messages
    metadata_url: str | None = None  # None: ISSUER/.well-known/openid-configuration

    @property
    def flow(self) -> str:
        """``client_credentials`` (a job, with a secret) or ``device`` (a person)."""
        return CLIENT_CREDENTIALS if self.client_secret else DEVICE

    @property
    def key(self) -> tuple[str, ...]:
        """What tells two identities apart within a process (the secret only by digest)."""
        digest = hashlib.sha256((self.client_secret or "").encode()).hexdigest()
        return (self.issuer, self.client_id, self.flow, " ".join(self.scopes),
                self.audience or "", digest)

    def describe(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "client_id": self.client_id, "flow": self.flow,
                "scopes": list(self.scopes), "audience": self.audience,
                "audience_parameter": self.audience_parameter,
                "client_secret_from": self.secret_from, "settings_from": self.source,
                "metadata_url": self.metadata_url}


def _read_secret_file(path: Path, named_by: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the client secret file {path} ({named_by}): "
                          f"{exc.strerror or exc}",
                          hint="check the path and its permissions") from None
    if not text:
        raise ConfigError(f"the client secret file {path} ({named_by}) is empty")
    return text


def resolve(table: Mapping[str, Any] | None, *, file: Path | None = None,
            root: Path | None = None) -> AuthSettings | None:
    """The settings in force: the ``[auth]`` *table* of *file* (paths relative to *root*) with
    the environment over it. None when no issuer is configured (no sign-in)."""
    table = dict(table or {})
    check_auth_table(table, file=file)
    env = os.environ
    source = str(file) if file is not None and table else "environment"
    values: dict[str, Any] = dict(table)
    for key in AUTH_KEYS:
        name = ENV_PREFIX + key.upper()
        if env.get(name):
            values[key] = env[name]
            if key == "issuer":
                source = f"env {name}"
    issuer = values.get("issuer")
    if not issuer:
        return None
    audience_parameter = str(values.get("audience_parameter") or "resource")
    if audience_parameter not in AUDIENCE_PARAMETERS:
        raise ConfigError(f"{ENV_PREFIX}AUDIENCE_PARAMETER must be one of "
                          f"{', '.join(AUDIENCE_PARAMETERS)}")
    if not str(issuer).startswith(("https://", "http://")):
        raise ConfigError(f"the OpenID issuer {issuer!r} is not an http(s) URL",
                          hint=f"set {ENV_PREFIX}ISSUER or [auth] issuer to the provider's issuer")
    client_id = values.get("client_id")
    if not client_id:
        raise ConfigError(f"sign-in to {issuer} needs a client id",
                          hint=f"set [auth] client_id in modelkeep.toml or {ENV_PREFIX}CLIENT_ID")
    secret, secret_from = None, None
    if env.get(SECRET_ENV):
        secret, secret_from = env[SECRET_ENV].strip(), SECRET_ENV
    elif values.get("client_secret_file"):
        raw = Path(os.path.expanduser(str(values["client_secret_file"])))
        named_by = SECRET_FILE_ENV if env.get(SECRET_FILE_ENV) else "[auth] client_secret_file"
        if not raw.is_absolute() and not env.get(SECRET_FILE_ENV) and root is not None:
            raw = root / raw
        secret, secret_from = _read_secret_file(raw, named_by), str(raw)
    return AuthSettings(
        issuer=str(issuer).rstrip("/"),
        client_id=str(client_id),
        scopes=auth_scopes(values.get("scopes", ()), "the scopes") if values.get("scopes") else (),
        audience=str(values["audience"]) if values.get("audience") else None,
        audience_parameter=audience_parameter,
        client_secret=secret,
        secret_from=secret_from,
        source=source,
        metadata_url=_metadata_url(values.get("metadata_url")),
    )


def _metadata_url(value: Any) -> str | None:
    if not value:
        return None
    if not str(value).startswith(("https://", "http://")):
        raise ConfigError(f"the provider metadata URL {value!r} is not an http(s) URL",
                          hint=f"set {ENV_PREFIX}METADATA_URL or [auth] metadata_url to the "
                          "provider's /.well-known/openid-configuration")
    return str(value)


def configured() -> AuthSettings | None:
    """The sign-in in force for this process: ``[auth]`` of the settings file found from the
    working folder, with the environment over it (None: no sign-in configured)."""
    from modelkeep.config import load_config

    config = load_config()
    return resolve(config.auth, file=config.file, root=config.root)
