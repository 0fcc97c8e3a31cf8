"""Keeping a project's store and local registry out of git, as ``dvc init`` does for its cache:
``modelkeep init`` inside a git work tree adds them to the ``.gitignore`` beside
``modelkeep.toml``, once."""

from __future__ import annotations

from pathlib import Path


def git_work_tree(folder: Path) -> Path | None:
    """The top of the git work tree *folder* is in (a ``.git`` folder or file), or None."""
    for parent in (folder, *folder.parents):
        if (parent / ".git").exists():
            return parent
    return None


def ignore_entries(folder: Path, store_root: str | None, registry: str | None) -> list[str]:
    """``.gitignore`` lines, relative to *folder*, for a local store and a SQLite registry file
    that lie inside it (anything elsewhere is not this work tree's to ignore)."""
    paths: list[tuple[Path, bool]] = []
    if store_root is not None:
        paths.append((Path(store_root), True))
    if registry is not None and registry.startswith("sqlite:///"):
        paths.append((Path(registry[len("sqlite:///"):]), False))
    base = folder.resolve()
    out = []
    for path, is_dir in paths:
        full = (base / path).resolve() if not path.is_absolute() else path.resolve()
        if not full.is_relative_to(base) or full == base:
            continue
        out.append("/" + full.relative_to(base).as_posix() + ("/" if is_dir else ""))
    return out


def add_to_gitignore(folder: Path, entries: list[str]) -> list[str]:
    """Append to *folder*/.gitignore the *entries* it does not list yet; returns those added."""
    path = folder / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    have = {line.strip() for line in text.splitlines()}
    new = [e for e in entries if e not in have and e.rstrip("/") not in have]
    if new:
        prefix = "" if not text or text.endswith("\n") else "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(prefix + "".join(f"{e}\n" for e in new))
    return new
