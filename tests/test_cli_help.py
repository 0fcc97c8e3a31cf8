"""``--help`` of every command, walked from the command tree (built-in groups, nested
subcommands, hidden aliases, and commands plugins add): no placeholder such as ``<str>``,
``<list[str]>`` or ``{name}``, and one layout for all of them."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer

from modelkeep.cli.main import _command, main
from modelkeep.hooks import hookimpl
from modelkeep.hooks.manager import PluginManager, make_plugin_manager
from tests.helpers import example_approval_plugin

# What Typer prints when a parameter has no metavar, or a plugin's app draws rich panels.
PLACEHOLDER = re.compile(r"<[A-Za-z][^>\s]*(?: range)?>|\{[^}\s]*\}|list\[|[╭╰│┃━─]")
SECTIONS = ("Arguments:", "Options:", "Commands:")


class Layout(enum.StrEnum):
    TEXT = "text"
    DOT = "dot"


class NestedGroup:
    """A plugin that adds a group of its own, built the way a plugin author would: a plain
    ``typer.Typer()`` (rich markup on by default) with typed, repeatable, numeric and Enum
    options."""

    @hookimpl
    def modelkeep_cli_commands(self, app: typer.Typer) -> None:
        group = typer.Typer(name="report", help="Reports from a plugin.")

        @group.command("sizes")
        def sizes(
            names: Annotated[list[str], typer.Argument(help="Models.")],
            top: Annotated[int, typer.Option("--top", min=1, help="How many.")] = 5,
            label: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
            out: Annotated[Path | None, typer.Option(help="Where to write.")] = None,
            layout: Annotated[Layout, typer.Option(help="How to draw.")] = Layout.TEXT,
        ) -> None:
            """Sizes of models."""

        app.add_typer(group)


@pytest.fixture(scope="module")
def pm() -> PluginManager:
    manager = make_plugin_manager(entry_points=False, use_env=False)
    # Its `approve` command once drew rich panels while every other command was plain.
    manager.register(example_approval_plugin(), "approval")
    manager.register(NestedGroup(), "nested")
    return manager


def _walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _walk(sub, (*path, name))
    return found


def _help(pm: PluginManager, path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main([*path, "--help"], plugins=pm) == 0, path
    return capsys.readouterr().out


def _check_layout(path: tuple[str, ...], command: Any, text: str) -> None:
    """The house layout: usage line, blank, indented description, then the sections in order,
    each row indented; arguments named in capitals, as in the usage line."""
    where = " ".join(("modelkeep", *path))
    lines = text.splitlines()
    usage = lines[0]
    assert usage.startswith(f"Usage: {where} [OPTIONS]"), (where, usage)
    assert lines[1] == "" and lines[2].startswith("  ") and lines[2].strip(), (where, lines[:3])
    headers = [line for line in lines if line and not line.startswith(" ")][1:]
    assert all(h in SECTIONS for h in headers), (where, headers)
    assert headers == sorted(headers, key=SECTIONS.index), (where, headers)
    assert "Options:" in headers and "  --help" in text, where
    if hasattr(command, "commands"):
        assert usage.endswith("COMMAND [ARGS]...") and "Commands:" in headers, where
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    if arguments:
        block = text.split("Arguments:\n", 1)[1].split("\n\n", 1)[0]
        for arg in arguments:
            name = str(arg.metavar)
            assert name == name.upper(), (where, name)
            assert name in usage, (where, name, usage)
            assert re.search(rf"^  {re.escape(name)}(\.\.\.)?\s", block, re.M), (where, name)


def test_every_help_has_no_placeholder_and_one_layout(
        pm: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    tree = _walk(_command(pm))
    paths = {" ".join(p) for p, _c in tree}
    # The walk reaches groups, nested subcommands, hidden aliases and plugin commands.
    assert {"", "key", "key generate", "keygen", "approve", "report sizes", "cache prune",
            "policy check", "registry rebuild"} <= paths
    assert len(tree) > 35
    for path, command in tree:
        text = _help(pm, path, capsys)
        assert not PLACEHOLDER.search(text), (path, PLACEHOLDER.search(text), text)
        _check_layout(path, command, text)


def test_values_are_named_by_metavars(pm: PluginManager,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(pm, ("register",), capsys)
    assert text.startswith("Usage: modelkeep register [OPTIONS] NAME PATH\n")
    for row in ("--tag KEY=VALUE", "--parent NAME@REF", "-m, --message TEXT", "--force  "):
        assert f"  {row}" in text, row
    assert "Usage: modelkeep sync [OPTIONS] [REF]...\n" in _help(pm, ("sync",), capsys)
    # A plugin's options get names from their flags, never from Python types.
    text = _help(pm, ("report", "sizes"), capsys)
    assert "Usage: modelkeep report sizes [OPTIONS] NAMES...\n" in text
    for row in ("--top TOP", "--label LABEL", "--out OUT", "--layout text|dot"):
        assert f"  {row}" in text, row
    approve = _help(pm, ("approve",), capsys)
    assert approve.startswith("Usage: modelkeep approve [OPTIONS] REF\n")
    assert "  --by BY" in approve


def test_usage_errors_name_arguments_as_the_help_does(
        pm: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["show"], plugins=pm) == 2
    assert "Missing argument 'REF'" in capsys.readouterr().err
