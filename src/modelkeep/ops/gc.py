"""Garbage collection: retention first (versions the policies allow to go are deleted, so their
chunks become unreferenced), then the store's two-phase collection (:mod:`modelkeep.store.gc`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.store import GcReport

Progress = Callable[[int], None]


def gc(
    keep: Keep,
    *,
    grace: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    progress: Progress | None = None,
) -> GcReport:
    """Collect garbage in this Keep's store: chunks no snapshot and no run manifest uses,
    older than *grace*, in two phases (:mod:`modelkeep.store.gc`), safe while other
    processes register. Versions that retention allows to go are deleted first (registry
    entry, then snapshot), so that their chunks become unreferenced; in a dry run their
    snapshots are passed as ``ignore_snapshots`` instead, so the report shows what they
    would free. The report's ``deleted_snapshots`` lists them."""
    from modelkeep.policy import apply_retention

    retention = apply_retention(keep, dry_run=dry_run)
    if dry_run:
        deleted = [item.snapshot_id for item in retention.to_delete]
    else:
        deleted = [d.snapshot_id for d in retention.deleted if d.snapshot_deleted]
    report = keep.store.gc(grace=grace, dry_run=dry_run, progress=progress,
                           ignore_snapshots=deleted if dry_run else ())
    report.deleted_snapshots = deleted
    gone = {(d.name, d.version) for d in retention.deleted}
    failed = dict(retention.failed)
    report.versions = [
        {**item.to_json(), "deleted": (item.name, item.version) in gone}
        for item in retention.to_delete if item.ref not in failed
    ] + [{"ref": ref, "error": error} for ref, error in failed.items()]
    return report


