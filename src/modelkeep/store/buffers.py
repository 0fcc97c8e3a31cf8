"""A bounded set of reusable chunk buffers.

Allocating a fresh 4 MiB buffer per chunk costs a page fault per 4 KiB page, about a sixth of the
time of reading the bytes; a pool avoids it. The pool is also the memory bound of a transfer:
taking a buffer blocks while every buffer is in flight. Buffers are created on first need, so a
small model never pays for the whole pool.
"""

from __future__ import annotations

import queue
import threading

from modelkeep.store.chunking import MAX_CHUNK
from modelkeep.store.codec import TAG_SIZE

# Room after the largest chunk for an AES-GCM tag, so an encrypted store seals a chunk in the
# buffer it was read into instead of copying it to another (docs/encryption.md).
BUFFER_SIZE = MAX_CHUNK + TAG_SIZE


class BufferPool:
    def __init__(self, count: int, size: int = BUFFER_SIZE) -> None:
        self.size = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._unmade = count
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._unmade > 0:
                self._unmade -= 1
                return bytearray(self.size)
        return self._free.get()

    def give(self, buf: bytearray) -> None:
        self._free.put(buf)
