"""Copying versions to another store (:mod:`modelkeep.store.sync` does the copying): which
snapshots the references name, in which store each lives, and the bytes a copy will send."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from modelkeep.errors import TO_STORE, Hint, InvalidInputError, StoreError
from modelkeep.ops._common import resolve
from modelkeep.refs import parse_ref, validate_name
from modelkeep.store.location import parse_location
from modelkeep.store.uri import parse_uri

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.registry import RegistryVersion
    from modelkeep.store import Store, SyncReport

Progress = Callable[[int], None]


def open_store(keep: Keep, store: str) -> Store:
    """A store by its name in ``[stores.NAME]``, or by URL; a URL on the default store's
    backend gets the default store's options. Plugins' storage options apply as usual."""
    named = next((n for n in keep.stores.named if n.name == store), None)
    if named is None and "://" not in store and "/" not in store and not store.startswith("."):
        # A bare word is a store name; taking a typo for a new folder would copy there.
        known = ", ".join(sorted(n.name for n in keep.stores.named)) or "none"
        raise InvalidInputError(f"no store named {store!r}",
                                hint=f"configured stores: {known}; or pass a URL or path")
    # Opened like any store a version names: its configured options, plugin options, keys.
    return keep.stores.store_for(parse_location(named.url if named else store).locator)


def sync_plan(keep: Keep, refs: Sequence[str] | None) -> dict[str, list[str]]:
    """{source store locator: snapshot ids} of the versions *refs* name (default: every
    version of every model stored in this Keep's store), oldest first."""
    rvs: list[RegistryVersion] = []
    if refs is None:
        for model in keep.registry.models():
            rvs.extend(keep.registry.versions(model))
    else:
        for ref in refs:
            parsed = parse_ref(ref)
            if parsed.version is None and parsed.alias is None and "@" not in ref:
                rvs.extend(keep.registry.versions(validate_name(parsed.name)))
            else:
                rvs.append(resolve(keep, parsed))
    plan: dict[str, list[str]] = {}
    for rv in rvs:
        try:
            parsed_uri = parse_uri(rv.source)
        except InvalidInputError:
            continue  # a version another tool registered: no snapshot to copy
        if refs is None and parsed_uri.locator != keep.store.location.locator:
            continue  # the registry may list versions of other stores too
        ids = plan.setdefault(parsed_uri.locator, [])
        if parsed_uri.snapshot_id not in ids:
            ids.append(parsed_uri.snapshot_id)
    return plan


def sync(
    keep: Keep,
    to: str | Store,
    refs: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> SyncReport:
    """Copy versions to the store *to* (a ``[stores.NAME]`` name, a URL, or a
    :class:`~modelkeep.store.Store`), sending only the chunks it lacks; resumable, and never
    leaving a copied snapshot without its chunks (:mod:`modelkeep.store.sync`).

    *refs* are ``NAME@REF`` (one version) or ``NAME`` (every version of it), copied from
    whichever store each lives in; default: every version of every model that lives in this
    Keep's store. Versions already in *to* are counted as present.
    """
    from modelkeep.store import Store, SyncReport

    dest = to if isinstance(to, Store) else keep.open_store(to)
    if dest.location.locator == keep.store.location.locator:
        raise StoreError(f"the destination is this store ({dest.url})",
                         hint=Hint("name another store with {to}", to=TO_STORE))
    plan = sync_plan(keep, refs)
    total = SyncReport(keep.store.url, dest.url, dry_run)
    for locator, ids in plan.items():
        if locator == dest.location.locator:
            total.snapshots += len(ids)
            total.snapshots_present += len(ids)
            continue
        report = keep.stores.store_for(locator).sync_to(
            dest, ids, dry_run=dry_run, workers=workers, progress=progress)
        for key in ("snapshots", "snapshots_copied", "snapshots_present", "chunks_copied",
                    "chunks_present", "bytes_copied", "bytes_present"):
            setattr(total, key, getattr(total, key) + getattr(report, key))
        total.copied.extend(report.copied)
    return total


def sync_size(keep: Keep, to: str | Store, refs: Sequence[str] | None = None) -> int:
    """Bytes :meth:`sync` will report progress for: the distinct chunks of the versions
    that *to* does not hold yet (for a progress bar)."""
    from modelkeep.store import Store

    dest = to if isinstance(to, Store) else keep.open_store(to)
    sizes: dict[str, int] = {}
    for locator, ids in sync_plan(keep, refs).items():
        if locator == dest.location.locator:
            continue
        store = keep.stores.store_for(locator)
        for sid in ids:
            if dest.has_snapshot(sid):
                continue
            for entry in store.load_snapshot(sid).files:
                sizes.update(entry.chunks)
    return sum(sizes.values())


