"""The state every command shares: the global options (store, registry, output mode, plugins)
and the :class:`~modelkeep.keep.Keep` they open, made once per invocation on first use; and
:func:`settled`, how the start-up's long-lived objects are kept from the cyclic collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
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
    # This invocation is the whole process (the console script, not a call of main(argv)).
    whole_process: bool = False
    _keep: Keep | None = None

    def keep(self) -> Keep:
        if self._keep is None:
            import modelkeep

            # Opening imports the store and the API (fsspec among them).
            with settled(freeze=self.whole_process):
                self._keep = modelkeep.open(store=self.store, registry=self.registry,
                                            plugins=self.plugins)
        return self._keep


def state(ctx: typer.Context, json_out: bool = False) -> State:
    """The invocation's state; *json_out* (a command's own ``--json``) switches output to JSON."""
    st = ctx.ensure_object(State)
    if json_out:
        st.out.json = True
    return st


@contextmanager
def settled(*, freeze: bool) -> Iterator[None]:
    """Pause the cyclic collector while the start-up makes its objects (modules, the command
    tree, the opened store): thousands that live as long as the process, which the collector,
    left on, walks again and again for nothing, and once more in its first collections after.
    With *freeze* (the process ends with this command) they then leave its sight for good
    (:func:`gc.freeze`), as everything does when the command returns: about 10 ms of a command.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if collecting:
            gc.enable()
