"""The one place where exceptions become a message and an exit code.

A :class:`~modelkeep.errors.ModelkeepError` prints ``error: <message> (<hint>)`` on one line of
stderr, the hint naming command-line flags where the API's wording names keywords
(:meth:`~modelkeep.errors.ModelkeepError.for_cli`), and exits with the error's code; under
``--json`` the same error is one JSON object on stderr (``{"error": {"type", "message", "hint",
"exit_code"}}``), with the same exit code. A full disk or a read-only file system is one line
too, with the store's exit code and what to do. Anything else is a bug or an unrecognised
backend failure: it prints one line too, unless
``MODELKEEP_DEBUG=1`` asks for the traceback.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback

from modelkeep.errors import ModelkeepError, StoreError

UNEXPECTED_EXIT = 70  # EX_SOFTWARE
STORE_EXIT = StoreError.exit_code
# Local file-system faults: what the disk said, in words, and what to do about it.
_LOCAL_FAULTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
}
_AFTER_FAULT = ("free space or make it writable, then re-run: what was already stored is "
                "reused; or run `modelkeep gc` to reclaim it")


def debug_enabled() -> bool:
    return os.environ.get("MODELKEEP_DEBUG", "").lower() not in ("", "0", "false", "no")


def report(exc: BaseException, *, json_out: bool = False) -> int:
    """Print *exc* for a person (or, with *json_out*, as one JSON object) and return the exit
    code."""
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    kind, message, hint, code = _describe(exc)
    if json_out:
        emit_json_error(kind, message, hint, code)
    else:
        print(f"error: {message} ({hint})" if hint else f"error: {message}", file=sys.stderr)
    return code


def emit_json_error(kind: str, message: str, hint: str, code: int) -> None:
    """The error under ``--json``: one object on one line of stderr (docs/json.md)."""
    error = {"type": kind, "message": message, "hint": hint or None, "exit_code": code}
    print(json.dumps({"error": error}, sort_keys=True), file=sys.stderr)


def _describe(exc: BaseException) -> tuple[str, str, str, int]:
    """(error class name, message, hint, exit code) of *exc*, each on one line."""
    if isinstance(exc, ModelkeepError):
        return (type(exc).__name__, _one_line(exc.message), _one_line(exc.cli_hint),
                exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return ("KeyboardInterrupt", "interrupted; nothing was registered or pulled in part",
                "a re-run reuses what was already stored; `modelkeep gc` reclaims it otherwise",
                130)
    if isinstance(exc, OSError) and exc.errno in _LOCAL_FAULTS:
        what = _LOCAL_FAULTS[exc.errno]
        where = f" writing {exc.filename}" if exc.filename else ""
        return (type(exc).__name__, f"{what}{where}; nothing was registered or pulled in part",
                _AFTER_FAULT, STORE_EXIT)
    hint = "" if debug_enabled() else "set MODELKEEP_DEBUG=1 for the traceback"
    return (type(exc).__name__, f"unexpected {type(exc).__name__}: {_one_line(str(exc))}",
            hint, UNEXPECTED_EXIT)


def _one_line(text: str) -> str:
    from modelkeep.redaction import redact_url

    # Backend exceptions may quote a URL with its password; modelkeep's own are redacted already.
    line = redact_url(" ".join(text.split()))
    return line if len(line) <= 500 else line[:497] + "..."
