"""Stores reached with the sign-in's identity: the store option ``identity`` (a table), turned
into what the store's filesystem signs in with, per backend.

- ``s3``: an IAM role assumed with the sign-in's token (STS ``AssumeRoleWithWebIdentity``),
  :mod:`modelkeep.auth.s3`.

A store's options without ``identity`` pass unchanged; on any other backend the option is
refused in one line. The option never reaches the filesystem. The sign-in settings are asked for
only when a store has an identity (*sign_in*: ``[auth]`` of ``modelkeep.toml`` and
``MODELKEEP_AUTH_*``, resolved by the caller, which knows where the settings file is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from modelkeep.errors import ConfigError, MissingExtraError

if TYPE_CHECKING:
    from modelkeep.auth.settings import AuthSettings

IDENTITY_OPTION = "identity"


def storage_options(protocol: str, options: Mapping[str, Any], *,
                    sign_in: Callable[[], AuthSettings | None]) -> dict[str, Any]:
    """*options* for the filesystem of a *protocol* store: unchanged without ``identity``,
    else with the credentials of the identity it names in its place."""
    if IDENTITY_OPTION not in options:
        return dict(options)
    rest = dict(options)
    table = rest.pop(IDENTITY_OPTION)
    if not isinstance(table, Mapping):
        raise ConfigError("the store option 'identity' must be a table",
                          hint='e.g. identity = { role_arn = "arn:aws:iam::…:role/…" } '
                               "for an s3:// store")
    if protocol == "s3":
        try:
            from modelkeep.auth import s3
        except ImportError as exc:
            raise MissingExtraError("s3fs", "s3") from exc
        return s3.storage_options(rest, table, sign_in)
    raise ConfigError(f"the store option 'identity' is not supported for {protocol}:// stores",
                      hint="remove it, and give the store's credentials in its options or the "
                           "environment")
