"""What the framework callbacks share: opening their tracker and reading metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from modelkeep.wiring import track

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.training import Tracker


class TrackerOwner:
    """Holds the tracker of one callback, opened at the first save so that constructing a
    callback (which frameworks also do in worker processes) touches neither store nor registry."""

    def __init__(self, name: str, keep: Keep | None, store: str | None, registry: str | None,
                 store_options: Mapping[str, Any] | None, options: Mapping[str, Any]) -> None:
        self.name = name
        self._open_args: dict[str, Any] = {"keep": keep, "store": store, "registry": registry,
                                           "store_options": store_options}
        self._options = dict(options)
        self._tracker: Tracker | None = None

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None or self._tracker.closed:
            self._tracker = track(self.name, **self._open_args, **self._options)
        return self._tracker

    @property
    def opened(self) -> bool:
        return self._tracker is not None and not self._tracker.closed

    def close(self) -> None:
        """Flush and close; raises :class:`~modelkeep.errors.CheckpointError` on failures."""
        if self._tracker is not None:
            tracker, self._tracker = self._tracker, None
            tracker.close()


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric entries of a framework's metrics dict (tensors, numpy and python scalars)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):  # non-scalars, strings, multi-element
            continue
    return out
