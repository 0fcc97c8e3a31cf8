"""Deleting versions: one (``NAME@REF``) or every version of a model.

Every version is checked before anything is deleted (immutability, the alias hooks), so a
refusal leaves all of them in place. Then, for each: the registry entry first, then its snapshot
when no other version uses it. The chunks stay until garbage collection (:mod:`modelkeep.ops.gc`)
sweeps them; :func:`delete` says how many bytes that will reclaim. Each deletion is journaled in
the store first (a ``delete`` entry, docs/format.md §10.4), so a registry rebuilt from the store
neither brings the version back nor forgets it was deleted, and recorded in the model's deletion
history (:mod:`modelkeep.catalog.deletions`), which ``modelkeep log`` shows beside the alias
changes; the registered model itself stays, holding both histories.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING

from modelkeep.catalog import deletions
from modelkeep.errors import (
    Hint,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    Option,
    VetoError,
)
from modelkeep.ops._common import author, resolve
from modelkeep.ops.aliases import check_alias, record_alias
from modelkeep.ops.journal import OP_DELETE, journal, journaled
from modelkeep.ops.results import DeletedVersion, DeleteReport
from modelkeep.refs import validate_name
from modelkeep.store import parse_uri

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.registry import RegistryVersion

Confirm = Callable[[Sequence[str]], bool]


def delete_version(keep: Keep, ref: str) -> DeletedVersion:
    """Delete the registry version *ref* names, and its snapshot object from the store when
    no other registered version (of any model) points at the same snapshot.

    An aliased version is refused (:class:`~modelkeep.errors.VetoError`) while its model's
    policy is ``immutable`` (the default); otherwise its aliases go with it, asked of the
    alias hooks and recorded in the alias history like ``modelkeep alias --delete``. The
    chunks only this version used stay until the store's garbage collection sweeps them.
    """
    return delete(keep, ref, measure=False).versions[0]


def plan(keep: Keep, target: str, *, all_versions: bool = False) -> list[RegistryVersion]:
    """The versions deleting *target* removes, each checked as :func:`delete_version` checks
    it; raises on the first refusal, having deleted nothing."""
    if all_versions:
        if "@" in target:
            model = target.split("@", 1)[0]
            raise InvalidInputError(
                f"deleting every version takes a model name, not {target!r}",
                hint=Hint("{every}", every=Option(api=f"delete({model!r}, all_versions=True)",
                                                  cli=f"modelkeep delete {model} --all")))
        name = validate_name(target)
        found = keep.registry.versions(name)
        if not found:
            raise NotFoundError(f"model {name!r} has no versions to delete")
    else:
        found = [resolve(keep, target)]
    for rv in found:
        _check(keep, rv)
    return found


def _check(keep: Keep, rv: RegistryVersion) -> None:
    name, number = rv.name, rv.version
    try:
        parse_uri(rv.source)
    except InvalidInputError:
        raise NotFoundError(
            f"{name}@{number} was not registered by modelkeep (source {rv.source!r})",
            hint="delete it with the registry's own tools") from None
    aliases = tuple(sorted(rv.aliases))
    if not aliases:
        return
    immutable = keep.policies.for_name(name).setting("immutable")
    if immutable.value:
        reason = (f"{name}@{number} has alias(es) {', '.join(aliases)} and versions of "
                  f"{name} are immutable ({immutable.origin})")
        raise VetoError(
            f"deleting {name}@{number} refused: {reason}", reasons=[reason],
            hint=Hint("point the alias elsewhere or remove it first ({remove}); nothing "
                      "was deleted", remove=Option(
                          api=f"delete_alias({name!r}, {aliases[0]!r})",
                          cli=f"modelkeep alias --delete {name} {aliases[0]}")))
    for alias in aliases:
        check_alias(keep, name, alias, None, rv.tags, registering=False, action="delete")


def delete(
    keep: Keep, target: str, *, all_versions: bool = False, confirm: Confirm | None = None,
    measure: bool = True,
) -> DeleteReport:
    """Delete the version *target* names, or with *all_versions* every version of model
    *target*. *confirm*, when given, is asked with the refs once every check passed; a false
    answer deletes nothing (``report.cancelled``). With *measure*, the report says what a
    garbage collection will reclaim: the stored bytes of the chunks that only the deleted
    snapshots used (one listing of the store's snapshots and chunks)."""
    found = plan(keep, target, all_versions=all_versions)
    refs = [f"{rv.name}@{rv.version}" for rv in found]
    if confirm is not None and not confirm(refs):
        return DeleteReport((), cancelled=True)
    doomed = {(rv.name, rv.version) for rv in found}
    users = snapshot_index(keep) if found else {}
    freed: dict[str, set[str]] = {}  # store locator -> chunk ids of deleted snapshots
    done: list[DeletedVersion] = []
    who = author()
    try:
        for rv in found:
            parsed = parse_uri(rv.source)
            key = (parsed.locator, parsed.snapshot_id)
            shared = tuple(r for r in users.get(key, ()) if r not in doomed)
            store = keep.stores.store_for(parsed.locator)
            chunks: set[str] = set()
            if not shared and measure:
                with suppress(NotFoundError, IntegrityError):  # nothing to count: gone already
                    snap = keep.stores.snapshot(store, parsed.snapshot_id)
                    chunks = {cid for f in snap.files for cid, _n in f.chunks}
            aliases = tuple(sorted(rv.aliases))
            # Registry entry first, then the snapshot. The version and its aliases disappear
            # for every reader in one step, and a crash between the two leaves an unreferenced
            # snapshot, the same debris a crash during register leaves and garbage collection
            # sweeps. The other order would leave a visible version nobody can pull.
            entry = journal(keep, rv.name, OP_DELETE,
                            {"version": rv.version, "snapshot": parsed.snapshot_id}, who)
            with journaled(keep, entry):
                keep.registry.delete_version(rv.name, rv.version)
            # One time for the journal and the history, so a rebuild reproduces the history.
            when = entry.time[:19] + "Z"
            for alias in aliases:
                record_alias(keep, rv.name, alias, None, rv.version, "delete")
            if not shared:
                store.delete_snapshot(parsed.snapshot_id)
                keep.stores.forget(parsed.snapshot_id)
                freed.setdefault(parsed.locator, set()).update(chunks)
            done.append(DeletedVersion(rv.name, rv.version, parsed.snapshot_id, not shared,
                                       tuple(f"{n}@{v}" for n, v in shared), aliases,
                                       author=who, time=when))
    finally:
        _record(keep, done)
    count = size = 0
    for locator, chunk_ids in freed.items():
        n, b = keep.stores.store_for(locator).reclaimable(chunk_ids)
        count, size = count + n, size + b
    return DeleteReport(tuple(done), reclaimable_chunks=count if measure else None,
                        reclaimable_bytes=size if measure else None)


def _record(keep: Keep, done: Sequence[DeletedVersion]) -> None:
    """Add the deleted versions to their models' deletion histories (one tag write a model)."""
    by_model: dict[str, list[DeletedVersion]] = {}
    for d in done:
        by_model.setdefault(d.name, []).append(d)
    for name, items in by_model.items():
        tags = keep.registry.get_model(name).tags
        events = deletions.decode(tags.get(deletions.TAG))
        events += [deletions.DeletionEvent(d.version, d.time, d.author, d.snapshot_id)
                   for d in items]
        keep.registry.set_model_tag(name, deletions.TAG, deletions.encode(events))


def history(keep: Keep, name: str) -> list[deletions.DeletionEvent]:
    """The deleted versions of model *name*, oldest first."""
    validate_name(name)
    return deletions.decode(keep.registry.get_model(name).tags.get(deletions.TAG))


def snapshot_index(keep: Keep) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """{(store locator, snapshot id): every registered version, of any model, naming it}."""

    def users(model: str) -> list[tuple[tuple[str, str], tuple[str, int]]]:
        try:
            found = keep.registry.versions(model)
        except NotFoundError:
            return []  # deleted meanwhile
        out = []
        for rv in found:
            try:
                parsed = parse_uri(rv.source)
            except InvalidInputError:
                continue
            out.append(((parsed.locator, parsed.snapshot_id), (rv.name, rv.version)))
        return out

    index: dict[tuple[str, str], list[tuple[str, int]]] = {}
    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-refs") as pool:
        for pairs in pool.map(users, keep.registry.models()):
            for key, who in pairs:
                index.setdefault(key, []).append(who)
    return index

