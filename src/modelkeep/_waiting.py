"""Work a command does while it waits for a server's answer.

A read command against an MLflow server spends tens of milliseconds blocked on the answer, with
the processor idle, and then needs rich (about 25 ms to import) to print what came back. The
command names such work with :func:`meanwhile`; the HTTP client calls :func:`now_waiting` when it
has sent a request and is about to block, and the work runs then, once, in a daemon thread.
Started any earlier, it would compete with the command's own start-up for the interpreter lock.
A leaf: it imports nothing of modelkeep.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

_tasks: list[Callable[[], object]] = []
_lock = threading.Lock()


def meanwhile(task: Callable[[], object]) -> None:
    """Run *task* the next time this process waits for a server (in a daemon thread; its
    failure is ignored: whoever needs its result does the work again and meets the error)."""
    with _lock:
        _tasks.append(task)


def now_waiting() -> None:
    """Start the pending tasks: the caller has sent a request and is about to block."""
    if not _tasks:
        return
    with _lock:
        tasks = _tasks[:]
        _tasks.clear()
    if tasks:
        threading.Thread(target=_run, args=(tasks,), name="modelkeep-meanwhile",
                         daemon=True).start()


def _run(tasks: list[Callable[[], object]]) -> None:
    for task in tasks:
        with contextlib.suppress(Exception):  # see meanwhile()
            task()
