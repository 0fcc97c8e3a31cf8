"""Reading versions: look-ups, listing, one file and verify (diff is :mod:`.diff`'s).

Each function resolves the reference once through the registry, then reads the store the
version's URI names through the Keep's store and snapshot cache (:class:`~modelkeep.wiring.Stores`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from modelkeep.catalog.tags import TAG_PREFIX
from modelkeep.errors import NotFoundError
from modelkeep.ops._common import load, resolve, version_of
from modelkeep.ops.results import Model, ModelVersion
from modelkeep.refs import validate_name
from modelkeep.registry import RegistryVersion
from modelkeep.store import (
    Snapshot,
    SnapshotFile,
    Store,
    VerifyReport,
    parse_uri,
)

if TYPE_CHECKING:
    from modelkeep.keep import Keep

Progress = Callable[[int], None]


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
    validate_name(name)

    def one(rv: RegistryVersion) -> ModelVersion | None:
        try:
            _s, snap, sid = load(keep, rv)
        except NotFoundError:
            return None  # a version some other tool registered under this name
        return version_of(rv, snap, sid)

    # Snapshots are small but each is a round trip on an object store: fetch them together.
    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-list") as pool:
        loaded = list(pool.map(one, keep.registry.versions(name)))
    return [v for v in loaded if v is not None]


def models(keep: Keep) -> list[str]:
    return keep.registry.models()


def model(keep: Keep, name: str) -> Model:
    """The registered model *name*: newest version, aliases, description and user tags."""
    validate_name(name)
    rm = keep.registry.get_model(name)
    latest = keep.registry.latest(name)
    return Model(name=rm.name, latest=latest.version if latest else None,
                 aliases=dict(rm.aliases), description=rm.description,
                 tags={k: v for k, v in rm.tags.items() if not k.startswith(TAG_PREFIX)})


def all_models(keep: Keep) -> list[Model]:
    """Every registered model, by name."""

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
