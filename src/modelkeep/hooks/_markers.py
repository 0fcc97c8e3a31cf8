"""The pluggy markers of the ``modelkeep`` hook namespace, apart so that importing them is cheap."""

from __future__ import annotations

import pluggy

PROJECT = "modelkeep"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
