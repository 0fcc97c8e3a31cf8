"""The one help style of every ``modelkeep`` command, built-in or added by a plugin.

Left to itself, Typer prints Python types as placeholders (``--tag <list[str]>``, ``ref <str>``),
wraps required arguments in braces in the usage line (``{ref}``), and draws rich panels for a
plugin's commands unless the plugin's app says otherwise: three looks in one ``--help``. Here
every command renders the same plain layout, whoever built it::

    Usage: modelkeep pull [OPTIONS] REF DEST

      Materialise a version's files in DEST, verified, all or nothing.

    Arguments:
      REF   NAME@VERSION|ALIAS|latest  [required]
      DEST  Destination folder (new or empty).  [required]

    Options:
      --force  Replace a non-empty destination.
      --help   Show this message and exit.

A value is named by its metavar: the one a command gives (``--tag KEY=VALUE``), else its choices
(``--format text|dot``) or the argument's or the flag's name in capitals (``--store STORE``).
Optional arguments are bracketed in the usage line and repeatable ones end in ``...``, as in most
command-line tools. :func:`apply` gives a command tree this style; :func:`modelkeep.cli.main.main`
applies it to the whole tree, plugin commands included, so a command added later needs nothing to
get it.
"""

from __future__ import annotations

from typing import Any

# Typer builds its parameters and commands from fixed classes (it has no setting for the help
# layout), so each command's class is swapped for a subclass whose help methods are the ones
# below; the subclass adds no state, so the swap is allowed.
_STYLED: dict[type, type] = {}


def apply(command: Any) -> Any:
    """Give *command* and every subcommand the house help style; returns *command*."""
    cls = type(command)
    if not getattr(cls, "modelkeep_help_style", False):
        styled = _STYLED.get(cls)
        if styled is None:
            styled = _STYLED[cls] = type(cls.__name__, (cls,), {
                "modelkeep_help_style": True, "format_help": _format_help,
                "collect_usage_pieces": _collect_usage_pieces,
                "format_options": _format_options,
            })
        command.__class__ = styled
    for param in command.params:
        if param.metavar is None and _takes_value(param):
            # Usage errors ("Missing argument 'REF'") then name it as the help does.
            param.metavar = _default_metavar(param)
    for sub in getattr(command, "commands", {}).values():
        apply(sub)
    return command


def _default_metavar(param: Any) -> str:
    choices = _choices(param)
    if choices:
        return "|".join(choices)
    # An option is named by its flag (``--older-than`` is OLDER_THAN), not by the Python
    # variable behind it, which the user never sees.
    longest = max(param.opts, key=len) if param.param_type_name == "option" else param.name
    return str(longest).lstrip("-").replace("-", "_").upper()


def _choices(param: Any) -> list[str]:
    """The values an Enum-typed parameter takes (Typer keeps them on its type descriptor,
    click on its ``Choice`` type)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and getattr(desc, "is_choice", False):
        return [str(getattr(c, "value", c)) for c in desc.choices or ()]
    return [str(c) for c in getattr(getattr(param, "type", None), "choices", None) or ()]


def _takes_value(param: Any) -> bool:
    return param.param_type_name == "argument" or not (param.is_flag or param.count)


def _usage_piece(arg: Any) -> str:
    name = str(arg.metavar)
    if not arg.required:
        name = f"[{name}]"
    return name + ("..." if arg.nargs != 1 else "")


def _option_names(opt: Any) -> str:
    value = "" if not _takes_value(opt) else f" {opt.metavar}"
    if opt.nargs != 1 and value:
        value += "..."
    names = ", ".join(sorted(opt.opts, key=lambda o: o.startswith("--"))) + value
    if opt.secondary_opts:
        names += " / " + ", ".join(opt.secondary_opts)
    return names


def _argument_name(arg: Any) -> str:
    return str(arg.metavar) + ("..." if arg.nargs != 1 else "")


# -- the layout: click's plain sections, with metavars in place of Python types ---------------


def _format_help(cmd: Any, ctx: Any, formatter: Any) -> None:
    # click's own order; Typer would switch to rich panels by the app's markup mode.
    cmd.format_usage(ctx, formatter)
    cmd.format_help_text(ctx, formatter)
    cmd.format_options(ctx, formatter)
    cmd.format_epilog(ctx, formatter)


def _collect_usage_pieces(cmd: Any, ctx: Any) -> list[str]:
    pieces = [cmd.options_metavar] if cmd.options_metavar else []
    pieces += [_usage_piece(p) for p in cmd.get_params(ctx)
               if p.param_type_name == "argument" and not getattr(p, "hidden", False)]
    subcommands = getattr(cmd, "subcommand_metavar", None)
    if subcommands:
        pieces.append(subcommands)
    return pieces


def _format_options(cmd: Any, ctx: Any, formatter: Any) -> None:
    args: list[tuple[str, str]] = []
    opts: list[tuple[str, str]] = []
    for param in cmd.get_params(ctx):
        # Typer's record: its left column carries the type placeholder and is rebuilt; the
        # right column (help, default, range, "required") is kept as it is.
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            args.append((_argument_name(param), record[1]))
        else:
            opts.append((_option_names(param), record[1]))
    for title, rows in (("Arguments", args), ("Options", opts)):
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)
    if hasattr(cmd, "format_commands"):
        cmd.format_commands(ctx, formatter)
