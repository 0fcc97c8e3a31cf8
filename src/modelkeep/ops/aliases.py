"""Aliases, descriptions and tags: set, delete and roll back an alias, its history, the
description of a model or version, and the user tags of an existing version.

Every change is asked of the ``modelkeep_before_alias_change`` plugins first, journaled in the
store before the registry makes it (:func:`modelkeep.ops.journal.journaled`), recorded in the
alias history (:mod:`modelkeep.aliases`), shown in the registry's descriptions (the model's alias
table, the summaries of the versions it left and reached: :mod:`modelkeep.ops.summary`) and told
to ``modelkeep_after_alias_change``. A description is the user's text and a generated summary;
:func:`describe` sets the first and :func:`description` reads it back alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from modelkeep import aliases as aliases_mod
from modelkeep.catalog.tags import check_tags
from modelkeep.errors import (
    Hint,
    InvalidInputError,
    NotFoundError,
    Option,
    RegistryPermissionError,
    VetoError,
)
from modelkeep.ops._common import author, resolve, snapshot_of
from modelkeep.ops.journal import OP_ALIAS, OP_DESCRIPTION, OP_TAG, journal, journaled
from modelkeep.ops.read import get
from modelkeep.ops.results import ModelVersion
from modelkeep.ops.summary import (
    after_alias_change,
    refresh_model,
    refresh_version,
    user_description,
)
from modelkeep.refs import validate_alias, validate_name

if TYPE_CHECKING:
    from modelkeep.hooks import Finding
    from modelkeep.keep import Keep
    from modelkeep.registry import RegistryModel, RegistryVersion

MAX_DESCRIPTION = 5000  # MLflow's description columns are VARCHAR(5000) on PostgreSQL and MySQL


def alias_target(keep: Keep, name: str, alias: str) -> int | None:
    try:
        return keep.registry.get_by_alias(name, alias).version
    except NotFoundError:
        return None
    except RegistryPermissionError:
        # MLflow's basic auth refuses reads of a model that does not exist yet (no
        # permission row): the first register with an alias. A user who really may not read
        # the model may not move its aliases either, and the move itself reports that.
        return None


def alias_refusals(
    keep: Keep, name: str, alias: str, version: int | None, tags: Mapping[str, str], *,
    action: str = "set", model: RegistryModel | None = None,
    findings: Sequence[Finding] | None = None,
) -> list[str]:
    """Every plugin's reason to refuse pointing *alias* at *version* (None: the new version, or
    no version when *action* is ``delete``); *model*, when given, says where it points now;
    *findings* are the scan of a version being registered. The one question every alias change
    and ``modelkeep policy check --alias`` ask."""
    caller = keep.hook.modelkeep_before_alias_change
    if not caller.get_hookimpls():
        return []
    previous = model.aliases.get(alias) if model else alias_target(keep, name, alias)
    answers = caller(name=name, alias=alias, version=version, tags=dict(tags),
                     previous=previous, action=action, keep=keep,
                     findings=None if findings is None else tuple(findings))
    return [str(r) for r in answers if r]


def refusals_of(keep: Keep, ref: str, alias: str) -> list[str]:
    """What the plugins would answer to pointing *alias* at the version *ref* names: exactly
    what :func:`set_alias` asks, without moving anything."""
    alias = validate_alias(alias)
    rv = resolve(keep, ref)
    return alias_refusals(keep, rv.name, alias, rv.version, rv.tags)


def check_alias(
    keep: Keep, name: str, alias: str, version: int | None, tags: Mapping[str, str], *,
    registering: bool, action: str = "set", model: RegistryModel | None = None,
    findings: Sequence[Finding] | None = None,
) -> None:
    """Raise :class:`~modelkeep.errors.VetoError` when a plugin refuses the alias change
    (:func:`alias_refusals`)."""
    reasons = alias_refusals(keep, name, alias, version, tags, action=action, model=model,
                             findings=findings)
    if reasons:
        if action == "delete":
            what = f"deleting alias {alias!r} of {name}"
        else:
            target = (f"{name}@{version}" if version is not None
                      else f"the new version of {name}")
            what = f"alias {alias!r} on {target}"
        raise VetoError(
            f"{what} refused: {'; '.join(reasons)}", reasons=reasons,
            hint="nothing was registered" if registering else "the alias was not moved",
        )


def move_alias(
    keep: Keep, name: str, alias: str, version: int | None, action: str = "set", *,
    snapshot_id: str | None = None, model: RegistryModel | None = None,
    skip_summary: int | None = None,
) -> RegistryModel | None:
    """Point *alias* at *version* (already checked; its snapshot is *snapshot_id*), or delete
    it when *version* is None; journal the change, record it in the alias history and the
    descriptions, and tell the plugins. *model* is the model as read for the check, if it was;
    *skip_summary* a version whose summary the caller writes itself. Returns the model as read
    after the change (None: nothing changed), for that caller's summary."""
    model = model or keep.registry.get_model(name)
    previous = model.aliases.get(alias)

    def change() -> None:
        if version is None:
            keep.registry.delete_alias(name, alias)
        else:
            keep.registry.set_alias(name, alias, version)

    return record_alias(keep, name, alias, version, previous, action, model.tags,
                        snapshot_id=snapshot_id, change=change, skip_summary=skip_summary)


def record_alias(
    keep: Keep, name: str, alias: str, version: int | None, previous: int | None, action: str,
    model_tags: Mapping[str, str] | None = None, *, snapshot_id: str | None = None,
    change: Callable[[], None] | None = None, skip_summary: int | None = None,
) -> RegistryModel | None:
    """Journal an alias change, make it in the registry (*change*; None when the registry
    has made it already, as deleting a version does), record it in the alias history, refresh
    the descriptions that show it (but *skip_summary*'s) and tell the plugins. *model_tags*
    are the model's tags from before the change (read again when None). Returns the model as
    read after the change, None when there was nothing to change."""
    after: RegistryModel | None = None
    # Setting an alias where it already points changes nothing, and records nothing.
    if previous != version or action != "set":
        who = author()
        entry = journal(keep, name, OP_ALIAS, {
            "alias": alias, "action": action, "version": version,
            "snapshot": snapshot_id if version is not None else None}, who)
        # One time for the journal and the history, so a rebuild reproduces the history.
        event = aliases_mod.AliasEvent(alias, version, entry.time[:19] + "Z", who, action)
        if change is not None:
            with journaled(keep, entry):
                change()
        key = aliases_mod.HISTORY_TAG + alias
        if model_tags is None:
            model_tags = keep.registry.get_model(name).tags
        events = aliases_mod.decode(alias, model_tags.get(key))
        events.append(event)
        keep.registry.set_model_tag(name, key, aliases_mod.encode(events))
        after = after_alias_change(keep, name, (previous, version), skip=skip_summary)
    caller = keep.hook.modelkeep_after_alias_change
    if caller.get_hookimpls():
        caller(name=name, alias=alias, version=version, previous=previous, action=action,
               keep=keep)
    return after


def set_alias(keep: Keep, ref: str | ModelVersion, alias: str) -> ModelVersion:
    """Point *alias* at the version *ref* names, once every plugin accepts it.

    *ref* may also be a :class:`ModelVersion` this Keep returned (training retention does
    that): the same checks, journal entry and history, without resolving it again.
    """
    alias = validate_alias(alias)
    sid: str | None
    if isinstance(ref, ModelVersion):
        name, number, tags, sid = ref.name, ref.version, ref.tags, ref.snapshot_id
    else:
        rv = resolve(keep, ref)
        name, number, tags, sid = rv.name, rv.version, rv.tags, snapshot_of(rv)
    model = keep.registry.get_model(name)
    check_alias(keep, name, alias, number, tags, registering=False, model=model)
    move_alias(keep, name, alias, number, snapshot_id=sid, model=model)
    if isinstance(ref, ModelVersion):
        return replace(ref, aliases=tuple(sorted({*ref.aliases, alias})))
    return get(keep, f"{name}@{number}")


def delete_alias(keep: Keep, name: str, alias: str) -> int:
    """Remove *alias* from model *name*; returns the version it pointed at."""
    validate_name(name)
    alias = validate_alias(alias)
    rv = keep.registry.get_by_alias(name, alias)
    check_alias(keep, name, alias, None, rv.tags, registering=False, action="delete")
    move_alias(keep, name, alias, None, action="delete")
    return rv.version


def rollback(keep: Keep, name: str, alias: str, to: int | None = None) -> ModelVersion:
    """Move *alias* back to the version it pointed at before (or to version *to*).

    Repeated rollbacks walk further back through the alias history
    (:mod:`modelkeep.aliases`); the plugins are asked as for any alias change.
    """
    validate_name(name)
    alias = validate_alias(alias)
    model = keep.registry.get_model(name)
    current = model.aliases.get(alias)
    if to is None:
        events = aliases_mod.decode(alias, model.tags.get(aliases_mod.HISTORY_TAG + alias))
        to = aliases_mod.rollback_target(events, current)
        if to is None:
            raise NotFoundError(
                f"alias {alias!r} of {name} has no earlier version to go back to",
                hint=Hint("see its history with {log}, or pass {to}",
                          log=Option(api=f"alias_history({name!r})", cli=f"`modelkeep log {name}`"),
                          to=Option(api="to=VERSION", cli="--to VERSION")))
    rv = keep.registry.get_version(name, to)
    check_alias(keep, name, alias, rv.version, rv.tags, registering=False, action="rollback",
                      model=model)
    move_alias(keep, name, alias, rv.version, action="rollback",
                     snapshot_id=snapshot_of(rv), model=model)
    return get(keep, f"{name}@{rv.version}")


def alias_history(keep: Keep, name: str) -> list[aliases_mod.AliasEvent]:
    """Every recorded change of every alias of *name*, oldest first."""
    validate_name(name)
    return aliases_mod.history(keep.registry.get_model(name).tags)


def describe(keep: Keep, target: str, text: str) -> None:
    """Set the description of a version (``NAME@REF``) or of a model (``NAME``); journaled
    first, so a registry rebuild restores it."""
    if len(text) > MAX_DESCRIPTION:
        raise InvalidInputError(f"description is longer than {MAX_DESCRIPTION} characters")
    rv: RegistryVersion | None = None
    if "@" in target:
        rv = resolve(keep, target)
        name, version, sid = rv.name, rv.version, snapshot_of(rv)
    else:
        name, version, sid = validate_name(target), None, None
        keep.registry.get_model(name)
    entry = journal(keep, name, OP_DESCRIPTION,
                          {"version": version, "snapshot": sid, "text": text}, author())
    with journaled(keep, entry):
        if rv is None:
            refresh_model(keep, name, user=text)
        else:
            refresh_version(keep, name, rv.version, rv=rv, user=text)


def set_tags(keep: Keep, name: str, version: int, tags: Mapping[str, str]) -> dict[str, str]:
    """Set user *tags* on an existing version; journaled first, so a registry rebuild restores
    them (the snapshot holds the tags the version was registered with). Returns the tags whose
    value changed; nothing is journaled or written when none did."""
    rv = keep.registry.get_version(name, version)
    changed = {k: v for k, v in check_tags(tags).items() if rv.tags.get(k) != v}
    sid, who = snapshot_of(rv), author()
    for key, value in changed.items():  # one entry per tag: journal members are flat
        entry = journal(keep, name, OP_TAG, {"version": version, "snapshot": sid, "key": key,
                                             "value": value}, who)
        with journaled(keep, entry):
            keep.registry.set_tag(name, version, key, value)
    return changed


def description(keep: Keep, target: str) -> str:
    """The user's description of a version (``NAME@REF``) or of a model (``NAME``), without
    the summary modelkeep generates beside it."""
    if "@" in target:
        return user_description(resolve(keep, target).description)
    return user_description(keep.registry.get_model(validate_name(target)).description)


