"""Descriptions in the registry: the one place that writes them, keeping the user's text and the
generated summary (:mod:`modelkeep.catalog.summary`) apart.

A version's summary is written once its number is known (register, promote, rebuild; a register
that knows beforehand which number the registry will give sends it with the version) and again
whenever what it shows changes: an alias set, moved, rolled back or removed (the versions the
alias left and reached, and the model's alias table). ``describe`` writes the user's part and
the summary with it. Reads give the user's part only (:func:`user_description`), so ``describe``
without ``-m`` shows what the user wrote. A description is written only when its text changes,
so refreshing twice writes once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from modelkeep.catalog import summary
from modelkeep.errors import IntegrityError, NotFoundError
from modelkeep.ops._common import load, snapshot_of

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.registry import RegistryModel, RegistryVersion
    from modelkeep.store import Snapshot, Store


def user_description(description: str) -> str:
    """What the user wrote: a registry description without the generated summary."""
    return summary.user_text(description)


def refresh_version(
    keep: Keep, name: str, version: int, *,
    rv: RegistryVersion | None = None,
    user: str | None = None,
    model: RegistryModel | None = None,
    loaded: tuple[Store, Snapshot, str] | None = None,
    signers: Sequence[str] | None = None,
) -> None:
    """Write the description of *name*@*version*: the user's text (*user*, else what the
    registry holds) and a fresh summary. *rv*, *model*, *loaded* (store, snapshot, id) and
    *signers* spare reading what the caller has in hand. A version that is gone, or that
    modelkeep did not register, is left alone."""
    try:
        if rv is None:
            rv = keep.registry.get_version(name, version)
        if snapshot_of(rv) is None:
            return
        store, snap, sid = loaded if loaded is not None else load(keep, rv)
    except (NotFoundError, IntegrityError):
        # Deleted meanwhile, or its snapshot unreadable here (another store, damaged): the
        # user's text stays, the old summary with it.
        if user is not None and rv is not None:
            _write(keep, name, version, rv.description,
                   summary.compose(user, [summary.split(rv.description)[1]]))
        return
    if rv.aliases and model is None:
        model = keep.registry.get_model(name)
    if signers is None:
        signers = store.signature_keys(sid)
    text = version_description(
        name, version, snap, sid, rv.tags, user=rv.description if user is None else user,
        signers=signers, aliases=rv.aliases, model=model)
    _write(keep, name, version, rv.description, text)


def version_description(
    name: str, version: int, snapshot: Snapshot, sid: str, tags: Mapping[str, str], *,
    user: str, signers: Sequence[str] | None, aliases: Sequence[str] = (),
    model: RegistryModel | None = None,
) -> str:
    """The description of *name*@*version*: the *user* text (a generated summary in it is
    dropped) and the summary of the version as *snapshot* (id *sid*), its registry *tags*,
    *aliases* and the *model*'s alias history show it. Register sends it with a new version
    whose number it expects (:mod:`modelkeep.ops.register`); :func:`refresh_version` writes it
    when it changed."""
    blocks = summary.version_block(
        name, version, snapshot, sid, tags, aliases=aliases,
        model_tags=model.tags if model is not None else None, signers=signers)
    return summary.compose(user, blocks)


def refresh_model(keep: Keep, name: str, *, model: RegistryModel | None = None,
                  user: str | None = None) -> None:
    """Write the description of model *name*: the user's text (*user*, else what the registry
    holds) and the alias table, from *model* as read after the change (read again if None)."""
    if model is None:
        model = keep.registry.get_model(name)
    blocks = summary.model_block(name, model.tags, model.aliases)
    text = summary.compose(model.description if user is None else user, blocks)
    _write(keep, name, None, model.description, text)


def after_alias_change(keep: Keep, name: str, versions: Sequence[int | None], *,
                       skip: int | None = None) -> RegistryModel:
    """Refresh what an alias change shows: the model's alias table and the summaries of
    *versions* (where the alias was and is; None and *skip*, a version its caller refreshes
    itself, left out). Returns the model as read after the change, for that caller."""
    model = keep.registry.get_model(name)
    refresh_model(keep, name, model=model)
    for number in dict.fromkeys(versions):
        if number is not None and number != skip:
            refresh_version(keep, name, number, model=model)
    return model


def _write(keep: Keep, name: str, version: int | None, old: str, new: str) -> None:
    # The only registry write of descriptions: unchanged text is not written again.
    if new != old:
        keep.registry.set_description(name, version, new)
