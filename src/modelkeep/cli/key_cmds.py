"""The ``key`` commands, for both kinds of key modelkeep uses.

Encryption keys open an encrypted store: ``key status`` and ``key rotate`` work on the store's key;
``key generate FILE`` writes a new one. Signing keys sign snapshots: ``key generate --signing
FILE`` writes a pair (``keygen --signing FILE``, the older spelling, still works).

Presentation only, like :mod:`modelkeep.cli.main`: the work is in
:class:`~modelkeep.store.Store` (:meth:`~modelkeep.store.Store.key_status`,
:meth:`~modelkeep.store.Store.rotate_key`) and :mod:`modelkeep.signing`. These commands print key
*ids*, never key bytes; a new key is only ever written to a file the user names, readable by them
alone.
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
    name="key", help="Keys: the encryption key of an encrypted store (status, rotate), and new "
    "encryption or signing keys (generate).",
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
        "--new-key-file", metavar="FILE",
        help=f"File holding the new key (else ${NEW_KEY_ENV}).")] = None,
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
    path: Annotated[Path, typer.Argument(
        metavar="FILE", help="File to create (mode 0600); must not exist.")],
    signing: Annotated[bool, typer.Option(
        "--signing", help="An Ed25519 signing key pair instead: the private key in FILE, the "
        "public key in FILE.pub (MODELKEEP_SIGNING_KEY=FILE signs with it).")] = False,
) -> None:
    """Write a new key to FILE, readable by you alone: a random 256-bit encryption key
    (base64), or with --signing a key pair for signing snapshots. Never overwrites a file."""
    st = _state(ctx)
    if signing:
        _generate_signing(st, path)
        return
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
    kid = kek_id(key)
    st.out.emit({"path": str(path), "key_id": kid}, lambda: st.out.console.print(
        f"wrote a new key to {path} (key id {kid})", highlight=False, markup=False))


def _generate_signing(st: State, path: Path) -> None:
    from modelkeep.signing import write_key_pair

    private, public, kid = write_key_pair(path)
    st.out.emit(
        {"private_key": str(private), "public_key": str(public), "key_id": kid},
        lambda: st.out.console.print(
            f"wrote signing key {private} (keep it secret) and public key {public}\n"
            f"key id: {kid}", highlight=False, markup=False),
    )


def keygen(
    ctx: typer.Context,
    signing: Annotated[Path, typer.Option(
        "--signing", metavar="FILE", help="Write a new Ed25519 signing key here and its public "
        "key to FILE.pub; never overwrites.")],
) -> None:
    """The older spelling of `modelkeep key generate --signing FILE`."""
    _generate_signing(_state(ctx), signing)


def add_to(app: typer.Typer) -> None:
    """Add the ``key`` group to *app*, and ``keygen`` (kept for scripts, not listed)."""
    app.add_typer(key_app)
    app.command(hidden=True)(keygen)
