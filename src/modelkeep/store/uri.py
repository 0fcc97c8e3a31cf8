"""Version URIs (``modelkeep://LOCATOR/@SNAPSHOT-ID[/FILE]``) and run-artifact URIs, parsed
without the store itself: a command that only reads the registry parses its versions' sources
without importing fsspec and the object layer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from modelkeep.errors import InvalidInputError
from modelkeep.store.snapshot import CREATED_FORMAT

SCHEME = "modelkeep"
MAX_URI = 500
# A URI may name its snapshot by a unique prefix of its id (SHORT_ID_MIN hex digits or more),
# as `modelkeep show` and `log` print it; Store.resolve_snapshot_id turns it into the full id.
SHORT_ID_MIN = 8
_URI = re.compile(r"^modelkeep://(?P<locator>[^@]+?)/@(?P<sid>[0-9a-f]{8,64})(?:/(?P<path>.*))?$")
_RUNS_URI = re.compile(r"^modelkeep://(?P<locator>[^@]+?)/@runs(?:/(?P<prefix>.*))?$")


@dataclass(frozen=True)
class ParsedURI:
    locator: str
    snapshot_id: str
    path: str | None


def parse_uri(uri: str) -> ParsedURI:
    match = _URI.match(uri or "")
    if not match:
        raise InvalidInputError(
            f"not a modelkeep URI: {uri!r}",
            hint="expected modelkeep://PROTOCOL/STORE-PATH/@SNAPSHOT-ID[/FILE]",
        )
    path = (match.group("path") or "").strip("/")
    return ParsedURI(match.group("locator"), match.group("sid"), path or None)


def parse_runs_uri(uri: str) -> tuple[str, str] | None:
    """``(locator, run prefix)`` of a run-artifact URI ``modelkeep://LOCATOR/@runs[/PREFIX]``,
    or None if *uri* is not one."""
    match = _RUNS_URI.match(uri or "")
    if not match:
        return None
    return match.group("locator"), (match.group("prefix") or "").strip("/")


def utc_now() -> str:
    return datetime.now(UTC).strftime(CREATED_FORMAT)
