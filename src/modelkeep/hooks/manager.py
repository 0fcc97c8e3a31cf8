"""The plugin manager: built-in default plugins, then third-party plugins from entry points.

Built-in behaviour is written as ordinary plugins registered through the same hooks
(:data:`DEFAULT_PLUGINS`), so a third-party plugin can add to it, answer before it (``tryfirst``),
or replace it. Third-party plugins are the ``modelkeep`` entry-point group::

    [project.entry-points.modelkeep]
    approval = "modelkeep_approval"

``MODELKEEP_PLUGINS`` limits what loads, by entry-point (or built-in) name, comma-separated:
unset loads every installed plugin; empty loads none; ``a,b`` loads only entry points ``a`` and
``b``; ``-name`` blocks a plugin (an entry point or a built-in such as ``modelkeep.findings``) and,
alone, leaves the others loading. Naming a plugin that is not installed is an error rather than a
silent no-op, because a missing plugin may be a missing veto.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

import pluggy

from modelkeep.errors import PluginError
from modelkeep.hooks import specs
from modelkeep.hooks._markers import PROJECT

if TYPE_CHECKING:
    from importlib import metadata

ENTRY_POINT_GROUP = "modelkeep"
ENV = "MODELKEEP_PLUGINS"
# name -> module; registered first, so every other plugin is called before them. Modules are named
# by string and imported only when a manager is built, so hooks/ imports no adapter (MLflow's
# plugin among them) at import time; adapters join through the hooks like any third party.
DEFAULT_PLUGINS: dict[str, str] = {
    "modelkeep.findings": "modelkeep.hooks.builtin",
    "modelkeep.policies": "modelkeep.policy.plugin",
    "modelkeep.mlflow": "modelkeep.plugins.mlflow.hooks",
    "modelkeep.git": "modelkeep.plugins.git",
    "modelkeep.dvc": "modelkeep.plugins.dvc",
    "modelkeep.pointers": "modelkeep.plugins.pointers",
    "modelkeep.replication": "modelkeep.plugins.replication",
    "modelkeep.scanner": "modelkeep.plugins.scanner",
}


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin, for ``modelkeep plugins``."""

    name: str
    origin: str  # "builtin", "entry point" or "registered"
    module: str
    distribution: str | None  # "package version" for entry points
    hooks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "module": self.module,
                "distribution": self.distribution, "hooks": list(self.hooks)}


class PluginManager(pluggy.PluginManager):
    """A pluggy manager for the ``modelkeep`` namespace that remembers where plugins came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(specs)
        self._origins: dict[str, tuple[str, str | None]] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        try:
            registered = super().register(plugin, name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"cannot register plugin {name or plugin!r}: {exc}",
                              hint="fix the plugin's hook names and arguments") from None
        if registered is not None:
            self._origins.setdefault(registered, ("registered", None))
        return registered

    def plugins_info(self) -> list[PluginInfo]:
        """Every registered plugin with the hooks it implements, in registration order."""
        out = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:  # blocked
                continue
            origin, dist = self._origins.get(name, ("registered", None))
            hooks = tuple(sorted(c.name for c in self.get_hookcallers(plugin) or ()))
            module = getattr(plugin, "__name__", None) or type(plugin).__module__
            out.append(PluginInfo(name, origin, module, dist, hooks))
        return out


def _parse_selection(value: str | None) -> tuple[set[str] | None, set[str]]:
    """(allowed entry-point names or None for all, blocked names) from ``MODELKEEP_PLUGINS``."""
    if value is None:
        return None, set()
    names = [n.strip() for n in value.split(",") if n.strip()]
    blocked = {n[1:] for n in names if n.startswith("-")}
    allowed = {n for n in names if not n.startswith("-")}
    if not allowed and blocked:
        return None, blocked
    return allowed, blocked


def make_plugin_manager(
    *, entry_points: bool = True, selection: str | None = None, use_env: bool = True
) -> PluginManager:
    """A new manager with the built-in plugins and (if *entry_points*) installed plugins.

    :param entry_points: Load the ``modelkeep`` entry-point group.
    :param selection: A ``MODELKEEP_PLUGINS``-style selection; by default the environment's.
    :param use_env: Read ``MODELKEEP_PLUGINS`` when *selection* is None.
    """
    if selection is None and use_env:
        selection = os.environ.get(ENV)
    allowed, blocked = _parse_selection(selection)
    pm = PluginManager()
    for name in blocked:
        pm.set_blocked(name)
    for name, module_name in DEFAULT_PLUGINS.items():
        if name in blocked:
            continue
        pm.register(import_module(module_name), name)
        pm._origins[name] = ("builtin", None)
    # An empty selection spares reading every installed distribution's metadata.
    if entry_points and allowed != set():
        _load_entry_points(pm, allowed, blocked)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}",
                          hint="check the hook names in `modelkeep.hooks.specs`") from None
    return pm


def _installed_entry_points() -> dict[str, metadata.EntryPoint]:
    """The ``modelkeep`` entry points of the installed distributions, by name.

    ``metadata.entry_points(group=...)`` parses every entry point of every distribution (a
    few hundred in an environment with MLflow or DVC), every command, and importing
    ``importlib.metadata`` alone costs about 14 ms; a distribution names the group only in a
    ``[modelkeep]`` line of its entry_points.txt, so the files are read first
    (:func:`_names_the_group`) and importlib asked only when one has it (usually none do)."""
    if not _names_the_group(f"[{ENTRY_POINT_GROUP}]"):
        return {}
    from importlib import metadata

    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _names_the_group(header: str) -> bool:
    """Whether an entry_points.txt of a distribution on ``sys.path`` (its ``*.dist-info`` and
    ``*.egg-info`` folders, where importlib finds them) contains *header*; True for a path entry
    that is a file (a zip or an egg), which importlib reads itself."""
    for entry in sys.path:
        folder = entry or "."
        try:
            with os.scandir(folder) as found:
                infos = [e.path for e in found if e.name.endswith((".dist-info", ".egg-info"))]
        except NotADirectoryError:
            return True
        except OSError:
            continue  # not there (a missing zip of the standard library, say)
        for info in infos:
            try:
                with open(os.path.join(info, "entry_points.txt"), encoding="utf-8",
                          errors="replace") as f:
                    if header in f.read():
                        return True
            except OSError:
                continue
    return False


def _load_entry_points(pm: PluginManager, allowed: set[str] | None, blocked: set[str]) -> None:
    found = _installed_entry_points()
    if allowed is not None:
        missing = sorted(allowed - found.keys() - DEFAULT_PLUGINS.keys())
        if missing:
            installed = ", ".join(sorted(found)) or "none"
            raise PluginError(f"{ENV} names plugin {missing[0]!r}, which is not installed",
                              hint=f"installed plugins: {installed}")
    for name, ep in sorted(found.items()):
        if name in blocked or (allowed is not None and name not in allowed):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r} ({ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}",
                              hint=f"fix or uninstall it, or leave it out with {ENV}=-{name}"
                              ) from exc
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name)
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else None
        pm._origins[name] = ("entry point", dist)


_lock = threading.Lock()
_shared: dict[str | None, PluginManager] = {}


def get_plugin_manager() -> PluginManager:
    """The process-wide manager that :func:`modelkeep.open` and the CLI use.

    Built once per value of ``MODELKEEP_PLUGINS`` (loading entry points imports plugins, which is
    worth doing once); pass a manager of your own to ``modelkeep.open(plugins=…)`` to use others.
    """
    key = os.environ.get(ENV)
    with _lock:
        pm = _shared.get(key)
        if pm is None:
            pm = _shared[key] = make_plugin_manager(selection=key)
        return pm
