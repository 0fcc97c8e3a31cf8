"""Reading versions: look-ups, listing (every version or the newest), one file and verify
(diff is :mod:`.diff`'s).

Each function resolves the reference once through the registry, then reads the store the
version's URI names through the Keep's store and snapshot cache (:class:`~modelkeep.wiring.Stores`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from modelkeep import aliases as aliases_mod
from modelkeep.catalog import deletions
from modelkeep.catalog.tags import TAG_PREFIX
from modelkeep.errors import ALL_VERSIONS, Hint, InvalidInputError, NotFoundError
from modelkeep.ops._common import latest_without_aliases, load, resolve, version_of
from modelkeep.ops.results import Model, ModelLog, VersionList
from modelkeep.refs import validate_name
from modelkeep.store import (
    parse_uri,
)

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.registry import RegistryModel, RegistryVersion
    from modelkeep.store import (
        Snapshot,
        SnapshotFile,
        Store,
        VerifyReport,
    )

Progress = Callable[[int], None]


def tensor_counts(keep: Keep, mv: ModelVersion) -> dict[str, int]:
    """How many tensors each safetensors file of *mv* holds whose snapshot entry leaves its map
    in the file's header (docs/format.md §5.4: files of more than 4,096 tensors): read from
    the stored header, since the version's own listing has no count for them."""
    missing = [f for f in mv.files if f.tensors is None and f.header_end is not None]
    if not missing:
        return {}
    store = keep.stores.store_for(parse_uri(mv.uri).locator)
    return {f.path: len(store.tensor_map(f) or ()) for f in missing}


def get(keep: Keep, ref: str) -> ModelVersion:
    """The version *ref* names (``NAME@3``, ``NAME@alias``, ``NAME@latest`` or ``NAME``)."""
    rv = resolve(keep, ref)
    _store, snap, sid = load(keep, rv)
    return version_of(rv, snap, sid)


def snapshot(keep: Keep, ref: str) -> Snapshot:
    return load(keep, resolve(keep, ref))[1]


def snapshot_at(keep: Keep, uri: str) -> tuple[Store, Snapshot]:
    """The store and snapshot a ``modelkeep://`` URI names, without asking the registry
    (pointer files carry URIs, and must resolve even where the registry was rebuilt)."""
    parsed = parse_uri(uri)
    store = keep.stores.store_for(parsed.locator)
    # A URI may carry a unique prefix of the id, as `show` and `log` print it.
    return store, keep.stores.snapshot(store, store.resolve_snapshot_id(parsed.snapshot_id))


def versions(keep: Keep, name: str) -> list[ModelVersion]:
    """Every version of *name*, oldest first."""
    return list(version_list(keep, name).versions)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InvalidInputError(f"invalid limit {limit}: it must be at least 1",
                                hint=Hint("pass {all} for every version", all=ALL_VERSIONS))


def _newest(keep: Keep, name: str, limit: int | None) -> tuple[list[RegistryVersion], bool]:
    """The registry's *limit* newest versions of *name* (every one when None), oldest first,
    and whether older ones exist."""
    _check_limit(limit)
    newest = getattr(keep.registry, "newest_versions", None)
    if limit is None:
        return keep.registry.versions(name), False
    if newest is not None:
        found, truncated = newest(name, limit)
        return list(found), bool(truncated)
    found = keep.registry.versions(name)
    return found[-limit:], len(found) > limit


def _loaded(keep: Keep, name: str, found: list[RegistryVersion], truncated: bool,
            limit: int | None) -> VersionList:
    def one(rv: RegistryVersion) -> ModelVersion | None:
        try:
            _s, snap, sid = load(keep, rv)
        except NotFoundError:
            return None  # a version some other tool registered under this name
        return version_of(rv, snap, sid)

    # Snapshots are small but each is a round trip on an object store: fetch them together.
    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-list") as pool:
        loaded = list(pool.map(one, found))
    return VersionList(name=name, versions=tuple(v for v in loaded if v is not None),
                       truncated=truncated, limit=limit)


def version_list(keep: Keep, name: str, limit: int | None = None) -> VersionList:
    """The *limit* newest versions of *name* (every one when None), oldest first.

    A registry that pages from the newest (the optional ``newest_versions``) reads only those:
    an MLflow server's answer costs per version returned, 1.5 s for a thousand."""
    validate_name(name)
    found, truncated = _newest(keep, name, limit)
    return _loaded(keep, name, found, truncated, limit)


def history(keep: Keep, name: str, limit: int | None = None) -> ModelLog:
    """The model *name*, its *limit* newest versions (every one when None), its alias changes
    and deleted versions: the model is read once (aliases, description and both histories are
    on it), beside the versions (in one call where the registry has ``model_with_newest``), and
    its newest version is the newest listed, so a server is asked two requests, not seven."""
    validate_name(name)
    _check_limit(limit)
    both = getattr(keep.registry, "model_with_newest", None)
    if both is not None and limit is not None:
        rm, found, truncated = both(name, limit)
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="modelkeep-log") as pool:
            asked = pool.submit(keep.registry.get_model, name)
            found, truncated = _newest(keep, name, limit)
            rm = asked.result()
    listing = _loaded(keep, name, found, truncated, limit)
    return ModelLog(model=_model_of(rm, found[-1].version if found else None),
                    versions=listing,
                    alias_history=tuple(aliases_mod.history(rm.tags)),
                    deletions=tuple(deletions.decode(rm.tags.get(deletions.TAG))))


def models(keep: Keep) -> list[str]:
    return keep.registry.models()


def model(keep: Keep, name: str) -> Model:
    """The registered model *name*: newest version, aliases, description and user tags."""
    validate_name(name)
    rm = keep.registry.get_model(name)
    latest = latest_without_aliases(keep, name)  # its number is all this shows
    return _model_of(rm, latest.version if latest else None)


def _model_of(rm: RegistryModel, latest: int | None) -> Model:
    return Model(name=rm.name, latest=latest, aliases=dict(rm.aliases),
                 description=rm.description,
                 tags={k: v for k, v in rm.tags.items() if not k.startswith(TAG_PREFIX)})


def all_models(keep: Keep) -> list[Model]:
    """Every registered model, by name: in one search where the registry lists each model with
    its newest version (``model_list``), else model by model."""
    model_list = getattr(keep.registry, "model_list", None)
    if model_list is not None:
        return [_model_of(rm, latest) for rm, latest in model_list()]

    def one(name: str) -> Model | None:
        try:
            return model(keep, name)
        except NotFoundError:
            return None  # deleted meanwhile

    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-models") as pool:
        return [m for m in pool.map(one, keep.registry.models()) if m is not None]


def open_file(keep: Keep, ref: str, path: str) -> SnapshotFile:
    """A seekable, read-only binary stream of one file that fetches only the chunks read."""
    store, snap, _sid = load(keep, resolve(keep, ref))
    return store.open_file(snap, path)


def verify(keep: Keep, ref: str | None = None, progress: Progress | None = None) -> VerifyReport:
    """Fetch and check every chunk of one version, or of every snapshot in the store."""
    if ref is None:
        return keep.store.verify(progress=progress)
    rv = resolve(keep, ref)
    parsed = parse_uri(rv.source)
    return keep.stores.store_for(parsed.locator).verify([parsed.snapshot_id], progress=progress)
