"""Deleting a version: the registry entry first, then its snapshot when no other version
uses it; the chunks stay until garbage collection (:mod:`modelkeep.ops.gc`) sweeps them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from modelkeep.errors import Hint, InvalidInputError, NotFoundError, Option, VetoError
from modelkeep.ops._common import resolve
from modelkeep.ops.aliases import check_alias, record_alias
from modelkeep.ops.results import DeletedVersion
from modelkeep.store import parse_uri

if TYPE_CHECKING:
    from modelkeep.keep import Keep


def delete_version(keep: Keep, ref: str) -> DeletedVersion:
    """Delete the registry version *ref* names, and its snapshot object from the store when
    no other registered version (of any model) points at the same snapshot.

    An aliased version is refused (:class:`~modelkeep.errors.VetoError`) while its model's
    policy is ``immutable`` (the default); otherwise its aliases go with it, asked of the
    alias hooks and recorded in the alias history like ``modelkeep alias --delete``. The
    chunks only this version used stay until the store's garbage collection sweeps them.
    """
    rv = resolve(keep, ref)
    name, number = rv.name, rv.version
    try:
        parsed = parse_uri(rv.source)
    except InvalidInputError:
        raise NotFoundError(
            f"{name}@{number} was not registered by modelkeep (source {rv.source!r})",
            hint="delete it with the registry's own tools") from None
    aliases = tuple(sorted(rv.aliases))
    if aliases:
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
    shared = snapshot_users(keep, parsed.locator, parsed.snapshot_id, exclude=(name, number))
    # Registry entry first, then the snapshot. The version and its aliases disappear for
    # every reader in one step, and a crash between the two leaves an unreferenced snapshot,
    # the same debris a crash during register leaves and garbage collection sweeps. The
    # other order would leave a visible version whose snapshot is gone: one nobody can pull.
    keep.registry.delete_version(name, number)
    for alias in aliases:
        record_alias(keep, name, alias, None, number, "delete")
    if not shared:
        keep.stores.store_for(parsed.locator).delete_snapshot(parsed.snapshot_id)
        keep.stores.forget(parsed.snapshot_id)
    return DeletedVersion(name, number, parsed.snapshot_id, not shared, shared, aliases)


def snapshot_users(
    keep: Keep, locator: str, snapshot_id: str, exclude: tuple[str, int]
) -> tuple[str, ...]:
    """Every registered version, of any model, whose URI names this snapshot in this store
    (but *exclude*)."""

    def users(model: str) -> list[str]:
        try:
            found = keep.registry.versions(model)
        except NotFoundError:
            return []  # deleted meanwhile
        out = []
        for rv in found:
            if (rv.name, rv.version) == exclude:
                continue
            try:
                parsed = parse_uri(rv.source)
            except InvalidInputError:
                continue
            if parsed.snapshot_id == snapshot_id and parsed.locator == locator:
                out.append(f"{rv.name}@{rv.version}")
        return out

    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-refs") as pool:
        return tuple(ref for refs in pool.map(users, keep.registry.models()) for ref in refs)


