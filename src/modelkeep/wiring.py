"""Opening things: :func:`open` (a :class:`~modelkeep.keep.Keep` from the arguments, the
environment or modelkeep.toml), :func:`open_store` (the store alone) and :func:`track` (a
training run's :class:`~modelkeep.training.Tracker`).

The stores a Keep reads from and the snapshots it parsed are cached in one place,
:class:`modelkeep.stores.Stores`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.config import load_config
from modelkeep.errors import PluginError
from modelkeep.training import Tracker

# The store (fsspec, blake3) is imported when something is opened: `modelkeep.track` must stay
# cheap to reach from a training script that has not started yet.
if TYPE_CHECKING:
    from modelkeep.config import Config
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.keep import Keep
    from modelkeep.registry import Registry
    from modelkeep.store import Store


def open(
    store: str | None = None,
    registry: str | Registry | None = None,
    *,
    store_options: Mapping[str, Any] | None = None,
    config: Config | None = None,
    plugins: PluginManager | None = None,
    signing_key: str | os.PathLike[str] | None = None,
) -> Keep:
    """Open the store and registry named by the arguments, the environment or modelkeep.toml.

    *store* is a store name from ``[stores.NAME]`` or a URL; *plugins* a plugin manager
    (default: the process-wide one, with the plugins ``MODELKEEP_PLUGINS`` selects);
    *signing_key* the Ed25519 private key file that signs every snapshot written (default:
    ``MODELKEEP_SIGNING_KEY``, else the store option ``signing_key``; see
    :mod:`modelkeep.signing`).
    """
    from modelkeep.hooks.manager import get_plugin_manager
    from modelkeep.keep import Keep
    from modelkeep.signing import SIGNING_KEY_ENV

    config = config or load_config()
    pm = plugins if plugins is not None else get_plugin_manager()
    the_store, options, option_key = _open_store(config, pm, store, store_options)
    signing_key = signing_key or os.environ.get(SIGNING_KEY_ENV) or option_key
    the_registry: Registry | None
    if isinstance(registry, str) or registry is None:
        uri = registry or config.registry
        the_registry = pm.hook.modelkeep_registry(uri=uri)
        if the_registry is None:
            raise PluginError(f"no plugin provides a registry for {uri or 'the default URI'!r}",
                              hint="unblock modelkeep.mlflow in MODELKEEP_PLUGINS, or install "
                              "the plugin for this registry")
    else:
        the_registry = registry
    return Keep(the_store, the_registry, store_options=options, plugins=pm,
                named_stores=config.stores.values(), config=config,
                signing_key=signing_key, policies=config.policy_set)


def open_store(
    store: str | None = None,
    *,
    store_options: Mapping[str, Any] | None = None,
    config: Config | None = None,
    plugins: PluginManager | None = None,
) -> Store:
    """The store :func:`open` would use, without a registry (for store maintenance such as key
    rotation): the same settings, plugin storage options and key sources."""
    from modelkeep.hooks.manager import get_plugin_manager

    pm = plugins if plugins is not None else get_plugin_manager()
    return _open_store(config or load_config(), pm, store, store_options)[0]
def _open_store(
    config: Config, pm: PluginManager, store: str | None, store_options: Mapping[str, Any] | None
) -> tuple[Store, dict[str, Any], str | None]:
    """The store, its filesystem options, and the signing key named in them (modelkeep's
    option, never passed to the filesystem)."""
    from modelkeep.signing import SIGNING_KEY_OPTION
    from modelkeep.store import Store
    from modelkeep.store.location import parse_location
    from modelkeep.stores import hook_keys, merge_options, plugin_options

    choice = config.resolve_store(store)
    options = merge_options(choice.options, store_options or {})
    location = parse_location(choice.url)
    options = plugin_options(pm, location.protocol, choice.url, choice.name, options)
    option_key = options.pop(SIGNING_KEY_OPTION, None)
    the_store = Store.open(choice.url, options, keys=hook_keys(pm, choice.url, choice.name))
    return the_store, options, option_key


def track(
    name: str,
    *,
    keep: Keep | None = None,
    store: str | None = None,
    registry: str | None = None,
    store_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Tracker:
    """A :class:`Tracker` for *name*, usable as a context manager that flushes on exit::

        with modelkeep.track("mnist", every=100, monitor="val_loss", keep_last=3) as run:
            for step in range(steps):
                ...
                if run.due(step, {"val_loss": val_loss}):
                    torch.save(model.state_dict(), "ckpt/model.pt")
                    run.checkpoint("ckpt", step=step, metrics={"val_loss": val_loss})

    *keep* defaults to ``modelkeep.open(store, registry, store_options=...)``; *options* are
    :class:`Tracker`'s (``every``, ``monitor``, ``mode``, ``keep_last``, ``parent`` …).
    """
    if keep is None:
        keep = open(store, registry, store_options=store_options)
    return Tracker(keep, name, **options)


def fetch(ref: str, *, cache: bool = True, **open_kwargs: Any) -> Path:
    """The local, read-only folder of the version *ref* names, through the shared read cache::

        model = AutoModel.from_pretrained(modelkeep.fetch("bert@champion"))

    *open_kwargs* are :func:`open`'s (``store``, ``registry``, ``store_options`` …); *cache*
    false reads without the cache into a new private folder (see :meth:`Keep.fetch`).
    """
    return open(**open_kwargs).fetch(ref, cache=cache)
