"""Finding versions across models by tag and metric: ``modelkeep search``.

The registry does the coarse part where it can (the optional ``search_versions(name, tags)``
method: MLflow's ``search_model_versions`` filter on the model name and exact tag values, or one
SQL query on the SQLite file); metric thresholds and the ordering are applied here, because the
registry holds metrics as text tags (``metric.<name>``, written by :func:`modelkeep.track` and the
framework callbacks) and MLflow compares tag values only as strings. Only the versions returned,
after the limit, have their snapshots read.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelkeep.errors import Hint, InvalidInputError, NotFoundError, Option
from modelkeep.ops._common import load, version_of
from modelkeep.refs import validate_name

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.registry import RegistryVersion

METRIC_PREFIX = "metric."  # what training.py and the callbacks write
TAG_ORDER_PREFIX = "tag."
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "=": operator.eq,
    "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([^<>=!\s][^<>=!]*?)\s*(<=|>=|==|!=|<|>|=)\s*(\S.*?)\s*$")

_METRIC_EXAMPLE = Option(api="metrics=['loss<0.5']", cli="--metric 'loss<0.5'")


@dataclass(frozen=True)
class MetricCondition:
    """``metric.<name> <op> <value>``, compared as numbers."""

    name: str  # without the ``metric.`` prefix
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> MetricCondition:
        """``loss<0.5``, ``metric.acc >= 0.9``, ``epoch==3``."""
        match = _CONDITION.match(text)
        if match is None:
            raise InvalidInputError(f"invalid metric condition {text!r}",
                                    hint=Hint("e.g. {metric} (<, <=, >, >=, ==, !=)",
                                              metric=_METRIC_EXAMPLE))
        name, op, raw = match.groups()
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInputError(f"invalid metric condition {text!r}: {raw!r} is not a number",
                                    hint=Hint("e.g. {metric}", metric=_METRIC_EXAMPLE)) from None
        return cls(name.removeprefix(METRIC_PREFIX), op, value)

    def holds(self, tags: Mapping[str, str]) -> bool:
        value = _number(tags.get(METRIC_PREFIX + self.name))
        return value is not None and _OPS[self.op](value, self.value)


@dataclass(frozen=True)
class Order:
    """``tag.KEY`` (text) or ``metric.NAME`` (number); versions without it come last."""

    key: str  # the registry tag
    numeric: bool
    desc: bool = False

    @classmethod
    def parse(cls, text: str, desc: bool = False) -> Order:
        if text.startswith(METRIC_PREFIX) and len(text) > len(METRIC_PREFIX):
            return cls(text, True, desc)
        if text.startswith(TAG_ORDER_PREFIX) and len(text) > len(TAG_ORDER_PREFIX):
            return cls(text[len(TAG_ORDER_PREFIX):], False, desc)
        raise InvalidInputError(f"invalid ordering {text!r}",
                                hint=Hint("use {tag} or {metric}", tag=Option(
                                    api="order_by='tag.KEY'", cli="--order-by tag.KEY"),
                                    metric=Option(api="order_by='metric.NAME'",
                                                  cli="--order-by metric.NAME")))


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def candidates(keep: Keep, name: str | None, tags: Mapping[str, str]) -> list[RegistryVersion]:
    """Registry versions of *name* (every model when None) carrying every tag in *tags*:
    the registry's own search when it has one, else model by model."""
    finder = getattr(keep.registry, "search_versions", None)
    if finder is not None:
        found: list[RegistryVersion] = finder(name, dict(tags))
    else:
        names = [name] if name is not None else keep.registry.models()
        found = []
        for model in names:
            try:
                found.extend(keep.registry.versions(model))
            except NotFoundError:
                if name is not None:
                    raise
    return [rv for rv in found if all(rv.tags.get(k) == v for k, v in tags.items())]


def search(
    keep: Keep,
    name: str | None = None,
    *,
    tags: Mapping[str, str] | None = None,
    metrics: Sequence[MetricCondition | str] = (),
    order_by: str | None = None,
    desc: bool = False,
    limit: int | None = None,
) -> list[ModelVersion]:
    """Versions (of model *name*, or of every model) whose tags include *tags* and whose
    ``metric.*`` tags meet every condition in *metrics*, ordered by *order_by* (``tag.KEY`` or
    ``metric.NAME``; default: by model name, then version), at most *limit* of them."""
    if name is not None:
        validate_name(name)
    if limit is not None and limit < 1:
        raise InvalidInputError(f"invalid limit {limit}", hint=Hint(
            "use {limit} or more", limit=Option(api="limit=1", cli="--limit 1")))
    conditions = [m if isinstance(m, MetricCondition) else MetricCondition.parse(m)
                  for m in metrics]
    order = Order.parse(order_by, desc) if order_by is not None else None
    listed = candidates(keep, name, tags or {})
    if name is not None and not listed:
        keep.registry.get_model(name)  # an unknown model is an error, not an empty answer
    found = [rv for rv in listed
             if rv.source.startswith("modelkeep://") and all(c.holds(rv.tags) for c in conditions)]
    found.sort(key=lambda rv: (rv.name, rv.version))
    if order is not None:
        found = _ordered(found, order)
    if limit is not None:
        found = found[:limit]

    def one(rv: RegistryVersion) -> ModelVersion | None:
        try:
            _store, snap, sid = load(keep, rv)
        except NotFoundError:
            return None  # its snapshot is gone: nothing to show
        return version_of(rv, snap, sid)

    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-search") as pool:
        return [mv for mv in pool.map(one, found) if mv is not None]


def _ordered(found: list[RegistryVersion], order: Order) -> list[RegistryVersion]:
    have: list[tuple[float | str, RegistryVersion]] = []
    missing: list[RegistryVersion] = []
    for rv in found:
        raw = rv.tags.get(order.key)
        value = _number(raw) if order.numeric else raw
        if value is None:
            missing.append(rv)
        else:
            have.append((value, rv))
    # A stable sort: ties keep the (name, version) order, descending or not.
    have.sort(key=lambda item: item[0], reverse=order.desc)
    return [rv for _v, rv in have] + missing
