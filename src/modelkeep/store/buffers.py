"""A fixed set of reusable chunk buffers.

Allocating a fresh 4 MiB buffer per chunk costs a page fault per 4 KiB page, about a sixth of the
time of reading the bytes; a pool avoids it. The pool is also the memory bound of a transfer:
taking a buffer blocks while every buffer is in flight.
"""

from __future__ import annotations

import queue

from modelkeep.store.chunking import MAX_CHUNK


class BufferPool:
    def __init__(self, count: int, size: int = MAX_CHUNK) -> None:
        self.size = size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(bytearray(size))

    def take(self) -> bytearray:
        return self._free.get()

    def give(self, buf: bytearray) -> None:
        self._free.put(buf)
