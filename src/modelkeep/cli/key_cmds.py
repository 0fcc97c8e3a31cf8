"""Encryption key commands: ``key status``, ``key rotate`` and ``key generate``.

Presentation only, like :mod:`modelkeep.cli.main`: the work is in
:class:`~modelkeep.store.Store` (:meth:`~modelkeep.store.Store.key_status`,
:meth:`~modelkeep.store.Store.rotate_key`). These commands print key *ids*, never key bytes; a new
key is only ever written to a file the user names, readable by them alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelkeep.cli._state import State
from modelkeep.cli._state import state as _state
from modelkeep.errors import ConfigError, InvalidInputError

if TYPE_CHECKING:
    from modelkeep.store import Store
    from modelkeep.store.store import KeyStatus

NEW_KEY_ENV = "MODELKEEP_NEW_KEY"

key_app = typer.Typer(
    name="key", help="Encryption keys of an encrypted store: status, rotation, new keys.",
    no_args_is_help=True, rich_markup_mode=None,
)




def open_store(st: State) -> Store:
    """The store the global options name, with the keys of settings, environment and plugins."""
    from modelkeep.wiring import open_store as api_open_store

    return api_open_store(st.store, plugins=st.plugins)


def read_key_file(path: Path, what: str) -> bytes:
    from modelkeep.store.crypto import parse_key

    try:
        data = path.expanduser().read_bytes()[:4096]
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}",
                          hint="check the path") from None
    return parse_key(data, f"{what} {str(path)!r}")


def print_status(st: State, status: KeyStatus, verb: str | None = None) -> None:
    def human() -> None:
        c = st.out.console
        if verb:
            c.print(verb, highlight=False)
        if not status.exists:
            c.print(f"store:     {status.url} (not created yet)", highlight=False)
            return
        c.print(f"store:     {status.url}", highlight=False)
        if not status.encrypted:
            c.print("encrypted: no", highlight=False)
            return
        c.print(f"encrypted: yes ({status.scheme})", highlight=False)
        if status.key_id is not None:
            c.print(f"key id:    {status.key_id}  [{status.key_source or 'given'}]",
                    highlight=False, markup=False)
        else:
            c.print(f"key:       not opened: {status.key_error}", highlight=False, markup=False)
        if len(status.key_ids) > 1 or status.key_id is None:
            c.print(f"key ids:   {', '.join(status.key_ids) or '(none)'}", highlight=False)

    st.out.emit(status.to_json(), human)


@key_app.command()
def status(ctx: typer.Context) -> None:
    """Say whether the store is encrypted and which key id opens it (never the key). Exits 5
    when the store is encrypted and no key offered opens it."""
    st = _state(ctx)
    result = open_store(st).key_status()
    print_status(st, result)
    if result.encrypted and result.key_id is None:
        raise typer.Exit(5)


@key_app.command()
def rotate(
    ctx: typer.Context,
    new_key_file: Annotated[Path | None, typer.Option(
        "--new-key-file", help=f"File holding the new key (else ${NEW_KEY_ENV}).")] = None,
) -> None:
    """Wrap the store's data key under a new key and retire the current one.

    The current key comes from MODELKEEP_KEY, the store's key_file or a key plugin, as for any
    command. No chunk or snapshot is rewritten: only the small key object changes. Afterwards
    point key_file (or MODELKEEP_KEY) at the new key."""
    from modelkeep.store.crypto import parse_key

    st = _state(ctx)
    if new_key_file is not None:
        new = read_key_file(new_key_file, "new key file")
    elif os.environ.get(NEW_KEY_ENV):
        new = parse_key(os.environ[NEW_KEY_ENV], NEW_KEY_ENV)
    else:
        raise InvalidInputError("no new key given",
                                hint=f"pass --new-key-file FILE or set {NEW_KEY_ENV}; create one "
                                "with `modelkeep key generate FILE`")
    store = open_store(st)
    old = store.key_status()
    result = store.rotate_key(new)
    print_status(st, result, f"rotated: key id {old.key_id} retired, {result.key_id} now "
                 "opens the store")


@key_app.command()
def generate(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File to create (mode 0600); must not exist.")],
) -> None:
    """Write a new random 256-bit key (base64) to PATH, readable by you alone."""
    from modelkeep.store.crypto import format_key, kek_id, new_key

    key = new_key()
    try:
        fd = os.open(path.expanduser(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInputError(
            f"{str(path)!r} already exists",
            hint="choose a new file; an existing key is never replaced") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {str(path)!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(format_key(key) + "\n")
    # Only the id is printed: the key stays in the file.
    st = _state(ctx)
    kid = kek_id(key)
    st.out.emit({"path": str(path), "key_id": kid}, lambda: st.out.console.print(
        f"wrote a new key to {path} (key id {kid})", highlight=False, markup=False))


def add_to(app: typer.Typer) -> None:
    """Add the ``key`` group to *app*."""
    app.add_typer(key_app)
