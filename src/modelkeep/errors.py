"""The modelkeep error tree.

Every error the package raises on purpose is a :class:`ModelkeepError`. Each class also subclasses
the builtin it most resembles (``KeyError`` for a missing thing, ``ValueError`` for bad input …) so
callers that already catch builtins keep working, and each carries a ``hint``: the one thing the
user should do next. The CLI prints ``message (hint)`` on one line and exits with ``exit_code``.

A hint that names an option is a :class:`Hint`: the same advice reaches a Python caller with the
keyword they pass (``overwrite=True``) and a command-line user with the flag they type
(``--force``). ``str(error)`` and ``error.hint`` speak Python; :meth:`ModelkeepError.for_cli`
is the command line's wording.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelkeep.redaction import redact_url


@dataclass(frozen=True)
class Option:
    """One option under its two names: the keyword argument as a Python caller writes it
    (``overwrite=True``) and the flag as a command-line user types it (``--force``)."""

    api: str
    cli: str


class Hint:
    """Advice that names options: *text* with ``{field}`` places, each filled by an
    :class:`Option` (``Hint("pass {force} to replace it", force=FORCE)``)."""

    def __init__(self, text: str, **options: Option) -> None:
        self.text = text
        self.options = options
        self.render(cli=False)  # a field without its option fails here, not when shown

    def render(self, *, cli: bool) -> str:
        return self.text.format(**{k: o.cli if cli else o.api for k, o in self.options.items()})

    def __str__(self) -> str:
        return self.render(cli=False)

    def __repr__(self) -> str:
        return f"Hint({self.text!r})"


# Options that hints in more than one layer name.
STORE = Option(api="modelkeep.open(store=...)", cli="--store")
REGISTRY = Option(api="modelkeep.open(registry=...)", cli="--registry URI")
TO_STORE = Option(api="to=STORE", cli="--to STORE")
ALL_VERSIONS = Option(api="limit=None", cli="--all")


class ModelkeepError(Exception):
    """Base class of every error modelkeep raises deliberately."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | Hint | None = None) -> None:
        # Messages name stores and registries by URL, and a URL may carry a password
        # (``http://user:password@host``): no error ever shows one.
        message = redact_url(message)
        super().__init__(message)
        self.message = message
        given = self.default_hint if hint is None else hint
        self.hint = redact_url(str(given))
        self.cli_hint = (redact_url(given.render(cli=True)) if isinstance(given, Hint)
                         else self.hint)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def for_cli(self) -> str:
        """The error in a command-line user's words: the hint names flags, not keywords."""
        return f"{self.message} ({self.cli_hint})" if self.cli_hint else self.message


class InvalidInputError(ModelkeepError, ValueError):
    """The caller passed something modelkeep cannot use (a bad name, path, ref or option)."""

    exit_code = 2


class InvalidNameError(InvalidInputError):
    """A model name or alias does not match the allowed pattern."""


class InvalidRefError(InvalidInputError):
    """A reference is not of the form ``NAME@VERSION``, ``NAME@ALIAS`` or ``NAME@latest``."""


class SourceError(InvalidInputError):
    """The folder or file to register is missing, empty or unreadable."""


class UnsafePathError(InvalidInputError):
    """A path would escape its folder: ``..``, an absolute path, or a symlink leading outside."""


class NotFoundError(ModelkeepError, KeyError):
    """A model, version, alias, file or object does not exist."""

    exit_code = 3

    def __str__(self) -> str:  # KeyError would repr() the message
        return ModelkeepError.__str__(self)


class IntegrityError(ModelkeepError):
    """Stored bytes do not match their content id, or an object is malformed."""

    exit_code = 4
    default_hint = "run `modelkeep verify` to list every damaged object"


class StoreError(ModelkeepError, OSError):
    """The store cannot be used (bad URL, unsupported backend, I/O failure)."""

    exit_code = 5


class StoreUnreachableError(StoreError, ConnectionError):
    """The store's endpoint does not answer."""

    default_hint = "check the store URL and endpoint, and that the service is running"


class StoreBusyError(StoreError):
    """The store kept answering with a transient fault (503 SlowDown, 429, ServerBusy, resets,
    stalls) until the retry policy's attempts or time ran out; nothing partial became visible."""

    default_hint = (
        "try again later: what landed is reused by a re-run; the store's `retry` options "
        "set how long to keep trying"
    )


class StoreFullError(StoreError):
    """A local store's file system refused a write: no space, quota exceeded, or read-only.
    Nothing partial became visible; the chunks that landed are reused by a re-run."""

    default_hint = (
        "free space or make it writable, then re-run: what was already stored is reused; "
        "or run `modelkeep gc` to reclaim it"
    )


class CredentialsError(StoreError, PermissionError):
    """The store refused access or no credentials were found."""

    default_hint = (
        "set credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "AZURE_STORAGE_CONNECTION_STRING) or the store's options in modelkeep.toml"
    )


class StoreKeyError(StoreError, PermissionError):
    """An encrypted store was opened without its key, or with a wrong one."""

    default_hint = (
        "give the store's key in MODELKEEP_KEY, as key_file in the store's options in "
        "modelkeep.toml, or through a key-provider plugin"
    )


class RegistryError(ModelkeepError):
    """The model registry refused or failed an operation."""

    exit_code = 6


class RegistryAuthError(RegistryError, PermissionError):
    """The registry server wants credentials it did not get, or rejected them (HTTP 401)."""

    default_hint = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


class RegistryPermissionError(RegistryError, PermissionError):
    """The registry knows the user but refuses this operation to them (HTTP 403)."""

    default_hint = "ask the registry's admin for permission on the model"


class SignInError(ModelkeepError, PermissionError):
    """No usable sign-in: not signed in, the sign-in expired, the OpenID provider refused the
    client or could not be reached, or the token file is unsafe (exit code 6, as the
    registry's refusals)."""

    exit_code = 6
    default_hint = "run `modelkeep login`"


class ConfigError(InvalidInputError):
    """A configuration file or environment variable is invalid."""


class MissingExtraError(ModelkeepError, ImportError):
    """An optional dependency is needed for this operation but not installed."""

    exit_code = 7

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"this needs the optional package {package!r}",
            hint=f'pip install "modelkeep[{extra}]"',
        )
        self.package = package
        self.extra = extra


class MissingDriverError(MissingExtraError):
    """A registry URI names a database whose Python driver is not installed."""

    def __init__(self, uri: str, module: str, hint: str) -> None:
        ModelkeepError.__init__(
            self, f"registry {uri} needs the Python database driver {module!r}, which is not "
            "installed", hint=hint)
        self.package = module
        self.extra = ""


class CheckpointError(ModelkeepError):
    """Checkpoints registered in the background could not all be stored or registered.

    Raised when pending uploads are flushed (context exit, ``flush()``, ``close()``); ``failures``
    holds ``(step, error)`` for each checkpoint that was not registered, and ``__cause__`` is the
    first underlying error.
    """

    exit_code = 8

    def __init__(
        self, message: str, *, hint: str | Hint | None = None,
        failures: tuple[tuple[int | None, BaseException], ...] = (),
    ) -> None:
        super().__init__(message, hint=hint)
        self.failures = failures


class DestinationExistsError(InvalidInputError, FileExistsError):
    """The destination of a pull exists and is not empty."""


class PluginError(ModelkeepError):
    """A plugin cannot be loaded, or ``MODELKEEP_PLUGINS`` names one that is not installed."""

    exit_code = 8


class VetoError(ModelkeepError):
    """A plugin (or policy) refused an operation: registering a version, or moving an alias.

    ``reasons`` holds every refusal, in the order the hooks answered; nothing was changed.
    """

    exit_code = 9

    def __init__(self, message: str, *, reasons: list[str] | tuple[str, ...] = (),
                 hint: str | Hint | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reasons = tuple(reasons)


class DirtyWorkspaceError(ModelkeepError):
    """A checkout would overwrite local files whose content is in no stored version."""

    exit_code = 10


__all__ = [
    "CheckpointError",
    "ConfigError",
    "CredentialsError",
    "DestinationExistsError",
    "DirtyWorkspaceError",
    "Hint",
    "IntegrityError",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidRefError",
    "MissingExtraError",
    "ModelkeepError",
    "NotFoundError",
    "Option",
    "PluginError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryPermissionError",
    "SourceError",
    "StoreBusyError",
    "StoreError",
    "StoreFullError",
    "StoreKeyError",
    "StoreUnreachableError",
    "UnsafePathError",
    "VetoError",
]
