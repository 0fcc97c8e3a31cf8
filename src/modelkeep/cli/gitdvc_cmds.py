"""Commands that tie models to git and DVC: ``lineage``, ``track``, ``checkout``, ``status``,
``check-pointers`` and ``install-hooks``.

Presentation only: the work is in :mod:`modelkeep.lineage` and :mod:`modelkeep.plugins.pointers`.
"""

from __future__ import annotations

import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from modelkeep.cli._state import state as _state
from modelkeep.errors import InvalidInputError, NotFoundError

HOOK_BEGIN = "# >>> modelkeep >>>"
HOOK_END = "# <<< modelkeep <<<"


def add_commands(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""

    @app.command()
    def lineage(
        ctx: typer.Context,
        ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS|latest")],
        fmt: Annotated[str, typer.Option("--format", metavar="text|mermaid|dot",
                                         help="Output format.")] = "text",
        depth: Annotated[int, typer.Option("--depth", metavar="N",
                                           help="Parent levels to follow.")] = 20,
    ) -> None:
        """A version's parents, code commit and data versions, as a tree or a graph."""
        from modelkeep import lineage as lin

        if fmt not in lin.FORMATS:
            raise InvalidInputError(f"unknown format {fmt!r}",
                                    hint=f"use one of {', '.join(lin.FORMATS)}")
        st = _state(ctx)
        root = lin.build(st.keep(), ref, depth)
        st.out.emit(root.to_json(), lambda: print(lin.render(root, fmt)))

    @app.command()
    def track(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="NAME (register PATH, or point at the newest "
                                            "version when PATH is missing) or NAME@REF.")],
        path: Annotated[Path, typer.Argument(help="Folder or file the pointer describes.")],
    ) -> None:
        """Write PATH.modelkeep, a pointer to commit with the code, and make PATH match it."""
        from modelkeep.plugins import pointers

        st = _state(ctx)
        pointer = pointers.track(st.keep(), name, path)
        st.out.emit(pointer.to_json(), lambda: st.out.console.print(
            f"{pointer.file.name} -> {pointer.ref}; commit it with git "
            f"({pointer.target.name} is in .gitignore)", highlight=False))

    @app.command()
    def checkout(
        ctx: typer.Context,
        paths: Annotated[list[Path] | None, typer.Argument(
            help="Targets or pointer files; omit for every pointer in the repository.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Discard local changes that are "
                                            "in no stored version.")] = False,
    ) -> None:
        """Make the workspace match the pointer files (only differing files are fetched)."""
        from modelkeep.plugins import pointers

        st = _state(ctx)
        found = pointers.find_pointers(Path.cwd(), paths or ())
        if not found:
            st.out.emit([], lambda: st.out.console.print("no pointer files"))
            return
        results = pointers.checkout(st.keep(), found, force=force)

        def human() -> None:
            for r in results:
                p = r.pointer
                if r.status == "ok":
                    st.out.console.print(f"{_rel(p.target)}: {p.ref} (unchanged)",
                                         highlight=False)
                    continue
                st.out.console.print(
                    f"{_rel(p.target)}: {p.ref} ({len(r.missing) + len(r.modified)} file(s) "
                    f"written, {len(r.extra)} removed, {r.unchanged} unchanged)",
                    highlight=False)

        st.out.emit([r.to_json() for r in results], human)

    @app.command()
    def status(
        ctx: typer.Context,
        paths: Annotated[list[Path] | None, typer.Argument(
            help="Targets or pointer files; omit for every pointer in the repository.")] = None,
    ) -> None:
        """How the workspace differs from the pointer files (exit code 1 when it does)."""
        from modelkeep.plugins import pointers

        st = _state(ctx)
        found = pointers.find_pointers(Path.cwd(), paths or ())
        results = pointers.status(st.keep(), found) if found else []

        def human() -> None:
            if not results:
                st.out.console.print("no pointer files")
            for r in results:
                p = r.pointer
                st.out.console.print(f"{_rel(p.target)}: {p.ref} {r.status}", highlight=False)
                for label, items in (("missing", r.missing), ("modified", r.modified),
                                     ("not in version", r.extra)):
                    for item in items:
                        st.out.console.print(f"    {label}: {item}", highlight=False)

        st.out.emit([r.to_json() for r in results], human)
        if any(r.status != "ok" for r in results):
            raise typer.Exit(1)

    @app.command("check-pointers")
    def check_pointers(
        ctx: typer.Context,
        paths: Annotated[list[Path] | None, typer.Argument(
            help="Targets or pointer files; omit for every pointer in the repository.")] = None,
        rev: Annotated[str | None, typer.Option(
            "--rev", help="Check the pointers of this commit instead of the work tree.")]
        = None,
    ) -> None:
        """Check that every pointed version exists in the registry and the store (pre-push)."""
        from modelkeep.errors import ModelkeepError
        from modelkeep.plugins import pointers

        st = _state(ctx)
        keep = st.keep()
        if rev is not None:
            found = pointers.pointers_at(Path.cwd(), rev)
        else:
            found = pointers.find_pointers(Path.cwd(), paths or ())
        problems = []
        for p in found:
            try:
                keep.snapshot_at(p.uri)
                mv = keep.get(p.ref)
                if mv.snapshot_id != p.snapshot_id:
                    problems.append((p, f"{p.ref} is snapshot {mv.snapshot_id[:12]} in the "
                                        f"registry, not {p.snapshot_id[:12]}"))
            except ModelkeepError as exc:
                problems.append((p, exc.message))
        def human() -> None:
            for p, why in problems:
                st.out.console.print(f"{_rel(p.file)}: {why}", highlight=False)
            if not problems:
                st.out.console.print(f"{len(found)} pointer(s): every version exists",
                                     highlight=False)

        st.out.emit([{**p.to_json(), "problem": why} for p, why in problems], human)
        if problems:
            raise NotFoundError(f"{len(problems)} pointed version(s) missing",
                                hint="register and push them before pushing the code")

    @app.command("install-hooks")
    def install_hooks(
        ctx: typer.Context,
        with_dvc: Annotated[bool, typer.Option(
            "--with-dvc", help="Also add the lines `dvc install` writes (it refuses to touch "
            "hooks that exist, so this installs both in either order).")] = False,
    ) -> None:
        """Add git hooks: post-checkout runs checkout, pre-push runs check-pointers. Hooks that
        exist (e.g. from `dvc install`) are kept: modelkeep's lines are added to them."""
        st = _state(ctx)
        written = install_git_hooks(Path.cwd(), with_dvc=with_dvc)
        def human() -> None:
            for p in written:
                st.out.console.print(f"installed {p}", highlight=False)

        st.out.emit([str(p) for p in written], human)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _hook_block(hook: str) -> str:
    me = f"{shlex.quote(sys.executable)} -m modelkeep"
    if hook == "post-checkout":
        # $3 is 1 for a branch checkout, 0 for `git checkout -- file`; only the first moves HEAD.
        body = f'if [ "$3" = "1" ]; then {me} checkout || echo "modelkeep checkout failed" >&2; fi'
    else:
        # stdin lists "<local ref> <local sha> <remote ref> <remote sha>" per pushed ref; check
        # the pointers of each pushed commit (all zeros: a deletion, nothing to check).
        body = (
            "modelkeep_refs=$(cat)\n"
            'printf \'%s\\n\' "$modelkeep_refs" | while read -r _ sha _ _; do\n'
            f'  case "$sha" in *[!0]*) {me} check-pointers --rev "$sha" || exit 1;; esac\n'
            "done || exit 1"
        )
    return f"{HOOK_BEGIN}\n{body}\n{HOOK_END}\n"


DVC_HOOKS = ("post-checkout", "pre-commit", "pre-push")


def install_git_hooks(start: Path, *, with_dvc: bool = False) -> list[Path]:
    """Install modelkeep's post-checkout and pre-push hooks in the repository around *start*.

    A hook file that exists keeps its content: modelkeep's block goes right after the ``#!``
    line, ahead of lines such as DVC's ``exec dvc git-hook …`` that end the script; a second
    install replaces the block instead of adding another. *with_dvc* adds DVC's own hook lines
    (exactly those ``dvc install`` writes) where they are missing, last, since they ``exec``.
    """
    try:
        out = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], cwd=start,
                             capture_output=True, text=True, check=True)
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise InvalidInputError("not inside a git repository",
                                hint="run it in the repository's work tree") from None
    hooks = Path(out.stdout.strip())
    if not hooks.is_absolute():
        hooks = (start / hooks).resolve()
    hooks.mkdir(parents=True, exist_ok=True)
    written = []
    for hook in ("post-checkout", "pre-commit", "pre-push"):
        path = hooks / hook
        text = path.read_text() if path.exists() else "#!/bin/sh\n"
        if with_dvc and hook in DVC_HOOKS and "dvc git-hook" not in text:
            text = text.rstrip("\n") + f"\nexec dvc git-hook {hook} $@\n"
        if hook == "pre-commit":  # modelkeep has nothing to do before a commit: DVC's only
            if with_dvc and (not path.exists() or path.read_text() != text):
                _write_hook(path, text)
                written.append(path)
            continue
        block = _hook_block(hook)
        if HOOK_BEGIN in text and HOOK_END in text:
            head, _, rest = text.partition(HOOK_BEGIN)
            _, _, tail = rest.partition(HOOK_END)
            text = head + block.rstrip("\n") + tail
        else:
            lines = text.splitlines(keepends=True)
            if lines and lines[0].startswith("#!"):
                first = lines[0] if lines[0].endswith("\n") else lines[0] + "\n"
                text = first + block + "".join(lines[1:])
            else:
                text = "#!/bin/sh\n" + block + text
        _write_hook(path, text)
        written.append(path)
    return written


def _write_hook(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


__all__ = ["add_commands", "install_git_hooks"]
