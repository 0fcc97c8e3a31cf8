"""The one place where exceptions become a message and an exit code.

A :class:`~modelkeep.errors.ModelkeepError` prints ``error: <message> (<hint>)`` on one line of
stderr and exits with the error's code. Anything else is a bug or an unrecognised backend failure:
it prints one line too, unless ``MODELKEEP_DEBUG=1`` asks for the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

from modelkeep.errors import ModelkeepError

UNEXPECTED_EXIT = 70  # EX_SOFTWARE


def debug_enabled() -> bool:
    return os.environ.get("MODELKEEP_DEBUG", "").lower() not in ("", "0", "false", "no")


def report(exc: BaseException) -> int:
    """Print *exc* for a person and return the exit code."""
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ModelkeepError):
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print("error: interrupted; nothing partial was registered", file=sys.stderr)
        return 130
    hint = "" if debug_enabled() else " (set MODELKEEP_DEBUG=1 for the traceback)"
    print(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))}{hint}", file=sys.stderr)
    return UNEXPECTED_EXIT


def _one_line(text: str) -> str:
    from modelkeep.redaction import redact_url

    # Backend exceptions may quote a URL with its password; modelkeep's own are redacted already.
    line = redact_url(" ".join(text.split()))
    return line if len(line) <= 500 else line[:497] + "..."
