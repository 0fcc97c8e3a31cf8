"""Names a package exports but imports on first use (PEP 562), so importing the package itself
stays cheap: ``modelkeep`` (the API pulls in the store) and ``modelkeep.store`` (whose parts pull
in fsspec, asyncio and the codecs). A leaf: it imports nothing of modelkeep."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, where: Mapping[str, str], into: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *package* that imports each name from its module in *where*
    on first use and keeps it in the package's namespace *into* (``globals()``)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        into[name] = value  # found once: an attribute like any other from then on
        return value

    return __getattr__
