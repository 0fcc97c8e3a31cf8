"""Extension points: the ``modelkeep`` pluggy namespace.

Write a plugin with :data:`hookimpl` (the hooks and their arguments are documented in
:mod:`modelkeep.hooks.specs`) and publish it under the ``modelkeep`` entry-point group::

    from modelkeep.hooks import hookimpl

    @hookimpl
    def modelkeep_before_alias_change(alias, tags):
        if alias == "production" and "approved-by" not in tags:
            return "production needs an approved-by tag"

Importing this package is cheap (pluggy only); the manager loads when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelkeep.hooks._markers import hookimpl, hookspec
from modelkeep.hooks._types import Finding

if TYPE_CHECKING:
    from modelkeep.hooks.manager import (
        PluginInfo,
        PluginManager,
        get_plugin_manager,
        make_plugin_manager,
    )

_LAZY = {"PluginInfo", "PluginManager", "get_plugin_manager", "make_plugin_manager"}


def __getattr__(name: str) -> Any:
    # The manager reads installed distributions' metadata; only pay for it when plugins load.
    if name in _LAZY:
        from modelkeep.hooks import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'modelkeep.hooks' has no attribute {name!r}")


__all__ = [
    "Finding",
    "PluginInfo",
    "PluginManager",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "make_plugin_manager",
]
