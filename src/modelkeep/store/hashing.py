"""Content ids: BLAKE3-256, lowercase hex.

One function decides what an id is, so a keyed variant (for encrypted stores) can replace it
without touching callers.
"""

from __future__ import annotations

import re

from blake3 import blake3

ID_HEX_LEN = 64
_ID = re.compile(r"^[0-9a-f]{64}$")

# One thread per hash: callers already hash chunks on several threads at once (blake3 releases the
# GIL), and blake3's own multi-threading on top of that measured slower on 4 MiB chunks.


def content_id(data: bytes | bytearray | memoryview) -> str:
    """Return the id of *data*: its BLAKE3-256 digest as 64 lowercase hex characters."""
    return blake3(data).hexdigest()


def is_id(text: object) -> bool:
    """True if *text* has the shape of a content id."""
    return isinstance(text, str) and _ID.match(text) is not None


def new_hasher() -> blake3:
    """An incremental hasher whose ``hexdigest()`` matches :func:`content_id` of the same bytes."""
    return blake3()
