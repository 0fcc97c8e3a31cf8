"""Stores signed in with an identity rather than a static key: the store option ``identity``
(a table), read here and replaced by what the store's filesystem takes before fsspec sees it.

:func:`storage_options` is the one place that knows which protocol takes which kind of identity;
the protocols' own modules (:mod:`modelkeep.auth.azure`, :mod:`modelkeep.auth.s3`) make the
credentials. Options without
``identity`` pass through unchanged, so stores with keys (or none) cost nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelkeep.errors import ConfigError, MissingExtraError

IDENTITY_OPTION = "identity"


def storage_options(protocol: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """*options* for a store on *protocol*, with an ``identity`` table turned into the
    filesystem's credential options."""
    if IDENTITY_OPTION not in options:
        return dict(options)
    rest = dict(options)
    identity = rest.pop(IDENTITY_OPTION)
    if protocol == "az":
        from modelkeep.auth import azure

        return azure.storage_options(rest, identity)
    if protocol == "s3":
        try:
            from modelkeep.auth import s3
        except ImportError as exc:
            raise MissingExtraError("s3fs", "s3") from exc
        return s3.storage_options(rest, identity)
    raise ConfigError(f"the store option '{IDENTITY_OPTION}' is not supported for {protocol}:// "
                      "stores", hint="sign-in identities are for Azure Blob (az://) and S3 "
                      "(s3://) stores; give this store its own credentials")
