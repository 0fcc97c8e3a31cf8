"""The state every command shares: the global options (store, registry, output mode, plugins)
and the :class:`~modelkeep.keep.Keep` they open, made once per invocation on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from modelkeep.cli._output import Output

if TYPE_CHECKING:
    from modelkeep.hooks.manager import PluginManager
    from modelkeep.keep import Keep


@dataclass
class State:
    store: str | None = None
    registry: str | None = None
    out: Output = field(default_factory=Output)
    plugins: PluginManager | None = None
    _keep: Keep | None = None

    def keep(self) -> Keep:
        if self._keep is None:
            import modelkeep

            self._keep = modelkeep.open(store=self.store, registry=self.registry,
                                        plugins=self.plugins)
        return self._keep


def state(ctx: typer.Context, json_out: bool = False) -> State:
    """The invocation's state; *json_out* (a command's own ``--json``) switches output to JSON."""
    st = ctx.ensure_object(State)
    if json_out:
        st.out.json = True
    return st
