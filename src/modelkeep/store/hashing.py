"""Content ids: BLAKE3-256, lowercase hex.

One function decides what an id is, so a keyed variant (for encrypted stores) can replace it
without touching callers.
"""

from __future__ import annotations

import re

from blake3 import blake3

ID_HEX_LEN = 64
_ID = re.compile(r"^[0-9a-f]{64}$")

# blake3 releases the GIL and can use several threads on large inputs; below this size the
# thread start-up costs more than it saves.
_MULTITHREAD_MIN = 1 << 20


def content_id(data: bytes | bytearray | memoryview) -> str:
    """Return the id of *data*: its BLAKE3-256 digest as 64 lowercase hex characters."""
    if len(data) >= _MULTITHREAD_MIN:
        return blake3(data, max_threads=blake3.AUTO).hexdigest()
    return blake3(data).hexdigest()


def is_id(text: object) -> bool:
    """True if *text* has the shape of a content id."""
    return isinstance(text, str) and _ID.match(text) is not None


def new_hasher() -> blake3:
    """An incremental hasher whose ``hexdigest()`` matches :func:`content_id` of the same bytes."""
    return blake3(max_threads=blake3.AUTO)
