"""Where versions are read from: the store a version's URI names, opened with the right
options, and :class:`Stores`, the one store cache and the one bounded snapshot cache of a
:class:`~modelkeep.keep.Keep`.

A version's URI names the store it lives in (``modelkeep://LOCATOR/@SNAPSHOT``); that store is
opened with the options of the configured store it is, else the default store's options when on
the same backend, under the options plugins provide (:func:`open_locator`). Snapshots are
immutable and named by their hash, so a cache of parsed ones never goes stale; it is bounded so
that a long-lived process listing many models does not grow without end.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from modelkeep.errors import PluginError, StoreError
from modelkeep.signing import SIGNING_KEY_OPTION
from modelkeep.store.location import location_from_locator, parse_location

if TYPE_CHECKING:
    from modelkeep.config import StoreConfig
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.store import Snapshot, Store

SNAPSHOTS_KEPT = 256  # parsed snapshots kept per cache; one is a few KB to a few MB


def merge_options(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """*over* wins; nested tables (``client_kwargs``) are merged one level deep."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def plugin_options(
    pm: PluginManager, protocol: str, url: str, name: str | None, explicit: Mapping[str, Any]
) -> dict[str, Any]:
    """Storage options from plugins under the explicit ones (the first plugin answering wins),
    with a sign-in ``identity`` turned into the filesystem's credential
    (:mod:`modelkeep.auth.stores`)."""
    from modelkeep.auth.stores import storage_options

    merged: dict[str, Any] = {}
    for answer in reversed(pm.hook.modelkeep_storage_options(
            protocol=protocol, url=url, store_name=name)):
        merged = merge_options(merged, answer)
    return storage_options(protocol, merge_options(merged, explicit))


def open_locator(
    locator: str,
    plugins: PluginManager,
    named_stores: Iterable[StoreConfig],
    default_protocol: str,
    default_options: Mapping[str, Any],
) -> Store:
    """The store at *locator* (from a version's URI), opened with the options of the configured
    store it is, else the default store's options when on the same backend, under the options
    plugins provide."""
    protocol = locator.split("/", 1)[0]
    named = _named_store(named_stores, locator)
    explicit: Mapping[str, Any]
    if named is not None:
        url, name, explicit = named.url, named.name, named.options
    else:
        url, name = location_from_locator(locator).url, None
        explicit = default_options if protocol == default_protocol else {}
    options = plugin_options(plugins, protocol, url, name, explicit)
    options.pop(SIGNING_KEY_OPTION, None)  # modelkeep's, not the filesystem's
    from modelkeep.store import Store  # the object layer, imported by what opens a store

    return Store.from_locator(locator, options, keys=hook_keys(plugins, url, name))


def hook_keys(
    pm: PluginManager, url: str, name: str | None
) -> Callable[[], list[tuple[bytes, str]]]:
    """The keys ``modelkeep_provide_keys`` offers for a store, asked only when the store turns
    out to be encrypted (a KMS call costs time, and plain stores never need it)."""

    def ask() -> list[tuple[bytes, str]]:
        answer = pm.hook.modelkeep_provide_keys(url=url, store_name=name)
        if not answer:
            return []
        if not isinstance(answer, Mapping):
            raise PluginError("a modelkeep_provide_keys plugin returned something other than "
                              "a mapping of key id to key", hint="return {key_id: key_bytes}")
        return [(key, f"key provider key {str(kid)[:64]!r}") for kid, key in answer.items()]

    return ask


def _named_store(named_stores: Iterable[StoreConfig], locator: str) -> StoreConfig | None:
    for named in named_stores:
        try:
            if parse_location(named.url).locator == locator:
                return named
        except StoreError:
            continue  # a bad URL in a store not in use; it reports itself when used
    return None



class Stores:
    """The stores a Keep reads from, by locator, and the snapshots it parsed, by id (bounded,
    least recently used first out). Thread-safe: listing loads snapshots from a thread pool."""

    def __init__(
        self,
        home: Store,
        plugins: PluginManager,
        named_stores: Iterable[StoreConfig],
        options: Mapping[str, Any],
        kept: int = SNAPSHOTS_KEPT,
    ) -> None:
        self.home = home
        self.plugins = plugins
        self.named = tuple(named_stores)
        self.options = dict(options)
        self._kept = kept
        self._stores: dict[str, Store] = {home.location.locator: home}
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def store_for(self, locator: str) -> Store:
        """The store a version's URI names: ours, or another one reachable with our options."""
        with self._lock:
            store = self._stores.get(locator)
            if store is None:
                store = open_locator(locator, self.plugins, self.named,
                                     self.home.location.protocol, self.options)
                self._stores[locator] = store
            return store

    def snapshot(self, store: Store, sid: str) -> Snapshot:
        """Snapshot *sid* of *store*, parsed once (verified against its id when loaded)."""
        with self._lock:
            snap = self._snapshots.get(sid)
            if snap is not None:
                self._snapshots.move_to_end(sid)
                return snap
        snap = store.load_snapshot(sid)
        self.remember(sid, snap)
        return snap

    def remember(self, sid: str, snap: Snapshot) -> None:
        """Cache a snapshot this process wrote (it is known good: its id is its hash)."""
        with self._lock:
            self._snapshots[sid] = snap
            self._snapshots.move_to_end(sid)
            while len(self._snapshots) > self._kept:
                self._snapshots.popitem(last=False)

    def forget(self, sid: str) -> None:
        with self._lock:
            self._snapshots.pop(sid, None)
