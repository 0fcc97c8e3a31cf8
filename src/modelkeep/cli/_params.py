"""Converting command-line values to the plain Python types modelkeep's commands take, cheaply.

Typer (0.2x) converts every parameter's value through a pydantic validator it builds when the
command runs, whatever the value: even an option left out costs its validator, so any command
imported pydantic and built a handful of validators, about 50 ms of a 0.3 s command. The values
modelkeep's commands take are nearly all text, lists of text, flags and small whole numbers,
whose conversion is the value itself or ``int()``. :func:`install` gives each such parameter a
converter that does just that for values it can answer without doubt, and hands anything else
(an out-of-range number, text that is not valid UTF-8, a path, a choice) to Typer's own
converter, built on first use, so every error message stays Typer's. A Typer without these
internals (older or newer versions) is left as it is.
"""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

# Digits without sign, spaces or underscores: the ints whose meaning no parser disputes.
_PLAIN_INT = re.compile(r"0|[1-9][0-9]{0,17}")
_UNANSWERED = object()


def install(command: Any) -> None:
    """Give the plain-typed parameters of *command* and its subcommands the cheap converter."""
    for param in getattr(command, "params", ()):
        _convert_plainly(param)
    if hasattr(command, "get_help_option"):
        # ``--help`` is made on first use, for the invoked command alone; it is converted too.
        made = command.get_help_option

        def get_help_option(ctx: Any) -> Any:
            option = made(ctx)
            _convert_plainly(option)
            return option

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        install(sub)


def _convert_plainly(param: Any) -> None:
    if _is_plain(param):
        param._runtime_param = _PlainConversion(param)


def _is_plain(param: Any) -> bool:
    if getattr(param, "_runtime_param", _UNANSWERED) is not None:
        return False  # not Typer's lazily converted parameter, or converted already
    desc: Any = getattr(param, "type_descriptor", None)
    info = getattr(desc, "parameter_info", None)
    if info is None or getattr(info, "parser", None) is not None:
        return False
    annotation = desc.annotation
    if get_origin(annotation) is list:
        return get_args(annotation) == (str,)
    if annotation is int:
        return not getattr(info, "clamp", False)
    return annotation is str or annotation is bool


class _PlainConversion:
    """What Typer's converter returns for a str, list[str], int or bool parameter, for the values
    it accepts without question; Typer's own converter for every other value."""

    def __init__(self, param: Any) -> None:
        self._annotation = param.type_descriptor.annotation
        self._info = param.type_descriptor.parameter_info
        self._typer: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multiple = param.multiple or param.nargs == -1
        if value is None:
            return () if multiple else None
        answer = _UNANSWERED
        if self._annotation is str:
            answer = _text(value)
        elif self._annotation is int:
            answer = self._int(value)
        elif self._annotation is bool:
            answer = value if type(value) is bool else _UNANSWERED
        elif isinstance(value, list | tuple):  # list[str]
            items = [_text(v) for v in value]
            if _UNANSWERED not in items:
                answer = items
        if answer is not _UNANSWERED and not (multiple and isinstance(value, str)):
            return answer
        if self._typer is None:
            from typer._coercion import build_runtime_param

            self._typer = build_runtime_param(param.type_descriptor)
        return self._typer.coerce(value, param=param, ctx=ctx)

    def _int(self, value: Any) -> Any:
        if isinstance(value, str) and _PLAIN_INT.fullmatch(value):
            number = int(value)
        elif type(value) is int:
            number = value
        else:
            return _UNANSWERED
        low, high = self._info.min, self._info.max
        if (low is not None and number < low) or (high is not None and number > high):
            return _UNANSWERED  # Typer words the refusal
        return number


def _text(value: Any) -> Any:
    if type(value) is not str:
        return _UNANSWERED
    try:
        value.encode("utf-8")  # a lone surrogate from undecodable argv bytes is Typer's to judge
    except UnicodeEncodeError:
        return _UNANSWERED
    return value
