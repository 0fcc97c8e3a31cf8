"""One connection to a database registry (PostgreSQL, MySQL/MariaDB, SQL Server) before MLflow's
client opens it, so that a database that cannot be used is one line within seconds.

MLflow's client retries a failed first connection 10 times, 0.1 s to 51 s apart (about 100 s
in all), printing the driver's error on several lines each time; a wrong port, a database that
does not exist or a refused password then looks like a hang. This connects once (twice when the
server cannot be reached) with the driver's own connect timeout, and turns what the driver says
into :mod:`._errors`' one-line errors. A database that answers is left to MLflow's client, which
connects again (one more connection per command: 4 ms on a local PostgreSQL, 22 ms on MariaDB).
"""

from __future__ import annotations

import re
import time
from typing import Any

from modelkeep.errors import NotFoundError, RegistryAuthError, RegistryError
from modelkeep.plugins.mlflow import _errors

SCHEMES = frozenset({"postgresql", "mysql", "mariadb", "mssql"})
CONNECT_TIMEOUT = 4  # seconds, per attempt: two attempts stay within 10 s
_ATTEMPTS = 2
# Drivers that take a connect timeout, and the keyword they take it as.
_TIMEOUT_ARG = {"psycopg2": "connect_timeout", "psycopg": "connect_timeout",
                "pymysql": "connect_timeout", "mysqldb": "connect_timeout",
                "mariadbconnector": "connect_timeout", "pymssql": "login_timeout",
                "pyodbc": "timeout"}
# MySQL/MariaDB client error codes: access denied; unknown database; cannot connect (TCP, DNS,
# socket); lost or gone during the handshake.
_MYSQL_DENIED, _MYSQL_NO_DATABASE = {1044, 1045, 1698}, {1049}
_MYSQL_UNREACHABLE = {2002, 2003, 2005, 2006, 2013}
_PG_NO_DATABASE = re.compile(r'database "([^"]*)" does not exist')
_PG_DENIED = ("password authentication failed", "no pg_hba.conf entry", "role \"",
              "password supplied", "no password")
_UNREACHABLE = ("connection refused", "could not translate host name", "timeout expired",
                "no route to host", "network is unreachable", "could not connect",
                "name or service not known", "connection timed out")


def is_database(uri: str) -> bool:
    """Whether *uri* names a database server (``postgresql+psycopg2://…``, ``mysql://…``)."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in SCHEMES


def check(uri: str) -> None:
    """Connect to the database *uri* names, or raise the one-line error for why not."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, DBAPIError
    from sqlalchemy.pool import NullPool

    try:
        url = sqlalchemy.engine.make_url(uri)
    except ArgumentError:
        return  # MLflow's client says what is wrong with it
    arg = _TIMEOUT_ARG.get(url.get_driver_name())
    try:
        # NullPool: the connection is closed, not kept; MLflow's client makes its own.
        engine = sqlalchemy.create_engine(
            url, connect_args={arg: CONNECT_TIMEOUT} if arg else {}, poolclass=NullPool)
    except ImportError as exc:
        missing = _errors.missing_driver(uri, exc)
        if missing is None:
            raise
        raise missing from None
    try:
        for attempt in range(_ATTEMPTS):
            try:
                with engine.connect():
                    return
            except DBAPIError as exc:
                if attempt + 1 < _ATTEMPTS and _unreachable(exc.orig):
                    time.sleep(0.5)  # a server restarting, or a lost packet: once more
                    continue
                raise _translate(uri, url, exc.orig) from None
    finally:
        engine.dispose()


def _unreachable(orig: BaseException | None) -> bool:
    """Whether the driver's error says the server could not be reached at all."""
    code = orig.args[0] if orig is not None and orig.args else None
    if isinstance(code, int):  # MySQL and MariaDB drivers: (code, message)
        return code in _MYSQL_UNREACHABLE
    lowered = str(orig or "").lower()
    return any(m in lowered for m in _UNREACHABLE)


def _translate(uri: str, url: Any, orig: BaseException | None) -> RegistryError | NotFoundError:
    if _unreachable(orig):
        return _errors.unreachable(uri)
    code = orig.args[0] if orig is not None and orig.args else None
    text = str(orig or "").strip()
    database = url.database or ""
    user = url.username or ""
    if isinstance(code, int):
        message = str(orig.args[1]) if orig is not None and len(orig.args) > 1 else text
        if code in _MYSQL_DENIED:
            return _denied(uri, user, message)
        if code in _MYSQL_NO_DATABASE:
            return _no_database(uri, database)
        return _errors.unopenable(uri, message)
    found = _PG_NO_DATABASE.search(text)
    if found:
        return _no_database(uri, found.group(1))
    if any(m in text.lower() for m in _PG_DENIED):
        detail = text.split("FATAL:", 1)[-1].strip().splitlines()[0] if text else ""
        return _denied(uri, user, detail)
    return _errors.unopenable(uri, text or type(orig).__name__)


def _denied(uri: str, user: str, detail: str) -> RegistryAuthError:
    return RegistryAuthError(
        f"registry {uri} refused the database login of user {user!r} ({detail})",
        hint="check the user and password in the registry URI")


def _no_database(uri: str, database: str) -> NotFoundError:
    return NotFoundError(
        f"registry {uri}: the server has no database {database!r}",
        hint="create it (MLflow makes its tables in an empty database), or fix the database "
             "name in the registry URI")
