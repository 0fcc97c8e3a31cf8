"""Policy commands: ``policy check``, ``policy show`` and ``prune``.

Presentation only, like :mod:`modelkeep.cli.main`: the decisions come from
:mod:`modelkeep.policy` (the same engine the built-in policy plugin vetoes with), and retention
from :func:`modelkeep.policy.apply_retention`. Each command takes ``--json`` after its name as
well as before it. :func:`add_to` adds them to the ``modelkeep`` app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelkeep.cli._output import human_bytes
from modelkeep.cli._state import State
from modelkeep.cli._state import state as _state
from modelkeep.errors import VetoError
from modelkeep.refs import validate_name

if TYPE_CHECKING:
    from modelkeep.policy import Policy

policy_app = typer.Typer(
    name="policy", help="Explain the policies of modelkeep.toml: what they decide for a version.",
    no_args_is_help=True, rich_markup_mode=None,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
_MARKS = {"pass": "[green]pass[/green]", "warn": "[yellow]warn[/yellow]",
          "fail": "[red]FAIL[/red]"}




@policy_app.command("check")
def check(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")],
    alias: Annotated[str | None, typer.Option("--alias", help="Check the promotion gate of this "
                                              "alias instead of the rules for new versions.")]
    = None,
    json_out: JsonOption = False,
) -> None:
    """Explain each policy decision for a version; exit 9 when one fails."""
    from modelkeep.policy import check as run_check

    st = _state(ctx, json_out)
    result = run_check(st.keep(), ref, alias)

    def human() -> None:
        c = st.out.console
        what = f"promotion to {alias!r}" if alias else "rules for new versions"
        for reason in result.plugin_refusals:
            c.print(f"{result.ref}: {what} refused by a plugin: {reason}", highlight=False,
                    markup=False)
        if not result.policy.applies:
            c.print(f"{result.ref}: no policy matches {result.name}", highlight=False)
            return
        if not result.decisions:
            c.print(f"{result.ref}: {what}: no rule is set for {result.name}", highlight=False)
            return
        # One settings file holds every table: name it once, and each row's glob.
        files = sorted({d.file for d in result.decisions if d.file})
        c.print(f"{result.ref}: {what}, policies from {', '.join(files) or 'defaults'}",
                highlight=False, markup=False)
        from rich.markup import escape
        from rich.table import Column, Table

        table = Table(Column("rule", overflow="fold"), "result", Column("from", overflow="fold"),
                      Column("why", overflow="fold", ratio=1))
        for d in result.decisions:
            why = d.reason + (f"; {d.fix}" if d.fix else "")
            origin = f'"{d.glob}"' if d.glob else "default"
            table.add_row(d.rule, _MARKS[d.status], escape(origin), escape(why))
        c.print(table)
        failed = sum(1 for d in result.decisions if not d.passed)
        c.print(f"{failed} of {len(result.decisions)} rule(s) failed" if failed
                else f"all {len(result.decisions)} rule(s) passed", highlight=False)

    st.out.emit(result.to_json(), human)
    if not result.passed:
        raise typer.Exit(VetoError.exit_code)


@policy_app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Model name; omit to list every policy "
                                               "table.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Show the effective policy of a model name (each key and the glob it came from)."""
    from modelkeep.config import load_config

    st = _state(ctx, json_out)
    policies = load_config().policy_set
    if name is None:
        tables = policies.to_json()

        def human_tables() -> None:
            c = st.out.console
            if not tables:
                c.print("no policies: add [policies.\"GLOB\"] tables to modelkeep.toml",
                        highlight=False, markup=False)
                return
            for t in tables:
                c.print(f'policies."{t["glob"]}"  ({t["file"]})', highlight=False, markup=False)
                for key, value in t["keys"].items():
                    c.print(f"  {key} = {_value(value)}", highlight=False, markup=False)

        st.out.emit(tables, human_tables)
        return
    policy = policies.for_name(validate_name(name))
    st.out.emit(policy.to_json(), lambda: _print_policy(st, policy))


def _value(value: Any) -> str:
    import json

    return "-" if value is None else json.dumps(value)


def _print_policy(st: State, policy: Policy) -> None:
    c = st.out.console
    if not policy.applies:
        c.print(f"no policy matches {policy.name}; the defaults apply", highlight=False)
    else:
        files = sorted({s.file for s in policy.settings.values() if s.file})
        c.print(f"{policy.name}: matched " + ", ".join(f'"{g}"' for g in policy.matched)
                + f" (the more specific wins) in {', '.join(files)}", highlight=False,
                markup=False)
    from rich.markup import escape
    from rich.table import Column, Table

    table = Table(Column("key", overflow="fold"), Column("value", overflow="fold"),
                  Column("from", overflow="fold"))

    def origin(glob: str | None) -> str:
        return f'"{glob}"' if glob else "default"

    data = policy.to_json()
    for key, s in data["settings"].items():
        table.add_row(key, escape(_value(s["value"])), escape(origin(s["glob"])))
    for gate in policy.gates.values():
        for s in gate.settings():
            table.add_row(escape(s.key), escape(_value(s.to_json()["value"])),
                          escape(origin(s.glob)))
    c.print(table)


def prune(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Model name; omit for every model.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted; delete "
                                          "nothing.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Delete the versions the retention policies let go (keep_last, keep_days)."""
    from modelkeep.policy import apply_retention, retention_plan

    st = _state(ctx, json_out)
    if name is not None:
        validate_name(name)
    keep = st.keep()
    plan = retention_plan(keep, name)
    total = sum(i.size for i in plan if i.action == "delete")
    with st.out.progress("pruning", total or 1) as advance:
        report = apply_retention(keep, dry_run=dry_run, name=name, plan=plan, progress=advance)

    def human() -> None:
        c = st.out.console
        if not report.plan:
            target = name or "any model"
            c.print(f"nothing to prune: no retention rule (keep_last, keep_days) applies to "
                    f"{target}", highlight=False)
            return
        deleted = {d.ref: d for d in report.deleted}
        failed = dict(report.failed)
        skipped = dict(report.skipped)
        from rich.markup import escape
        from rich.table import Column, Table

        table = Table("version", "action", "size", Column("why", overflow="fold"))
        for item in report.plan:
            action = item.action
            why = "; ".join(item.reasons)
            if item.ref in failed:
                action, why = "[red]failed[/red]", failed[item.ref]
            elif item.ref in skipped:
                action, why = "keep", f"kept since the plan: {skipped[item.ref]}"
            elif action == "delete":
                done = deleted.get(item.ref)
                action = "[red]delete[/red]" if dry_run else "[red]deleted[/red]"
                if done is not None and not done.snapshot_deleted:
                    why += f" (snapshot kept: also {', '.join(done.shared_with)})"
            table.add_row(item.ref, action, human_bytes(item.size), escape(why))
        c.print(table)
        goes = len(report.to_delete)
        if dry_run:
            c.print(f"would delete {goes} of {len(report.plan)} version(s) (dry run)",
                    highlight=False)
        else:
            c.print(f"deleted {len(report.deleted)} of {len(report.plan)} version(s); the "
                    f"chunks only they used stay until garbage collection", highlight=False)

    st.out.emit(report.to_json(), human)
    if not report.ok:
        raise typer.Exit(1)


def add_to(app: typer.Typer) -> None:
    """Add the policy commands to *app*."""
    app.add_typer(policy_app)
    app.command()(prune)
