"""What a ``modelkeep`` process loads to start: each command, run in a fresh interpreter,
reports which of the costly modules it imported, so a module made lazy stays lazy.

``--help`` needs none of the store, rich, pydantic or click; no command needs pydantic (Typer's
converter, replaced for plain values by :mod:`modelkeep.cli._params`) or click (the commands are
built on Typer's copy); ``--json`` and ``-q`` never load rich, nor does ``register``'s one line.
The converter is checked against Typer's on the same parameters and values, and a plain line
against rich's printing of it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer

from modelkeep.cli._params import _PlainConversion, install
from modelkeep.hooks import make_plugin_manager
from tests.backends import unique_name
from tests.helpers import imports_of, sqlite_project, tensors, write_model

WATCHED = ("mlflow", "pydantic", "click", "rich", "fsspec", "modelkeep.store", "modelkeep.keep",
           "numpy", "asyncio")
# Loaded by no command: pydantic (values are converted by modelkeep.cli._params), click (the
# commands are Typer's), mlflow (the SQLite registry is read and written directly).
NEVER = {"mlflow", "pydantic", "click"}

def _loaded(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``modelkeep ARGS`` in a fresh interpreter: the process, and the watched modules it
    imported."""
    proc, loaded = imports_of(args, cwd, WATCHED)
    assert loaded is not None, proc.stdout + proc.stderr
    return proc, loaded


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project on the SQLite default holding one version of one model, and the model name."""
    root = tmp_path_factory.mktemp("startup")
    keep = sqlite_project(root)
    name = unique_name()
    keep.register(name, write_model(root / "model", tensors(seed=1, n=2, rows=8, cols=8)),
                  aliases=["prod"])
    return root, name


@pytest.mark.parametrize("args", [["--help"], ["list", "--help"], ["register", "--help"],
                                  ["--version"]], ids=" ".join)
def test_help_loads_neither_the_store_nor_rich(project: tuple[Path, str],
                                               args: list[str]) -> None:
    proc, loaded = _loaded(args, project[0])
    assert proc.returncode == 0, proc.stderr
    assert "modelkeep" in proc.stdout
    assert loaded == set(), f"{args} imported {sorted(loaded)}"


COMMANDS = [
    ["list"], ["list", "{n}"], ["list", "{n}", "--limit", "3"], ["show", "{n}@prod"],
    ["log", "{n}", "-n", "2"], ["register", "{n}", "model", "--tag", "k=v", "-m", "again"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_load_no_converter_library(project: tuple[Path, str], args: list[str]) -> None:
    root, name = project
    for mode in ([], ["--json"], ["-q"]):
        proc, loaded = _loaded([*mode, *(a.format(n=name) for a in args)], root)
        assert proc.returncode == 0, proc.stderr
        assert not loaded & NEVER, f"{mode + args} imported {sorted(loaded & NEVER)}"
        if mode or args[0] == "register":  # nothing printed for a person, or one plain line
            assert "rich" not in loaded, f"{mode + args} imported rich"
        if not mode:
            assert proc.stdout.strip()  # printed for a person


@pytest.mark.parametrize("args", [["list"], ["list", "{n}"], ["log", "{n}"], ["show", "{n}@prod"]],
                         ids=" ".join)
def test_registry_reads_load_no_filesystem(project: tuple[Path, str], args: list[str]) -> None:
    """Reading the registry, and a local store's snapshots, needs no fsspec (the filesystem is
    made on first use), asyncio or numpy (the codecs)."""
    root, name = project
    for mode in ([], ["--json"]):
        proc, loaded = _loaded([*mode, *(a.format(n=name) for a in args)], root)
        assert proc.returncode == 0, proc.stderr
        heavy = loaded & {"fsspec", "asyncio", "numpy"}
        assert not heavy, f"{mode + args} imported {sorted(heavy)}"


def test_a_new_version_registers_without_pydantic_or_click(project: tuple[Path, str]) -> None:
    root, name = project
    folder = write_model(root / f"new-{time.monotonic_ns()}", tensors(seed=9, n=2, rows=8, cols=8))
    proc, loaded = _loaded(["register", name, str(folder)], root)
    assert proc.returncode == 0, proc.stderr
    assert f"registered {name}@" in proc.stdout
    assert not loaded & (NEVER | {"rich"}), sorted(loaded & (NEVER | {"rich"}))


def test_refused_values_are_worded_by_typer(project: tuple[Path, str]) -> None:
    root, name = project
    proc, _ = _loaded(["list", name, "--limit", "0"], root)
    assert proc.returncode == 2
    assert "Invalid value for '--limit' / '-n'" in proc.stderr
    assert "greater than or equal to 1" in proc.stderr


# -- the converter against Typer's own ---------------------------------------------------------


def _params() -> tuple[Any, dict[str, Any]]:
    app = typer.Typer()

    @app.command()
    def cmd(
        text: Annotated[str, typer.Argument()],
        maybe: Annotated[str | None, typer.Option("--maybe")] = None,
        many: Annotated[list[str] | None, typer.Option("--many")] = None,
        count: Annotated[int | None, typer.Option("--count", min=1, max=50)] = None,
        free: Annotated[int, typer.Option("--free")] = 3,
        flag: Annotated[bool, typer.Option("--flag")] = False,
    ) -> None:
        pass

    command = typer.main.get_command(app)
    return command, {p.name: p for p in command.params}


VALUES = [None, "", "x", "héllo", "\udcff", "0", "1", "007", "12", "50", "51", "-1", "+3", " 3",
          "1_0", "1e3", "99999999999999999999999", 5, 0, True, False, ("a", "b"), (), ["c"],
          ("a", "\udcff"), b"raw"]


def _outcome(runtime: Any, param: Any, ctx: Any, value: Any) -> tuple[str, Any]:
    try:
        result = runtime.coerce(value, param=param, ctx=ctx)
    except Exception as exc:
        return "error", (type(exc).__name__, str(getattr(exc, "message", exc)))
    return "value", (type(result).__name__, result)


@pytest.mark.parametrize("name", ["text", "maybe", "many", "count", "free", "flag"])
def test_the_plain_converter_answers_as_typer_does(name: str) -> None:
    from typer._coercion import build_runtime_param

    command, params = _params()
    param, ctx = params[name], typer.Context(command)
    theirs = build_runtime_param(param.type_descriptor)
    ours = _PlainConversion(param)
    for value in VALUES:
        assert _outcome(ours, param, ctx, value) == _outcome(theirs, param, ctx, value), \
            (name, value)


def test_install_reaches_every_plain_parameter_and_help() -> None:
    from modelkeep.cli.main import _command

    command = _command(make_plugin_manager(entry_points=False))
    listing = command.commands["list"]
    by_name = {p.name: p for p in listing.params}
    assert isinstance(by_name["limit"]._runtime_param, _PlainConversion)
    assert isinstance(by_name["name"]._runtime_param, _PlainConversion)
    ctx = typer.Context(listing)
    assert isinstance(listing.get_help_option(ctx)._runtime_param, _PlainConversion)
    install(command)  # a second pass leaves converted parameters as they are
    assert isinstance(by_name["limit"]._runtime_param, _PlainConversion)


LINES = ["registered m@3: 1.0 GiB in 2 file(s), added 0 B (100.0% already stored), 12 B in "
         "the store", "aliases: prod, candidate", "a: b: c", "x:y:z", "warn :smile: here",
         ":thumbs_up:",
         "[bold]loud[/bold]", "a [b] c", r"back\slash", "tab\there", "cr\rhere", "bell\x07",
         "  padded  ", "two\nlines", "", "é accent", "long " * 80, "url s3://b/k?x=1:2",
         "ends with colon:", ":starts", "m-1@2 already holds this content: nothing changed"]


@pytest.mark.parametrize("markup", [True, False])
def test_a_line_prints_as_rich_prints_it(capsys: pytest.CaptureFixture[str],
                                         markup: bool) -> None:
    from rich.console import Console

    from modelkeep.cli._output import Output

    for text in LINES:
        Console(soft_wrap=True).print(text, highlight=False, markup=markup)
        theirs = capsys.readouterr().out
        Output().line(text, markup=markup)
        assert capsys.readouterr().out == theirs, text


# -- one command built, not the tree -----------------------------------------------------------


def _help_texts(command: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """The help of *command* and of everything under it, by command path."""
    ctx = typer.Context(command, info_name=" ".join(("modelkeep", *path)))
    texts = {path: command.get_help(ctx)}
    for name, sub in getattr(command, "commands", {}).items():
        texts.update(_help_texts(sub, (*path, name)))
    return texts


@pytest.mark.parametrize(("argv", "built"), [
    (["list"], {"list"}), (["--store", "s", "--json", "show", "m@1"], {"show"}),
    (["--store=s", "-q", "register", "m", "x"], {"register"}),
    (["--registry", "list", "log", "m"], {"log"}),  # an option's value is not the command
    (["registry", "alias", "m@1", "prod"], {"registry"}),
    (["--help"], None), ([], None), (["lst"], None), (["--nope", "list"], None),
    (["--", "list"], None),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_only_the_invoked_command_is_built(argv: list[str], built: set[str] | None) -> None:
    from modelkeep.cli.main import _command

    pm = make_plugin_manager(entry_points=False, use_env=False)
    whole = set(_command(pm).commands)
    names = set(_command(pm, argv).commands)
    assert names == (whole if built is None else built)


def test_a_command_built_alone_is_the_one_in_the_tree() -> None:
    from modelkeep.cli.main import _command

    pm = make_plugin_manager(entry_points=False, use_env=False)
    whole = _command(pm)
    tree = _help_texts(whole)
    for name in whole.commands:
        alone = _command(pm, [name, "--help"])
        assert set(alone.commands) == {name}
        texts = _help_texts(alone.commands[name], (name,))
        assert texts == {p: t for p, t in tree.items() if p[:1] == (name,)}, name


# -- the entry-point scan -----------------------------------------------------------------------


def _distribution(root: Path, name: str, entry_points: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_the_entry_point_scan_finds_what_importlib_finds(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from modelkeep.hooks.manager import _installed_entry_points

    assert _installed_entry_points() == {
        ep.name: ep for ep in metadata.entry_points(group="modelkeep")}
    _distribution(tmp_path, "near_miss", "[modelkeep.extra]\nx = a:b\n[ modelkeep ]\ny = c:d\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "x" not in _installed_entry_points() and "y" not in _installed_entry_points()
    _distribution(tmp_path, "mk_plugin", "[console_scripts]\nz = e:f\n\n[[modelkeep]]\n"
                  "approval = mk_plugin.approve\n")
    found = _installed_entry_points()
    assert found == {ep.name: ep for ep in metadata.entry_points(group="modelkeep")}
    assert found["approval"].value == "mk_plugin.approve"


@pytest.mark.parametrize("package", ["modelkeep", "modelkeep.store", "modelkeep.policy"])
def test_every_lazily_exported_name_resolves(package: str) -> None:
    """The packages import their names on first use: each one listed resolves, to the object
    its module defines, and an unknown one is an AttributeError."""
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        if name == "__version__":
            continue
        value = getattr(module, name)
        assert value is not None, name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
