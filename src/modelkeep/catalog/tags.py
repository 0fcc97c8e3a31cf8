"""The registry tag schema (docs/format.md §10): the one place that says which ``modelkeep.``
tags a version carries and how user tags and lineage are checked and mirrored.

Register, promote and a registry rebuild all call :func:`version_tags`, so a rebuilt version
carries the same tags as the one it replaces.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelkeep.errors import InvalidInputError

if TYPE_CHECKING:
    from modelkeep.store import Parent, Snapshot

TAG_PREFIX = "modelkeep."
MAX_TAG_VALUE = 100_000  # MLflow's limit for model-version tag values
LINEAGE_TAG_MAX = 5000  # the smallest tag-value limit among MLflow's database schemas
# Reserved tags a plugin may set from modelkeep_collect_metadata (the key and its dotted
# children): the scan summary (modelkeep.plugins.scanner). Every other ``modelkeep.`` key is
# modelkeep's own.
PLUGIN_TAG_PREFIXES = ("modelkeep.scan",)

SNAPSHOT = TAG_PREFIX + "snapshot"
TREE = TAG_PREFIX + "tree"
BYTES_ADDED = TAG_PREFIX + "bytes_added"
BYTES_STORED = TAG_PREFIX + "bytes_stored"
RUN_ID = TAG_PREFIX + "run_id"


def version_tags(
    snapshot: Snapshot,
    sid: str,
    *,
    bytes_added: int,
    bytes_stored: int | None = None,
    parents: Sequence[Parent | str] | None = None,
    run_id: str | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The registry tags of the version whose snapshot is *snapshot* (id *sid*): *base* (default:
    the snapshot's user tags), then the figures, parents, lineage and run link.

    *parents* default to the snapshot's own; *bytes_added* is what storing it added (0 for a
    promotion, recomputed from the store by a rebuild), *bytes_stored* what those chunks take
    in the store once coded (headers included), and ``stored_ratio`` that over the size: what
    the version cost, a fraction of its size where codecs and parent deltas worked.
    """
    size = snapshot.size
    tags = {
        **(snapshot.tags if base is None else base),
        SNAPSHOT: sid,
        TREE: snapshot.tree,
        TAG_PREFIX + "size": str(size),
        BYTES_ADDED: str(bytes_added),
        TAG_PREFIX + "dedup_ratio": f"{1.0 - bytes_added / size if size else 1.0:.4f}",
        TAG_PREFIX + "files": str(len(snapshot.files)),
        **lineage_tags(snapshot.lineage),
    }
    if bytes_stored is not None:
        tags[BYTES_STORED] = str(bytes_stored)
        tags[TAG_PREFIX + "stored_ratio"] = f"{bytes_stored / size if size else 0.0:.4f}"
    named = snapshot.parents if parents is None else parents
    if named:
        tags[TAG_PREFIX + "parents"] = ",".join(str(p) for p in named)
    if run_id:
        tags[RUN_ID] = run_id
    return tags


def check_tags(tags: Mapping[str, str], *, reserved: bool = False) -> dict[str, str]:
    """User tags as the registry will hold them; refuses bad keys, ``modelkeep.`` keys (unless
    *reserved*) and values over MLflow's limit."""
    out = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > 250:
            raise InvalidInputError(f"invalid tag key {key!r}", hint="use 1-250 characters")
        if key.startswith(TAG_PREFIX) and not reserved:
            raise InvalidInputError(
                f"tag key {key!r} is reserved", hint=f"keys starting {TAG_PREFIX!r} are modelkeep's"
            )
        value = str(value)
        if len(value) > MAX_TAG_VALUE:
            raise InvalidInputError(f"tag {key!r} is longer than {MAX_TAG_VALUE} characters")
        out[key] = value
    return out


def plugin_tags(collected: Mapping[str, str], user: Mapping[str, str]) -> dict[str, str]:
    """Tags plugins suggested (*collected*) under the caller's own (*user*), which win; of the
    ``modelkeep.`` keys only :data:`PLUGIN_TAG_PREFIXES` are accepted from plugins, and there
    the plugins' answer wins (a promoted snapshot carries the source's scan summary, which the
    new scan replaces)."""
    def split(tags: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        reserved = {k: v for k, v in tags.items() if isinstance(k, str) and any(
            k == p or k.startswith(p + ".") for p in PLUGIN_TAG_PREFIXES)}
        return {k: v for k, v in tags.items() if k not in reserved}, reserved

    plain, reserved = split(collected)
    user_plain, user_reserved = split(user)
    return {**check_tags({**plain, **user_plain}),
            **check_tags({**user_reserved, **reserved}, reserved=True)}


def check_lineage(lineage: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse lineage a snapshot cannot hold: non-string keys, floats, non-JSON values."""

    def check(value: Any, where: str) -> None:
        if value is None or isinstance(value, str | bool | int):
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise InvalidInputError(f"lineage key {k!r} at {where} is not a string")
                check(v, f"{where}.{k}")
            return
        if isinstance(value, list | tuple):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
            return
        raise InvalidInputError(
            f"lineage value at {where} is a {type(value).__name__}",
            hint="lineage holds JSON strings, integers, booleans, lists and objects; "
                 "write other numbers as strings",
        )

    out = {}
    for section, value in lineage.items():
        check(value, str(section))
        out[str(section)] = value
    return out


def lineage_tags(lineage: Mapping[str, Any]) -> dict[str, str]:
    """Registry tags mirroring the lineage: ``modelkeep.<section>.<key>`` for each member of
    each section, scalars as text and the rest as compact JSON, left out when longer than
    :data:`LINEAGE_TAG_MAX` (the snapshot holds everything)."""
    tags = {}
    for section, value in lineage.items():
        if not isinstance(value, Mapping):
            continue
        for key, item in value.items():
            if item is None:
                continue
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, str | int):
                text = str(item)
            else:
                text = json.dumps(item, sort_keys=True, separators=(",", ":"))
            if len(text) <= LINEAGE_TAG_MAX:
                tags[f"{TAG_PREFIX}{section}.{key}"] = text
    return tags
