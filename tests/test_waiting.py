"""modelkeep._waiting: work queued with ``meanwhile`` runs once, in its own thread, when a
client says it is waiting; a failing task does not stop the others or reach the caller."""

from __future__ import annotations

import threading

from modelkeep import _waiting


def test_queued_work_runs_once_in_its_own_thread_when_a_client_waits() -> None:
    ran: list[str] = []
    done = threading.Event()

    def fails() -> None:
        raise RuntimeError("ignored")

    _waiting.meanwhile(lambda: ran.append(threading.current_thread().name))
    _waiting.meanwhile(fails)
    _waiting.meanwhile(done.set)
    assert ran == []  # queued, not run
    _waiting.now_waiting()
    assert done.wait(10)
    assert ran == ["modelkeep-meanwhile"]
    _waiting.now_waiting()  # nothing queued: nothing runs again
    assert ran == ["modelkeep-meanwhile"]
