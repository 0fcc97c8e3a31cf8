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
_running: list[threading.Thread] = []


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
        if not _tasks:
            return
        thread = threading.Thread(target=_run, args=(_tasks[:],), name="modelkeep-meanwhile",
                                  daemon=True)
        _tasks.clear()
        # Threads that ended are dropped: a long-lived process waits many times.
        _running[:] = [t for t in _running if t.is_alive()]
        _running.append(thread)
        thread.start()


def finished(timeout: float = 10.0) -> None:
    """Wait for the work :func:`now_waiting` started. A caller about to import what that work
    imports calls it first: two threads importing the same modules at once can meet in a
    circular import, where Python hands one of them a module not yet initialized."""
    for thread in list(_running):
        if thread is not threading.current_thread():
            thread.join(timeout)


def _run(tasks: list[Callable[[], object]]) -> None:
    for task in tasks:
        with contextlib.suppress(Exception):  # see meanwhile()
            task()
