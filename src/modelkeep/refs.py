"""Model names, aliases and ``NAME@REF`` references.

A reference names one version: ``NAME@3`` (a version number), ``NAME@production`` (an alias),
``NAME@latest`` (the newest version) or ``NAME@9f2c41ab`` (the version of NAME whose snapshot id
starts with these 8 to 64 hex digits, as ``modelkeep show`` and ``log`` print it). A bare
``NAME`` means ``NAME@latest``. Up to 7 digits are a version number, 8 or more a snapshot id
prefix (no model has ten million versions); a hex prefix that is also a valid alias
(``deadbeef``) names the alias when NAME has one by that name, else the snapshot. Names follow a
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
SHORT_ID_MIN = 8  # hex digits of a snapshot id prefix (as modelkeep.store.store requires)
_SNAPSHOT_PREFIX = re.compile(r"^[0-9a-f]{8,64}$")

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
    """A parsed reference: at most one of ``version``, ``alias`` or ``snapshot`` is set (none
    for ``latest``), except that a hex prefix which is also a valid alias sets both ``alias``
    and ``snapshot``: the alias is looked up first."""

    name: str
    version: int | None = None
    alias: str | None = None
    snapshot: str | None = None  # a prefix (8 to 64 hex digits) of the version's snapshot id

    @property
    def is_latest(self) -> bool:
        return self.version is None and self.alias is None and self.snapshot is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias or self.snapshot or LATEST}"


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
    if rest.isdigit() and len(rest) < SHORT_ID_MIN:
        version = int(rest)
        if version < 1:
            raise InvalidRefError(f"invalid version in {text!r}", hint="versions start at 1")
        return Ref(name, version=version)
    if rest.startswith("v") and rest[1:].isdigit():
        return Ref(name, version=int(rest[1:]))
    if _SNAPSHOT_PREFIX.match(rest):
        is_alias = bool(_ALIAS.match(rest))
        return Ref(name, alias=rest if is_alias else None, snapshot=rest)
    try:
        validate_alias(rest)
    except InvalidNameError:
        raise InvalidRefError(
            f"invalid reference {text!r}", hint="use NAME@VERSION, NAME@ALIAS or NAME@latest"
        ) from None
    return Ref(name, alias=rest)
