"""Retention: which versions the policies let go, and deleting them.

For each model with a retention rule (``keep_last`` or ``keep_days``), every version is kept when
any of these holds, and deleted otherwise:

* ``keep_last = N``: it is one of the N highest-numbered versions;
* ``keep_days = D``: it was created less than D days ago;
* it is the newest version (retention never empties a model);
* it has an alias and ``keep_aliased`` (default true) or ``immutable`` (default true, and an
  immutable version cannot be deleted while aliased);
* it has a tag listed in ``keep_tags``.

So the rules add up, like ``restic forget --keep-last --keep-within``: a version goes only when no
rule keeps it.

A model without ``keep_last`` and ``keep_days`` follows the retention of the training runs that
registered it: a tracker's ``keep_last`` (:mod:`modelkeep.training`) tags the checkpoints outside
its keep set ``modelkeep.retention=expired``, and those go unless a rule above keeps them (the
newest, an alias, a ``keep_tags`` tag). Only versions in the Keep's own store are let go this
way, since that store's ``gc`` reclaims their chunks. Untagged versions of such a model are
kept, and a model with no tagged version in the store is not planned at all. Where the policies
set ``keep_last`` or ``keep_days``, they decide alone.

:func:`apply_retention` deletes what the plan allows with :meth:`Keep.delete_version`, one
version at a time, checking each version's aliases and tags again just before deleting it, so a
version aliased or tagged after the plan was made is kept. It deletes registry entries and their
snapshot objects; the chunks they alone used are left to the store's garbage collection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from modelkeep.aliases import TIME_FORMAT
from modelkeep.errors import ModelkeepError

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import DeletedVersion
    from modelkeep.policy.rules import Policy


@dataclass(frozen=True)
class RetentionItem:
    """One version in a retention plan: keep or delete, and why."""

    name: str
    version: int
    action: str  # "keep" or "delete"
    reasons: tuple[str, ...]
    created: datetime
    size: int
    snapshot_id: str
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "version": self.version,
                "action": self.action, "reasons": list(self.reasons),
                "created": self.created.strftime(TIME_FORMAT), "size": self.size,
                "snapshot_id": self.snapshot_id, "aliases": list(self.aliases)}


@dataclass
class RetentionReport:
    """What :func:`apply_retention` did (or, with *dry_run*, would do)."""

    dry_run: bool
    plan: list[RetentionItem] = field(default_factory=list)
    deleted: list[DeletedVersion] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (ref, why it was kept)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (ref, error)

    @property
    def to_delete(self) -> list[RetentionItem]:
        return [i for i in self.plan if i.action == "delete"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "ok": self.ok,
                "plan": [i.to_json() for i in self.plan],
                "deleted": [d.to_json() for d in self.deleted],
                "skipped": [{"ref": r, "reason": w} for r, w in self.skipped],
                "failed": [{"ref": r, "error": e} for r, e in self.failed]}


def _age(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    if days >= 1:
        return f"{days:.0f} day(s)"
    return f"{delta.total_seconds() / 3600:.1f} hour(s)"


def keep_reasons(policy: Policy, *, rank: int, created: datetime, now: datetime,
                 aliases: tuple[str, ...], tags: dict[str, str] | Any) -> list[str]:
    """Why a version is kept (empty: it may be deleted). *rank* is 0 for the newest."""
    reasons = []
    if rank == 0:
        reasons.append("newest version")
    if policy.keep_last is not None and rank < policy.keep_last:
        reasons.append(f"keep_last = {policy.keep_last}: one of the {policy.keep_last} newest")
    if policy.keep_days is not None and now - created < timedelta(days=policy.keep_days):
        reasons.append(f"keep_days = {policy.keep_days}: created {_age(now - created)} ago")
    if aliases:
        if policy.immutable:
            reasons.append(f"aliased ({', '.join(aliases)}) and immutable")
        elif policy.keep_aliased:
            reasons.append(f"aliased ({', '.join(aliases)}), keep_aliased")
    tagged = [t for t in policy.keep_tags if t in tags]
    if tagged:
        reasons.append(f"keep_tags: tagged {', '.join(tagged)}")
    return reasons


def expired_by_run(tags: dict[str, str] | Any) -> bool:
    """Whether a training run's retention let this version go (see the module docstring)."""
    from modelkeep.training import RETENTION_TAG

    return bool(tags.get(RETENTION_TAG) == "expired")


def _models_expired_by_run(keep: Keep) -> set[str] | None:
    """The models with a version a run expired, from one registry search where the registry
    offers it (``models_tagged``); None: ask model by model."""
    from modelkeep.training import RETENTION_TAG

    finder = getattr(keep.registry, "models_tagged", None)
    if finder is None:
        return None
    try:
        return set(finder(RETENTION_TAG, "expired"))
    except ModelkeepError:  # a registry whose search does not filter on tags
        return None


def _in_store(keep: Keep, uri: str) -> bool:
    """Whether the version at *uri* lives in *keep*'s store: a run's expiry is acted on by the
    store that holds the checkpoints (its ``gc`` reclaims their chunks)."""
    from modelkeep.errors import InvalidInputError
    from modelkeep.store import parse_uri

    try:
        return parse_uri(uri).locator == keep.store.location.locator
    except InvalidInputError:
        return False


def _delete_reasons(policy: Policy, rank: int, created: datetime, now: datetime) -> list[str]:
    reasons = []
    if policy.keep_last is not None:
        reasons.append(f"not one of the {policy.keep_last} newest (keep_last), "
                       f"{rank} newer version(s)")
    if policy.keep_days is not None:
        reasons.append(f"older than {policy.keep_days} day(s) (keep_days): created "
                       f"{_age(now - created)} ago")
    return reasons


def retention_plan(keep: Keep, name: str | None = None, *,
                   now: datetime | None = None) -> list[RetentionItem]:
    """For each version of *name* (default: every model) that a retention rule covers: keep or
    delete, and why. *now* is the time ``keep_days`` counts from (default: the current time)."""
    now = now or datetime.now(UTC)
    names = [name] if name is not None else keep.models()
    expired_somewhere = _models_expired_by_run(keep) if name is None else None
    plan: list[RetentionItem] = []
    for model in names:
        policy = keep.policies.for_name(model)
        by_run = not policy.has_retention
        if by_run and expired_somewhere is not None and model not in expired_somewhere:
            continue
        # The registry's tags say whether a run expired anything here, without loading snapshots.
        if by_run and not any(expired_by_run(rv.tags) and _in_store(keep, rv.source)
                              for rv in keep.registry.versions(model)):
            continue
        versions = sorted(keep.versions(model), key=lambda v: v.version, reverse=True)
        items = []
        for rank, v in enumerate(versions):
            reasons = keep_reasons(policy, rank=rank, created=v.created, now=now,
                                   aliases=v.aliases, tags=v.tags)
            if by_run and not expired_by_run(v.tags):
                reasons.append("not expired by its training run")
            elif by_run and not _in_store(keep, v.uri):
                reasons.append("expired by its training run, in another store")
            action = "keep" if reasons else "delete"
            if not reasons:
                reasons = (["expired by its training run (keep_last of its tracker)"] if by_run
                           else _delete_reasons(policy, rank, v.created, now))
            items.append(RetentionItem(model, v.version, action, tuple(reasons), v.created,
                                       v.size, v.snapshot_id, tuple(v.aliases)))
        plan.extend(reversed(items))  # oldest first, like `modelkeep list`
    return plan


def apply_retention(
    keep: Keep, *, dry_run: bool, name: str | None = None, now: datetime | None = None,
    plan: list[RetentionItem] | None = None, progress: Callable[[int], None] | None = None,
) -> RetentionReport:
    """Delete the versions :func:`retention_plan` allows (nothing with *dry_run*).

    *plan* is one already made for the same *name*; *progress* is called with the size of each
    version handled. One failure does not stop the others: it is reported in ``failed``. A
    version that gained an alias or a kept tag since the plan was made is kept (``skipped``).
    """
    report = RetentionReport(dry_run, plan if plan is not None
                             else retention_plan(keep, name, now=now))
    if dry_run:
        return report
    for item in report.to_delete:
        policy = keep.policies.for_name(item.name)
        try:
            current = keep.registry.get_version(item.name, item.version)
            # Aliases and tags can change between planning and deleting; ask again.
            still = keep_reasons(policy, rank=1, created=item.created,
                                 now=now or datetime.now(UTC), aliases=current.aliases,
                                 tags=current.tags)
            still = [r for r in still if not r.startswith(("keep_last", "keep_days"))]
            if not policy.has_retention and not expired_by_run(current.tags):
                still.append("no longer tagged expired by its training run")
            if still:
                report.skipped.append((item.ref, "; ".join(still)))
                continue
            report.deleted.append(keep.delete_version(item.ref))
        except ModelkeepError as exc:
            report.failed.append((item.ref, str(exc)))
        finally:
            if progress is not None:
                progress(item.size)
    return report
