"""Model names, aliases and ``NAME@REF`` references.

A reference names one version: ``NAME@3`` (a version number), ``NAME@production`` (an alias) or
``NAME@latest`` (the newest version). A bare ``NAME`` means ``NAME@latest``. Names follow a
conservative subset of what MLflow accepts so they are also safe in ``models:/`` URIs and paths;
aliases follow MLflow's rule (``^[\\w-]*$``, with ``latest`` and ``v<digits>`` reserved).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelkeep.errors import InvalidNameError, InvalidRefError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_ALIAS = re.compile(r"^[A-Za-z_][\w-]{0,254}$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)

LATEST = "latest"


def validate_name(name: str) -> str:
    """Return *name* if it is a valid model name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidNameError(
            f"invalid model name {name!r}",
            hint="use 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def validate_alias(alias: str) -> str:
    """Return *alias* if MLflow would accept it as an alias, else raise."""
    if not isinstance(alias, str) or not _ALIAS.match(alias) or _RESERVED_ALIAS.match(alias):
        raise InvalidNameError(
            f"invalid alias {alias!r}",
            hint="use letters, digits, '_' or '-', starting with a letter; "
            "'latest' and 'v<number>' are reserved",
        )
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` or ``alias`` is set (``latest`` is an alias
    slot value of ``None`` with ``version`` ``None``)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def is_latest(self) -> bool:
        return self.version is None and self.alias is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias or LATEST}"


def parse_ref(text: str) -> Ref:
    """Parse ``NAME``, ``NAME@3``, ``NAME@alias`` or ``NAME@latest``."""
    if not isinstance(text, str) or not text:
        raise InvalidRefError(f"invalid reference {text!r}", hint="use NAME@VERSION or NAME@ALIAS")
    name, sep, rest = text.partition("@")
    try:
        validate_name(name)
    except InvalidNameError as exc:
        raise InvalidRefError(
            f"invalid reference {text!r}: {exc.message}", hint="use NAME@VERSION or NAME@ALIAS"
        ) from None
    if not sep or rest.lower() == LATEST:
        return Ref(name)
    if rest.isdigit():
        version = int(rest)
        if version < 1:
            raise InvalidRefError(f"invalid version in {text!r}", hint="versions start at 1")
        return Ref(name, version=version)
    if rest.startswith("v") and rest[1:].isdigit():
        return Ref(name, version=int(rest[1:]))
    try:
        validate_alias(rest)
    except InvalidNameError:
        raise InvalidRefError(
            f"invalid reference {text!r}", hint="use NAME@VERSION, NAME@ALIAS or NAME@latest"
        ) from None
    return Ref(name, alias=rest)
