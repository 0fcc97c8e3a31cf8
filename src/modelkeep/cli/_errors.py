"""The one place where exceptions become a message and an exit code.

A :class:`~modelkeep.errors.ModelkeepError` prints ``error: <message> (<hint>)`` on one line of
stderr, the hint naming command-line flags where the API's wording names keywords
(:meth:`~modelkeep.errors.ModelkeepError.for_cli`), and exits with the error's code. A full disk
or a read-only file system is one line too, with the store's exit code and what to do. Anything
else is a bug or an unrecognised backend failure: it prints one line too, unless
``MODELKEEP_DEBUG=1`` asks for the traceback.
"""

from __future__ import annotations

import errno
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


def report(exc: BaseException) -> int:
    """Print *exc* for a person and return the exit code."""
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ModelkeepError):
        print(f"error: {_one_line(exc.for_cli())}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        print("error: interrupted; nothing was registered or pulled in part (a re-run reuses "
              "what was already stored; `modelkeep gc` reclaims it otherwise)", file=sys.stderr)
        return 130
    if isinstance(exc, OSError) and exc.errno in _LOCAL_FAULTS:
        what = _LOCAL_FAULTS[exc.errno]
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: {what}{where}; nothing was registered or pulled in part ({_AFTER_FAULT})",
              file=sys.stderr)
        return STORE_EXIT
    hint = "" if debug_enabled() else " (set MODELKEEP_DEBUG=1 for the traceback)"
    print(f"error: unexpected {type(exc).__name__}: {_one_line(str(exc))}{hint}", file=sys.stderr)
    return UNEXPECTED_EXIT


def _one_line(text: str) -> str:
    from modelkeep.redaction import redact_url

    # Backend exceptions may quote a URL with its password; modelkeep's own are redacted already.
    line = redact_url(" ".join(text.split()))
    return line if len(line) <= 500 else line[:497] + "..."
