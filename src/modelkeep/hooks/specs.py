"""Every hook modelkeep calls: the contract between modelkeep and its plugins.

A plugin is a module or object with functions named like these specs and decorated with
:data:`modelkeep.hooks.hookimpl`. An implementation may accept any subset of a hook's arguments,
by name, so arguments can be added later without breaking plugins. Hooks run in pluggy's order:
``tryfirst`` implementations, then the most recently registered, built-in defaults last.

Where a hook is called, in one ``register``::

    modelkeep_scan_file         each file, before any byte is stored
    modelkeep_collect_lineage   after the content is stored: code and data the version came from
    modelkeep_collect_metadata  after the content is stored, before anything is visible
    modelkeep_validate_version  every validator, then every alias pre-check:
    modelkeep_before_alias_change   a refusal from either stops here: nothing is registered
    modelkeep_before_register   last word before the snapshot and registry entry are written
    modelkeep_after_alias_change    once per alias set on the new version
    modelkeep_after_register    with the finished version

Content identical to the newest version reuses that version: after the scan, only the alias
hooks run, against it.

``pull`` calls ``modelkeep_after_pull``; opening a store calls ``modelkeep_registry`` and
``modelkeep_storage_options``; the CLI calls ``modelkeep_cli_commands``. Vetoes are return values
(a reason string), not exceptions, so that every plugin is asked and the user sees every reason at
once; raising a :class:`~modelkeep.errors.ModelkeepError` also stops the operation.

These hooks are also what later layers build on: policies (retention, promotion gates, required
tags) are validators and alias pre-checks; replication runs after registering; encryption asks
``modelkeep_provide_keys``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from modelkeep.hooks._markers import hookspec

if TYPE_CHECKING:
    import typer

    from modelkeep.hooks._types import Finding
    from modelkeep.keep import Keep
    from modelkeep.ops.results import ModelVersion
    from modelkeep.registry import Registry
    from modelkeep.store import Snapshot


# -- opening a store and a registry ---------------------------------------------------------------


@hookspec(firstresult=True)
def modelkeep_registry(uri: str | None) -> Registry | None:
    """Provide the model catalogue for a registry URI.

    The first implementation that returns a registry wins. The built-in MLflow plugin answers
    last, for any URI, so a plugin can serve a scheme of its own (or every URI) by answering
    first.

    :param uri: The registry URI from ``--registry``, the environment or the settings file
        (relative ``sqlite:///`` paths already made absolute), or None for the default.
    :returns: An object implementing :class:`modelkeep.registry.Registry`, or None to pass.

    Example::

        @hookimpl
        def modelkeep_registry(uri):
            if uri and uri.startswith("memory-registry:"):
                return MemoryRegistry()
    """


@hookspec
def modelkeep_storage_options(
    protocol: str, url: str, store_name: str | None
) -> Mapping[str, Any] | None:
    """Provide fsspec storage options (endpoints, credentials) for a store about to be opened.

    Every implementation's options are merged, the first answering winning a key; options in the
    settings file and ``MODELKEEP_STORE_OPTIONS`` win over all of them, one level deep (so a
    plugin's ``client_kwargs.region_name`` and the file's ``client_kwargs.endpoint_url`` combine).

    :param protocol: The canonical protocol: ``file``, ``s3``, ``az``, ``memory``, ``gs`` ….
    :param url: The store's URL, as configured.
    :param store_name: The name of the store in ``[stores.NAME]``, or None for an unnamed one.
    :returns: A mapping of options for ``fsspec.filesystem(protocol, **options)``, or None.

    Example::

        @hookimpl
        def modelkeep_storage_options(protocol):
            if protocol == "s3":
                return {"key": vault.read("s3/key"), "secret": vault.read("s3/secret")}
    """


@hookspec(firstresult=True)
def modelkeep_provide_keys(url: str, store_name: str | None) -> Mapping[str, bytes] | None:
    """Provide the key-encryption keys of an encrypted store (docs/encryption.md).

    Called once per opened store, the first time the store is found to be encrypted (never for
    a plain store), after ``MODELKEEP_KEY`` and the store's ``key_file``: every key offered is
    tried, and the one the store has a key object for opens it. The first implementation that
    returns keys wins. Offer both keys during a rotation; offer none to pass. The key ids are
    your own names, shown in messages; modelkeep identifies a key by its own key id, derived from
    the key. Never log the key bytes.

    :param url: The store's URL.
    :param store_name: The name of the store in ``[stores.NAME]``, or None.
    :returns: Your key id to 32-byte key; or None to pass.

    Example::

        @hookimpl
        def modelkeep_provide_keys(store_name):
            if store_name == "secure":
                return {"2026-01": kms.decrypt(WRAPPED_KEY)}
    """


# -- registering a version ------------------------------------------------------------------------


@hookspec
def modelkeep_scan_file(
    name: str, path: str, size: int, opener: Callable[[], BinaryIO]
) -> Iterable[Finding] | None:
    """Scan one file of a version about to be registered, before any byte of it is stored.

    Every implementation is called for every file; their findings are collected and handed to
    :func:`modelkeep_validate_version`. A finding of severity ``error`` refuses the version.

    :param name: The model name.
    :param path: The file's path inside the version (``/``-separated).
    :param size: Its size in bytes.
    :param opener: Opens the file for binary reading; read only what you need and close it.
    :returns: Findings (:class:`modelkeep.hooks.Finding`), or None when there is nothing to say.

    Example::

        @hookimpl
        def modelkeep_scan_file(path, opener):
            if path.endswith((".pkl", ".pt", ".bin")):
                with opener() as f:
                    if f.read(2) == b"\\x80\\x04":
                        yield Finding(path, "pickle file", severity="warning", scanner="mine")
    """


@hookspec
def modelkeep_collect_lineage(
    name: str, source: Path | str, repo_dir: Path, keep: Keep
) -> Mapping[str, Any] | None:
    """Record where a version being registered came from: code commit, data versions, inputs.

    Called once the content is stored and the version is known to be new (not for identical
    content, which reuses the newest version). Each answer maps section names to JSON values;
    the sections of every answer are merged into the snapshot's ``lineage`` object (the first
    answering wins a section), and scalar members of each section are mirrored into registry
    tags ``modelkeep.<section>.<key>``. The built-in plugins answer ``git`` and ``dvc``. Values
    must be JSON without floating-point numbers (snapshots hold none): write a non-integer number
    as a string. Keep it fast: it runs inside every registration.

    :param name: The model name.
    :param source: The local folder or file being registered, or the URL it is read from.
    :param repo_dir: The folder whose repositories describe the version: the registered path's
        folder for a local source, else the working folder.
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.
    :returns: ``{section: value}``, or None to add nothing.

    Example::

        @hookimpl
        def modelkeep_collect_lineage(repo_dir):
            return {"slurm": {"job": os.environ.get("SLURM_JOB_ID")}}
    """


@hookspec
def modelkeep_collect_metadata(
    name: str, source: Path | str, snapshot: Snapshot, keep: Keep, findings: Sequence[Finding]
) -> Mapping[str, str] | None:
    """Add tags to a version being registered: lineage, provenance, anything worth recording.

    Called once the content is stored and before anything is visible. Tags from every plugin are
    merged (the first answering wins a key); tags the caller passed win over all of them. Keys must
    not start with ``modelkeep.`` (reserved), except ``modelkeep.scan`` and ``modelkeep.scan.*``:
    the summary of the scan findings, which the built-in scanner records; values are strings up
    to 100,000 characters.

    :param name: The model name.
    :param source: The local folder or file being registered, or the URL it is read from.
    :param snapshot: The draft snapshot: files (with tensor maps), size, parents, message, author
        and the caller's tags.
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.
    :param findings: Every finding of every :func:`modelkeep_scan_file` implementation.
    :returns: Tags to add, or None.

    Example::

        @hookimpl
        def modelkeep_collect_metadata(source):
            return {"host": socket.gethostname()}
    """


@hookspec
def modelkeep_validate_version(
    name: str, snapshot: Snapshot, findings: Sequence[Finding], keep: Keep
) -> str | None:
    """Accept or refuse a new version before it becomes visible.

    Every implementation is called (not only until the first refusal), so the user sees every
    reason at once; any refusal stops the registration with
    :class:`~modelkeep.errors.VetoError` and nothing is registered (chunks already stored are
    unreferenced and garbage collection removes them). Not called when the content is identical
    to the newest version, which is then reused.

    :param name: The model name.
    :param snapshot: The snapshot about to be written, with its final tags.
    :param findings: Every finding of every :func:`modelkeep_scan_file` implementation.
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.
    :returns: A reason to refuse the version (one short sentence), or None to accept it.

    Example::

        @hookimpl
        def modelkeep_validate_version(snapshot):
            if snapshot.size > 50 << 30:
                return "larger than 50 GiB"
    """


@hookspec
def modelkeep_before_register(
    name: str, snapshot: Snapshot, tags: Mapping[str, str], keep: Keep
) -> None:
    """Called after every validator accepted a version, just before it is written.

    Raise a :class:`~modelkeep.errors.ModelkeepError` to stop the registration; nothing will
    have been registered.

    :param name: The model name.
    :param snapshot: The snapshot about to be written.
    :param tags: The registry tags about to be written, including modelkeep's own
        (``modelkeep.snapshot``, ``modelkeep.size`` …).
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.

    Example::

        @hookimpl
        def modelkeep_before_register(name, snapshot):
            log.info("registering %s (%d bytes)", name, snapshot.size)
    """


@hookspec
def modelkeep_after_register(version: ModelVersion, keep: Keep, source: Path | str) -> None:
    """Called once a new version is registered and its aliases are set.

    The version is visible to everyone by now; an exception raised here reaches the caller but
    does not undo the registration. Not called when identical content was reused.

    :param version: The new version.
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.
    :param source: The local folder or file registered, or the URL it was read from.

    Example::

        @hookimpl
        def modelkeep_after_register(version):
            slack.post(f"{version.ref} registered ({version.size} bytes)")
    """


# -- aliases --------------------------------------------------------------------------------------


@hookspec
def modelkeep_before_alias_change(
    name: str,
    alias: str,
    version: int | None,
    tags: Mapping[str, str],
    previous: int | None,
    action: str,
    keep: Keep,
    findings: Sequence[Finding] | None,
) -> str | None:
    """Accept or refuse pointing an alias at a version (a promotion), or deleting it.

    Every implementation is called; any refusal raises :class:`~modelkeep.errors.VetoError` and
    the alias is not moved. When aliases are given to ``register``, every alias is checked before
    the version is written, so a refused alias registers nothing.

    :param name: The model name.
    :param alias: The alias to set, e.g. ``production``.
    :param version: The version the alias would point at; None for the version being registered
        (which has no number yet), and None when the alias is being deleted.
    :param tags: That version's tags (for a version being registered, the tags it will have; for
        a deletion, the tags of the version the alias points at now).
    :param previous: The version the alias points at now, or None if it is not set.
    :param action: ``set`` (``register --alias``, ``modelkeep alias``, ``promote --alias``),
        ``rollback`` (``modelkeep rollback``) or ``delete`` (``modelkeep alias --delete``).
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.
    :param findings: For the version being registered, what the ``modelkeep_scan_file`` plugins
        found in its files (the same findings ``modelkeep_validate_version`` got); None for a
        registered version (scan it with ``keep.scan``) and for a deletion.
    :returns: A reason to refuse, or None to accept.

    ``modelkeep policy check NAME@REF --alias ALIAS`` asks this hook exactly as ``modelkeep
    alias`` would, and reports every refusal.

    Example::

        @hookimpl
        def modelkeep_before_alias_change(alias, tags, action):
            if alias == "production" and action != "delete" and "approved-by" not in tags:
                return "production needs an approved-by tag"
    """


@hookspec
def modelkeep_after_alias_change(
    name: str, alias: str, version: int | None, previous: int | None, action: str, keep: Keep
) -> None:
    """Called after an alias was set, rolled back or deleted (and its history recorded).

    :param name: The model name.
    :param alias: The alias.
    :param version: The version it points at now, or None if it was deleted.
    :param previous: The version it pointed at before, or None if it was not set.
    :param action: ``set``, ``rollback`` or ``delete``, as for
        :func:`modelkeep_before_alias_change`.
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.

    Example::

        @hookimpl
        def modelkeep_after_alias_change(name, alias, version, previous, action):
            audit.write(f"{name}@{alias}: {previous} -> {version} ({action})")
    """


# -- reading --------------------------------------------------------------------------------------


@hookspec
def modelkeep_after_pull(version: ModelVersion, dest: Path, keep: Keep) -> None:
    """Called after a version's files were materialised and verified in *dest*.

    :param version: The version pulled.
    :param dest: The folder holding its files.
    :param keep: The :class:`~modelkeep.keep.Keep` doing the work.

    Example::

        @hookimpl
        def modelkeep_after_pull(version, dest):
            (dest / "VERSION").write_text(version.ref)
    """


# -- command line ---------------------------------------------------------------------------------


@hookspec
def modelkeep_cli_commands(app: typer.Typer) -> None:
    """Add commands (or command groups) to the ``modelkeep`` command line.

    Called once per process when the CLI starts. Commands are added beside the built-in ones; a
    command with a built-in command's name replaces it. Inside a command,
    ``ctx.find_object(modelkeep.cli.main.State).keep()`` gives the ``Keep`` that honours the
    global ``--store``/``--registry``/``--json`` options.

    :param app: A Typer app whose commands join the ``modelkeep`` group.

    Example::

        @hookimpl
        def modelkeep_cli_commands(app):
            @app.command()
            def hello(name: str) -> None:
                print(f"hello {name}")
    """
