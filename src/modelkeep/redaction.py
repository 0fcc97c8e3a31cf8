"""Hiding secrets in text and settings: passwords in URLs (``scheme://user:password@host``),
secret query parameters (SAS signatures, tokens) and values under secret-looking keys.

A leaf: it imports nothing of modelkeep, so :mod:`modelkeep.errors` can redact every message
without loading the configuration.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# A key is secret when one of its words (split at '_', '-', '.' and camelCase) is one of these.
_SECRET_WORDS = {"key", "secret", "password", "passwd", "pwd", "token", "credential",
                 "credentials", "sas", "sig", "signature", "auth", "authorization"}
_SECRET_PHRASES = ("connection_string", "connectionstring")
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """Whether a setting named *key* holds a secret (``aws_secret_access_key``, ``sas_token``,
    ``connection_string``, ``accountKey`` …)."""
    flat = key.lower().replace("-", "_")
    if any(p in flat for p in _SECRET_PHRASES):
        return True
    return any(w in _SECRET_WORDS for w in _words(key))


def redact_url(text: str) -> str:
    """Hide the password in ``scheme://user:password@host`` and secret query parameters
    (SAS signatures, tokens)."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    if "?" not in text:
        return text
    return _QUERY_PARAM.sub(
        lambda m: f"{m['sep']}{m['name']}={REDACTED if is_secret_key(m['name']) else m['value']}",
        text,
    )


def redact(value: Any) -> Any:
    """A copy of *value* (nested dicts, lists, strings) with secrets replaced by ``***``."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value

