"""The summaries a person reads in the MLflow UI: the one place that says what a version's and a
model's generated description holds, and how it is kept apart from the user's own text.

MLflow renders a description as Markdown (showdown, GitHub flavour, then an HTML sanitiser that
drops comments and opens links in a new tab). The machine tags stay as they are for scripts; the
description adds what a person wants to read without opening them: sizes in human units, the
dedup and compression figures, parents as links to their version pages, code and data lineage,
the scan verdict, the signature, and how to load the version. On the registered model, the alias
history as a table.

A description is the user's text (``register -m``, ``describe``), then one generated block::

    user text

    1.2 MiB in 3 files, stored in 310.4 KiB (25.6%) <!-- modelkeep:generated -->
    ...
    <!-- /modelkeep:generated -->

The block starts at the beginning of the line holding :data:`BEGIN` (so the first line, which
MLflow's version table shows cut to 32 characters, reads as a sentence when there is no user
text) and ends after :data:`END`. Both markers are HTML comments, invisible once rendered.
:func:`user_text` strips the block when the message is read back; :func:`compose` puts a new one
in place of the old, never a second. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from modelkeep.aliases import history
from modelkeep.catalog.tags import TAG_PREFIX

if TYPE_CHECKING:
    from modelkeep.aliases import AliasEvent
    from modelkeep.store import Parent, Snapshot

BEGIN = "<!-- modelkeep:generated -->"
END = "<!-- /modelkeep:generated -->"
# MLflow's description columns are VARCHAR(5000) on PostgreSQL and MySQL: user text and
# generated block together must fit, and the user's text wins (the block shrinks, then goes).
MAX_DESCRIPTION = 5000
MAX_ALIAS_ROWS = 25  # the model page's alias table: newest rows; `modelkeep log` has them all
SCAN_TEXT = {
    "clean": "clean: no pickled code",
    "pickle": "pickle files importing only allowed callables",
    "unsafe": "**unsafe**: pickles import",
    "incomplete": "incomplete: a pickle was malformed or over the scan limits",
}
OP_TEXT = {"set": "set to", "rollback": "rolled back to"}


# -- the block and the user's text --------------------------------------------------------------


def split(description: str) -> tuple[str, str]:
    """``(user text, generated block)`` of a description; the block is ``""`` when there is
    none. Text after the block (a person typed below it in the MLflow UI) stays the user's."""
    at = description.find(BEGIN)
    if at < 0:
        return description, ""
    start = description.rfind("\n", 0, at) + 1
    end = description.find(END, at)
    end = len(description) if end < 0 else end + len(END)
    before = description[:start].rstrip("\n")
    after = description[end:].strip("\n")
    user = f"{before}\n\n{after}" if before and after else before or after
    return user, description[start:end]


def user_text(description: str) -> str:
    """The user's own part of a description: the generated block removed."""
    return split(description)[0]


def compose(user: str, blocks: Sequence[str]) -> str:
    """The description holding *user* text first, then the first of *blocks* (each shorter
    than the one before) that fits in :data:`MAX_DESCRIPTION` with it; the user's text alone
    when none fits."""
    user = user_text(user).rstrip("\n")
    for block in blocks:
        text = f"{user}\n\n{block}" if user else block
        if len(text) <= MAX_DESCRIPTION:
            return text
    return user


# -- Markdown helpers ---------------------------------------------------------------------------

# Backslash escapes showdown honours; enough that a name or a user is never read as emphasis,
# a link, HTML or a table cell boundary.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def text(value: str) -> str:
    """*value* as literal Markdown text (no emphasis, links or HTML), one line."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def code(value: str) -> str:
    """*value* as a code span (literal, monospace), one line, safe inside a table cell."""
    value = " ".join(str(value).split()).replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    return f"{fence} {value} {fence}" if fence == "``" else f"`{value}`"


def version_link(name: str, version: int, label: str | None = None) -> str:
    """A link to the MLflow UI's page of version *version* of *name*: the UI's own route
    (``#/models/:modelName/versions/:version``), relative, so it works under any host."""
    target = f"#/models/{quote(name, safe='')}/versions/{version}"
    return f"[{text(label or f'{name}@{version}')}]({target})"


def human_bytes(n: int) -> str:
    """Bytes in binary units, as a person reads them: ``512 B``, ``1.2 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _when(time: str) -> str:
    """An alias history time (``2026-12-05T05:44:35Z``) or a snapshot's as a person reads it."""
    return time[:19].replace("T", " ") + " UTC"


def _int(tags: Mapping[str, str], key: str) -> int | None:
    value = tags.get(TAG_PREFIX + key, "")
    return int(value) if value.isdigit() else None


# -- a version ----------------------------------------------------------------------------------


def version_block(
    name: str,
    version: int,
    snapshot: Snapshot,
    snapshot_id: str,
    tags: Mapping[str, str],
    *,
    aliases: Iterable[str] = (),
    model_tags: Mapping[str, str] | None = None,
    signers: Sequence[str] | None = None,
) -> list[str]:
    """The generated blocks of version *version* of *name*, fullest first (for
    :func:`compose`): its figures from the registry *tags*, its files, parents, author and
    lineage from *snapshot*, where each of its *aliases* came from (the model's alias history
    in *model_tags*), the key ids that signed it (*signers*; None: not known)."""
    size = snapshot.size
    added, stored = _int(tags, "bytes_added"), _int(tags, "bytes_stored")
    files = len(snapshot.files)
    size_text = f"{human_bytes(size)} in {files} file{'s' if files != 1 else ''}"
    headline = size_text
    if stored == 0 and size:
        headline += ", no new bytes stored"  # a promotion, or content the store held
    elif stored is not None and size:
        headline += f", {human_bytes(stored)} stored ({percent(stored / size)})"
    rows: list[tuple[str, str]] = [("Size", f"**{size_text}** ({size:,} bytes)")]
    if added is not None:
        rows.append(("Stored", _stored_text(size, added, stored)))
    if snapshot.parents:
        rows.append(("Parents", ", ".join(_parent(p) for p in snapshot.parents)))
    alias_text = _aliases_text(name, version, aliases, model_tags or {})
    if alias_text:
        rows.append(("Aliases", alias_text))
    git = _git_text(snapshot.lineage.get("git"))
    if git:
        rows.append(("Code", git))
    dvc = _dvc_text(snapshot.lineage.get("dvc"))
    if dvc:
        rows.append(("Data", dvc))
    rows.append(("Scan", _scan_text(tags)))
    if signers is not None:
        rows.append(("Signature", _signature_text(name, version, signers)))
    who = f"by {code(snapshot.author)} " if snapshot.author else ""
    rows.append(("Registered", f"{who}at {_when(snapshot.created)}"))
    rows.append(("Snapshot", code(snapshot_id)))
    ref = f"{name}@{version}"
    load = (f"{code(f'modelkeep fetch {ref}')} (a read-only folder) · "
            f"{code(f'modelkeep pull {ref} DEST')} · "
            f"{code(f'models:/{name}/{version}')} in MLflow")
    rows.append(("Load", load))

    def block(rows: Sequence[tuple[str, str]]) -> str:
        table = "\n".join(f"| {key} | {value} |" for key, value in rows)
        return f"{headline} {BEGIN}\n\n| modelkeep | |\n|---|---|\n{table}\n{END}"

    essential = [r for r in rows if r[0] in ("Size", "Stored", "Parents", "Scan", "Load")]
    return [block(rows), block(essential), f"{headline} {BEGIN}\n{END}"]


def _stored_text(size: int, added: int, stored: int | None) -> str:
    """What the version added to the store: the stored ratio, then why (dedup, compression)."""
    if not size:
        return "nothing (no bytes)"
    dedup = f"{percent(1.0 - added / size)} deduplicated (already in the store)"
    if stored is None:
        return f"{human_bytes(added)} of new bytes: {dedup}"
    out = f"**{human_bytes(stored)}** added, {percent(stored / size)} of its size: {dedup}"
    if added:
        out += (f", the {human_bytes(added)} of new bytes compressed to "
                f"{percent(stored / added)}")
    return out


def _parent(parent: Parent) -> str:
    if parent.name and parent.version:
        return version_link(parent.name, parent.version)
    return f"snapshot {code(parent.snapshot_id[:12])}"


def _aliases_text(name: str, version: int, aliases: Iterable[str],
                  model_tags: Mapping[str, str]) -> str:
    events = history(model_tags)
    out = []
    for alias in sorted(aliases):
        since = [e for e in events if e.alias == alias and e.version == version]
        item = code(alias)
        if since:
            item += f" since {_when(since[-1].time)}"
        out.append(item)
    return ", ".join(out)


def _git_text(git: Any) -> str:
    if not isinstance(git, Mapping):
        return ""
    commit = git.get("commit")
    if not isinstance(commit, str) or not commit:
        status = git.get("status")
        return "" if status in (None, "ok", "not-a-repository") else f"git: {text(str(status))}"
    out = f"git commit {code(commit[:12])}"
    if isinstance(git.get("branch"), str):
        out += f" on {code(git['branch'])}"
    if git.get("dirty"):
        out += " with uncommitted changes"
    if isinstance(git.get("path"), str) and git["path"] not in ("", "."):
        out += f", path {code(git['path'])}"
    if isinstance(git.get("remote"), str):
        out += f" · {code(git['remote'])}"
    return out


def _dvc_text(dvc: Any, limit: int = 6) -> str:
    if not isinstance(dvc, Mapping) or dvc.get("status") != "ok":
        return ""
    items: list[str] = []
    for stage, body in sorted((dvc.get("stages") or {}).items()):
        deps = body.get("deps") if isinstance(body, Mapping) else None
        n = len(deps) if isinstance(deps, list) else 0
        items.append(f"stage {code(stage)} ({n} input{'s' if n != 1 else ''})")
    for path, body in sorted((dvc.get("files") or {}).items()):
        outs = body.get("outs") if isinstance(body, Mapping) else None
        digest = ""
        if isinstance(outs, list) and outs and isinstance(outs[0], Mapping):
            value = outs[0].get("md5") or outs[0].get("etag") or ""
            digest = f" md5 {code(str(value)[:12])}" if value else ""
        items.append(f"{code(path)}{digest}")
    if not items:
        return ""
    more = len(items) - limit
    shown = ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")
    remote = dvc.get("remote")
    return f"DVC: {shown}" + (f" · remote {code(remote)}" if isinstance(remote, str) else "")


def _scan_text(tags: Mapping[str, str]) -> str:
    verdict = tags.get(TAG_PREFIX + "scan")
    if verdict is None:
        return "not scanned"
    out = SCAN_TEXT.get(verdict, text(verdict))
    if verdict == "unsafe":
        names = [n for n in tags.get(TAG_PREFIX + "scan.unsafe", "").split(",") if n]
        out += " " + (", ".join(code(n) for n in names[:10]) or "unsafe callables")
    return out


def _signature_text(name: str, version: int, signers: Sequence[str]) -> str:
    if not signers:
        return "not signed"
    keys = ", ".join(code(k) for k in signers)
    return (f"signed with key {keys}; check: "
            f"{code(f'modelkeep verify --require-signed {name}@{version}')}")


# -- a registered model -------------------------------------------------------------------------


def model_block(name: str, model_tags: Mapping[str, str],
                aliases: Mapping[str, int]) -> list[str]:
    """The generated blocks of model *name*'s description, fullest first: where each alias
    points now and its history (the model's ``modelkeep.alias_history.*`` tags) as a table,
    newest first. No block (``[]``) when no alias was ever set."""
    events = history(model_tags)
    if not events and not aliases:
        return []
    now = ", ".join(f"{code(a)} → {version_link(name, v, f'version {v}')}"
                    for a, v in sorted(aliases.items())) or "none"
    rows = _history_rows(name, events)
    out = []
    for keep_rows in (MAX_ALIAS_ROWS, 10, 3, 0):
        shown = rows[:keep_rows]
        lines = [f"Aliases now: {now} {BEGIN}", ""]
        if shown:
            lines += ["| When | Alias | Change | By |", "|---|---|---|---|"]
            lines += [f"| {w} | {a} | {c} | {b} |" for w, a, c, b in shown]
        if len(rows) > len(shown):
            lines += ["", f"{len(rows) - len(shown)} older change(s): "
                          f"{code(f'modelkeep log {name}')}"]
        lines.append(END)
        out.append("\n".join(lines))
    return out


def _history_rows(name: str, events: Sequence[AliasEvent]) -> list[tuple[str, str, str, str]]:
    """One row per alias change, newest first: when, alias, what changed (with the version it
    pointed at before), by whom."""
    previous: dict[str, int | None] = {}
    rows = []
    for e in events:
        before = previous.get(e.alias)
        if e.version is None:
            change = "removed"
        else:
            link = version_link(name, e.version, f"version {e.version}")
            change = f"{OP_TEXT.get(e.op, 'set to')} {link}"
        if before is not None and before != e.version:
            change += f" (was {before})"
        previous[e.alias] = e.version
        rows.append((_when(e.time), code(e.alias), change, code(e.author) if e.author else ""))
    return rows[::-1]
