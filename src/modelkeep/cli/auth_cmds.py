"""Sign-in commands: ``login`` (the device flow), ``logout`` and ``whoami [--json]``.

Presentation only: the work is in :mod:`modelkeep.auth`. The provider and client come from
``[auth]`` in ``modelkeep.toml`` or ``MODELKEEP_AUTH_*``. Nothing these commands print contains
a token or a secret: ``whoami`` shows who, where, until when and with which scopes.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelkeep.cli._state import state as _state
from modelkeep.errors import ConfigError, SignInError

if TYPE_CHECKING:
    from modelkeep.auth.device import DeviceCode
    from modelkeep.auth.settings import AuthSettings

NOT_CONFIGURED_HINT = ("set [auth] issuer and client_id in modelkeep.toml, or "
                       "MODELKEEP_AUTH_ISSUER and MODELKEEP_AUTH_CLIENT_ID")


def _settings() -> AuthSettings:
    from modelkeep.auth.settings import resolve
    from modelkeep.config import load_config

    config = load_config()
    settings = resolve(config.auth, file=config.file, root=config.root)
    if settings is None:
        raise ConfigError("no sign-in is configured", hint=NOT_CONFIGURED_HINT)
    return settings


def _when(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _identity(settings: AuthSettings, token: dict[str, Any]) -> dict[str, Any]:
    """What ``whoami`` and ``login`` report: never a token."""
    from modelkeep.auth import tokenfile
    from modelkeep.auth.settings import CLIENT_CREDENTIALS

    who = dict(token.get("identity") or {})
    data: dict[str, Any] = {
        "issuer": settings.issuer,
        "client_id": settings.client_id,
        "flow": settings.flow,
        "subject": who.get("sub") or (settings.client_id
                                      if settings.flow == CLIENT_CREDENTIALS else None),
        "name": who.get("preferred_username") or who.get("name"),
        "email": who.get("email"),
        "expires_at": _when(token.get("expires_at")),
        "scopes": sorted(str(token.get("scope") or "").split()),
        "token_file": None if settings.flow == CLIENT_CREDENTIALS else str(tokenfile.path()),
    }
    return data


def _print_identity(data: dict[str, Any], verb: str) -> None:
    who = data["name"] or data["subject"]
    typer.echo(f"{verb} {data['issuer']} as {who}"
               + (f" (subject {data['subject']})" if data["name"] else ""))
    typer.echo(f"client:   {data['client_id']} ({data['flow'].replace('_', ' ')})")
    if data["email"]:
        typer.echo(f"e-mail:   {data['email']}")
    typer.echo(f"scopes:   {' '.join(data['scopes']) or '-'}")
    typer.echo(f"expires:  {data['expires_at']} (renewed before then on use)")
    if data["token_file"]:
        typer.echo(f"kept in:  {data['token_file']}")


def login(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Sign in to the OpenID provider of [auth]: prints a URL and a code to enter there, waits,
    and keeps the login in a file only you can read."""
    from modelkeep.auth import device
    from modelkeep.auth.settings import CLIENT_CREDENTIALS
    from modelkeep.auth.tokens import source_for

    st = _state(ctx, json_out)
    settings = _settings()
    if settings.flow == CLIENT_CREDENTIALS:
        # A job signs in by itself on every use; this only checks that it can.
        data = _identity(settings, source_for(settings).current())
        st.out.emit(data, lambda: _print_identity(data, "client credentials work for"))
        return

    def show(code: DeviceCode) -> None:
        minutes = max(1, round(code.expires_in / 60))
        where = code.verification_uri_complete or code.verification_uri
        # On stderr, so that --json output stays one JSON document.
        print(f"To sign in, open {where}\nand confirm the code {code.user_code} "
              f"(waiting up to {minutes} min)...", file=sys.stderr, flush=True)

    entry = device.login(settings, show, sleep=time.sleep)
    data = _identity(settings, entry)
    st.out.emit(data, lambda: _print_identity(data, "signed in to"))


def logout(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Forget the login of [auth]'s provider and client (the token file goes when empty); the
    provider is asked to revoke its refresh token."""
    from modelkeep.auth import tokenfile
    from modelkeep.auth.tokens import forget, revoke

    st = _state(ctx, json_out)
    settings = _settings()
    try:
        entry = tokenfile.load(settings.issuer, settings.client_id)
    except SignInError:  # an unsafe or damaged file is removed without being used
        entry = None
    revoked = revoke(settings, entry) if entry else False
    removed = tokenfile.remove(settings.issuer, settings.client_id)
    forget(settings)
    data = {"issuer": settings.issuer, "client_id": settings.client_id,
            "signed_out": removed, "revoked": revoked, "token_file": str(tokenfile.path())}
    st.out.emit(data, lambda: typer.echo(
        f"signed out of {settings.issuer}" if removed
        else f"not signed in to {settings.issuer}"))


def whoami(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Who modelkeep signs in as: identity, issuer, expiry and scopes (never a token)."""
    from modelkeep.auth import tokenfile
    from modelkeep.auth.tokens import source_for

    st = _state(ctx, json_out)
    settings = _settings()
    token = source_for(settings).current()  # renews an expired login, as any command would
    entry = tokenfile.load(settings.issuer, settings.client_id) or {}
    data = _identity(settings, {**token, "identity": entry.get("identity")})
    st.out.emit(data, lambda: _print_identity(data, "signed in to"))


def add_to(app: typer.Typer) -> None:
    """Add ``login``, ``logout`` and ``whoami`` to *app*."""
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
