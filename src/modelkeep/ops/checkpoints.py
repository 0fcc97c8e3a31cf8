"""Checkpoints registered in the background (:class:`modelkeep.training.Tracker`), one tracker
per model name per Keep."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.training import PendingCheckpoint


def checkpoint(
    keep: Keep,
    name: str,
    path: str | os.PathLike[str],
    *,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> PendingCheckpoint:
    """Register the checkpoint at *path* as the next version of *name*, in the background.

    Returns once a private copy of *path* is taken (the training loop may overwrite it), or,
    when two checkpoints are already waiting, once one of them is stored: every checkpoint
    given here is registered. Each one's parent is the previous one of *name*; *metrics*
    become ``metric.<key>`` tags. Errors surface at :meth:`flush` (also run at process exit).
    For every-N / best-metric policies, skipping under load, and retention use
    :func:`modelkeep.track`.
    """
    from modelkeep.training import Tracker

    with keep._lock:
        tracker = keep._trackers.get(name)
        if tracker is None or tracker.closed:
            tracker = keep._trackers[name] = Tracker(keep, name, on_full="block",
                                                     cpu_budget=None)
    pending = tracker.checkpoint(path, step=step, metrics=metrics, tags=tags, force=True)
    assert pending is not None  # forced: never skipped
    return pending


def flush(keep: Keep, timeout: float | None = None) -> list[ModelVersion]:
    """Wait for every checkpoint :meth:`checkpoint` queued; raise
    :class:`~modelkeep.errors.CheckpointError` if any was not registered."""
    with keep._lock:
        trackers = list(keep._trackers.values())
    out: list[ModelVersion] = []
    first: BaseException | None = None
    for tracker in trackers:
        try:
            out.extend(tracker.flush(timeout))
        except BaseException as exc:  # flush the others before raising the first error
            first = first or exc
    if first is not None:
        raise first
    return out


