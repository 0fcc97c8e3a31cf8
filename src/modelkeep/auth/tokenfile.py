"""The file a ``modelkeep login`` is kept in: ``tokens.json`` in the user's config folder
(``$XDG_CONFIG_HOME/modelkeep`` or ``~/.config/modelkeep`` on Linux, as ``platformdirs`` names
it; ``MODELKEEP_TOKEN_FILE`` names another file).

One JSON object, one entry per issuer and client id: the access token, its expiry, the refresh
token, the granted scopes and the identity from the checked ID token (``sub``, name, e-mail). The
file is created with mode 0600 in a folder of mode 0700 and replaced whole (written aside, then
renamed), so a reader never sees half of it. A file that other users can read, or that belongs to
someone else, is refused with a line saying how to fix it: its tokens act as the user.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from modelkeep.errors import MissingExtraError, SignInError

FILE_ENV = "MODELKEEP_TOKEN_FILE"
NAME = "tokens.json"


def path() -> Path:
    explicit = os.environ.get(FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    try:
        import platformdirs
    except ImportError as exc:
        raise MissingExtraError("platformdirs", "auth") from exc
    return Path(platformdirs.user_config_dir("modelkeep", appauthor=False)) / NAME


def entry_key(issuer: str, client_id: str) -> str:
    return f"{issuer} {client_id}"


def _check_mode(file: Path, st: os.stat_result) -> None:
    if os.name != "posix":
        return  # a Windows profile folder is private to its user already
    if st.st_uid != os.getuid():
        raise SignInError(f"the token file {file} belongs to another user",
                          hint=f"remove it and run `modelkeep login`, or set {FILE_ENV}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SignInError(f"the token file {file} can be read by other users "
                          f"(mode {mode:04o}); its tokens act as you",
                          hint=f"run `chmod 600 {file}`, or `modelkeep logout` and sign in again")


def load_all() -> dict[str, Any]:
    """Every entry of the file ({} if there is none); refuses an unsafe or damaged file."""
    file = path()
    try:
        with open(file, "rb") as handle:
            _check_mode(file, os.fstat(handle.fileno()))
            raw = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SignInError(f"cannot read the token file {file}: {exc.strerror or exc}",
                          hint="check its permissions") from None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise SignInError(f"the token file {file} is damaged",
                          hint="run `modelkeep logout`, then `modelkeep login`")
    return data


def load(issuer: str, client_id: str) -> dict[str, Any] | None:
    entry = load_all().get(entry_key(issuer, client_id))
    return entry if isinstance(entry, dict) else None


def _write(data: dict[str, Any]) -> None:
    file = path()
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the rename replaces the old one whole.
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(issuer: str, client_id: str, entry: dict[str, Any]) -> Path:
    data = load_all()
    data[entry_key(issuer, client_id)] = entry
    _write(data)
    return path()


def remove(issuer: str, client_id: str) -> bool:
    """Forget the sign-in of *client_id* at *issuer*; the file goes when it is empty. Returns
    whether there was one. An unsafe file is removed without being read."""
    file = path()
    try:
        data = load_all()
    except SignInError:
        file.unlink(missing_ok=True)
        return True
    found = data.pop(entry_key(issuer, client_id), None) is not None
    if not data:
        file.unlink(missing_ok=True)
    elif found:
        _write(data)
    return found
