"""Store locations: from a URL (and storage options) to an fsspec filesystem and a root path.

A location has a canonical *locator*, ``PROTOCOL/PATH`` (``file/abs/path``, ``s3/bucket/prefix``,
``az/container/prefix``, ``memory/name``), which is what ``modelkeep://`` URIs embed so that any
machine with the plugin and credentials can find the same store. Storage options (endpoints,
credentials) never appear in a locator: they come from configuration or the environment.

This module also turns backend exceptions into modelkeep errors, because each backend reports
"no such endpoint" and "access denied" in its own way, and wraps every remote filesystem in the
store's retry policy (:mod:`modelkeep.store.retry`; the ``retry`` table of the store's options).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from modelkeep.errors import (
    STORE,
    CredentialsError,
    Hint,
    MissingExtraError,
    ModelkeepError,
    StoreError,
    StoreFullError,
    StoreUnreachableError,
)
from modelkeep.store.retry import (
    RetryingFileSystem,
    RetryPolicy,
    configure_filesystem,
    configure_sdk,
)

if TYPE_CHECKING:
    import fsspec

# Protocol aliases folded to one canonical name so that the same store has one locator.
_CANONICAL = {"file": "file", "local": "file", "s3": "s3", "s3a": "s3", "memory": "memory",
              "az": "az", "abfs": "az", "abfss": "az", "gs": "gs", "gcs": "gs"}
_EXTRA_FOR = {"s3": ("s3fs", "s3"), "az": ("adlfs", "azure"), "gs": ("gcsfs", "all")}


@dataclass(frozen=True)
class Location:
    """Where a store lives: protocol, root path inside the filesystem, and storage options."""

    protocol: str
    root: str
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def locator(self) -> str:
        """``PROTOCOL/PATH`` with no leading slash on the path: the URI-embeddable name."""
        return f"{self.protocol}/{self.root.lstrip('/')}"

    @property
    def url(self) -> str:
        if self.protocol == "file":
            return self.root
        return f"{self.protocol}://{self.root}"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """Instantiate the fsspec filesystem (cached by fsspec per options)."""
        import fsspec  # here: naming a location (a version's URI) needs no filesystem

        options = dict(self.options)
        policy = RetryPolicy.from_options(options.pop("retry", None))
        configure_sdk(self.protocol, options, policy)
        if self.protocol == "memory":
            options.pop("skip_instance_cache", None)
        if self.protocol == "az":
            quiet_azure_identity()
        with translate_errors(self):
            try:
                fs = fsspec.filesystem(self.protocol, **options)
                if self.protocol in ("file", "memory"):
                    return fs
                configure_filesystem(self.protocol, fs, policy)
                # Typed as the filesystem it forwards to: every attribute is the wrapped one's.
                return cast(fsspec.AbstractFileSystem, RetryingFileSystem(fs, self.url, policy))
            except ImportError as exc:
                package, extra = _EXTRA_FOR.get(self.protocol, (str(exc.name), "all"))
                raise MissingExtraError(package, extra) from exc
            except ValueError as exc:
                if "Protocol not known" in str(exc):
                    raise StoreError(
                        f"unsupported store protocol {self.protocol!r}",
                        hint="use a local path, memory://, s3:// or az://",
                    ) from exc
                raise


def quiet_azure_identity() -> None:
    """adlfs falls back to azure-identity's DefaultAzureCredential for a store without keys,
    and a failed one logs a dozen-line WARNING before raising the error that says the same (and
    that a refused store reports in one line): that logger is set to ERROR unless the
    application chose its level."""
    logger = logging.getLogger("azure.identity")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


def parse_location(url: str, options: Mapping[str, Any] | None = None) -> Location:
    """Parse a store URL (``/path``, ``file:///path``, ``s3://bucket/prefix``, ``az://c/p``,
    ``memory://name``) into a :class:`Location`. Relative local paths become absolute."""
    if not url:
        raise StoreError("empty store URL",
                         hint=Hint("pass {store} or set `store` in modelkeep.toml", store=STORE))
    protocol, sep, rest = url.partition("://")
    if not sep:
        protocol, rest = "file", url
    protocol = _CANONICAL.get(protocol.lower(), protocol.lower())
    if "@" in rest:
        # '@' introduces the snapshot id in modelkeep:// URIs; a store path cannot contain it.
        raise StoreError(f"store URL {url!r} contains '@'", hint="choose a path without '@'")
    if protocol == "file":
        root = os.path.abspath(os.path.expanduser(rest))
    else:
        root = rest.strip("/")
        if protocol == "memory":
            root = "/" + root
        if not root.strip("/"):
            raise StoreError(
                f"store URL {url!r} names no bucket or container",
                hint=f"use {protocol}://BUCKET[/PREFIX]",
            )
    return Location(protocol, root, dict(options or {}))


def location_from_locator(locator: str, options: Mapping[str, Any] | None = None) -> Location:
    """Inverse of :attr:`Location.locator`."""
    protocol, _, path = locator.partition("/")
    if protocol == "file" or protocol == "memory":
        return Location(protocol, "/" + path, dict(options or {}))
    return Location(protocol, path, dict(options or {}))


_UNREACHABLE_MARKERS = (
    "could not connect",
    "connection refused",
    "connect timeout",
    "name or service not known",
    "failed to establish",
    "cannot connect to host",
    "max retries exceeded",
    "temporary failure in name resolution",
    "endpointconnectionerror",
    "serviceRequestError".lower(),
)
_CREDENTIAL_MARKERS = (
    "unable to locate credentials",
    "nocredentialserror",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "accessdenied",
    "access denied",
    "authenticationfailed",
    "authorizationfailure",
    "credential",
    "forbidden",
)


_WRITE_REFUSED = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
}


def classify(exc: BaseException, location: Location) -> ModelkeepError | None:
    """Map a backend exception to a modelkeep error, or None when it is not recognised."""
    if isinstance(exc, ModelkeepError):
        return exc
    text = f"{type(exc).__name__}: {exc}".lower()
    where = location.url
    if isinstance(exc, OSError) and exc.errno in _WRITE_REFUSED:
        return StoreFullError(f"store {where}: {_WRITE_REFUSED[exc.errno]} while writing to it")
    if isinstance(exc, PermissionError) or any(m in text for m in _CREDENTIAL_MARKERS):
        return _refused(exc, location)
    if isinstance(exc, (ConnectionError, TimeoutError)) or any(
        m in text for m in _UNREACHABLE_MARKERS
    ):
        return StoreUnreachableError(f"store {where} is unreachable")
    return None


# Azure's one-line reason for a refused request ("Invalid token audience.", "Signature did not
# match ..." is cut at its first sentence: the rest quotes the string it signed).
_AZURE_DETAIL = re.compile(r"authenticationerrordetail:\s*([^\n]{1,200}?\.)(?:\s|$)", re.IGNORECASE)


def _refused(exc: BaseException, location: Location) -> CredentialsError:
    """The credentials error: with the server's reason when it gave one, and, for a store
    signed in with an identity (a credential object that says ``who`` it is), who was refused
    and what that identity needs."""
    found = _AZURE_DETAIL.search(str(exc))
    detail = f" ({found.group(1)})" if found else ""
    # adlfs's credential=, or s3fs's session= of a web identity (modelkeep.auth.s3).
    credential = location.options.get("credential") or location.options.get("session")
    who = getattr(credential, "who", None)
    if isinstance(who, str):
        return CredentialsError(
            f"access to store {location.url} was refused for {who}{detail}",
            hint=str(getattr(credential, "refusal_hint", "") or "") or None)
    return CredentialsError(f"access to store {location.url} was refused or has no "
                            f"credentials{detail}", hint=_CREDENTIAL_HINTS.get(location.protocol))


# Where each backend looks for credentials, as its library reads them (botocore, adlfs); a
# backend not named here gets the error class's hint, which names both.
_CREDENTIAL_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE in the environment, the "
          "store's options in modelkeep.toml, or its `identity` option",
    "az": "set AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_NAME and "
          "AZURE_STORAGE_ACCOUNT_KEY) in the environment, the store's options in modelkeep.toml, "
          "or its `identity` option",
}


@contextmanager
def translate_errors(location: Location) -> Iterator[None]:
    """Re-raise recognised backend failures as modelkeep errors; leave the rest untouched."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
        raise
    except Exception as exc:
        mapped = classify(exc, location)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc
