"""A version's lineage as a graph: its parents (walking the version DAG), the code commit and the
data versions each version records, rendered as a text tree, Mermaid or Graphviz dot.

Reads only what ``Keep`` offers (versions and snapshots); the lineage sections it shows are
those of :mod:`modelkeep.plugins.git` and :mod:`modelkeep.plugins.dvc`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelkeep.errors import ModelkeepError

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.store import Snapshot

FORMATS = ("text", "mermaid", "dot")


@dataclass
class Node:
    """One version in the graph."""

    label: str  # NAME@VERSION, or the snapshot id's first 12 characters when unknown
    snapshot_id: str
    code: dict[str, Any] | None = None
    data: list[dict[str, Any]] = field(default_factory=list)
    parents: list[Node] = field(default_factory=list)
    seen_before: bool = False  # a DAG: a version reached twice is expanded once
    missing: bool = False  # a parent whose snapshot cannot be read here

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.label, "snapshot_id": self.snapshot_id, "code": self.code,
                "data": self.data, "missing": self.missing,
                "parents": [p.to_json() for p in self.parents]}


def _short(digest: Any) -> str:
    text = str(digest or "")
    return text[:12]


def _hash_of(entry: Mapping[str, Any]) -> str:
    for key in ("md5", "etag", "checksum"):
        if entry.get(key):
            return f"{key}:{_short(entry[key])}"
    return ""


def data_versions(lineage: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every data input a version records: ``.dvc`` outs and ``dvc.lock`` stage deps, as
    ``{"path", "hash", "via"}`` (``via``: the ``.dvc`` file or the stage)."""
    dvc = lineage.get("dvc")
    out: list[dict[str, Any]] = []
    if not isinstance(dvc, Mapping) or dvc.get("status") != "ok":
        return out
    # DVC writes paths relative to the .dvc file or dvc.yaml; shown from the project root.
    for file, record in sorted((dvc.get("files") or {}).items()):
        folder = file.rpartition("/")[0]
        for e in record.get("outs") or []:
            out.append({"path": _join(folder, e.get("path")), "hash": _hash_of(e), "via": file})
    for stage, record in sorted((dvc.get("stages") or {}).items()):
        folder = stage.rpartition("/dvc.yaml:")[0] if "/dvc.yaml:" in stage else ""
        for e in record.get("deps") or []:
            out.append({"path": _join(folder, e.get("path")), "hash": _hash_of(e),
                        "via": f"stage {stage}"})
    return out


def _join(folder: str, path: Any) -> str:
    return f"{folder}/{path}" if folder else str(path)


def _code(lineage: Mapping[str, Any]) -> dict[str, Any] | None:
    git = lineage.get("git")
    return dict(git) if isinstance(git, Mapping) else None


def build(keep: Keep, ref: str, depth: int = 20) -> Node:
    """The lineage graph of *ref*, parents followed up to *depth* levels."""
    mv = keep.get(ref)
    seen: dict[str, Node] = {}

    def node(label: str, sid: str, snap: Snapshot | None, level: int) -> Node:
        if sid in seen:
            return Node(label, sid, seen_before=True)
        if snap is None:
            return Node(label, sid, missing=True)
        n = Node(label, sid, _code(snap.lineage), data_versions(snap.lineage))
        seen[sid] = n
        if level < depth:
            for p in snap.parents:
                n.parents.append(node(str(p), p.snapshot_id, _parent_snapshot(keep, p), level + 1))
        return n

    return node(mv.ref, mv.snapshot_id, keep.snapshot(mv.ref), 0)


def _parent_snapshot(keep: Keep, parent: Any) -> Snapshot | None:
    try:
        if parent.name and parent.version:
            mv = keep.get(f"{parent.name}@{parent.version}")
            if mv.snapshot_id == parent.snapshot_id:
                return keep.snapshot(mv.ref)
        return keep.store.load_snapshot(parent.snapshot_id)
    except ModelkeepError:
        return None


def _code_text(code: Mapping[str, Any] | None) -> str:
    if not code:
        return "code: not recorded"
    status = code.get("status")
    if status != "ok":
        return f"code: {status}"
    if not code.get("commit"):
        return "code: git repository without commits"
    where = code.get("branch") or "detached HEAD"
    flags = [f for f, on in (("dirty", code.get("dirty")), ("shallow", code.get("shallow")))
             if on]
    extra = f" ({', '.join(flags)})" if flags else ""
    remote = f" {code['remote']}" if code.get("remote") else ""
    return f"code: git {code['commit'][:12]} on {where}{extra}{remote}"


def text(root: Node) -> str:
    lines: list[str] = []

    def walk(n: Node, prefix: str, last: bool, top: bool) -> None:
        head = "" if top else prefix + ("└── " if last else "├── ")
        suffix = " (see above)" if n.seen_before else " (snapshot not found)" if n.missing else ""
        lines.append(f"{head}{n.label}  {n.snapshot_id[:12]}{suffix}")
        if n.seen_before or n.missing:
            return
        inner = "" if top else prefix + ("    " if last else "│   ")
        items: list[Any] = [_code_text(n.code)]
        items += [f"data: {d['path']} {d['hash']} ({d['via']})"
                  for d in n.data]
        children = n.parents
        for i, item in enumerate(items):
            end = i == len(items) - 1 and not children
            lines.append(f"{inner}{'└── ' if end else '├── '}{item}")
        for i, p in enumerate(children):
            walk(p, inner, i == len(children) - 1, False)

    walk(root, "", True, True)
    return "\n".join(lines)


def _edges(root: Node) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Graph nodes (id -> label) and edges (from, to, label): inputs point at what they made."""
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str, str]] = []

    def vid(n: Node) -> str:
        return f"v_{n.snapshot_id[:12]}"

    def walk(n: Node) -> None:
        nodes.setdefault(vid(n), n.label)
        if n.seen_before or n.missing:
            return
        code = n.code or {}
        if code.get("commit"):
            cid = f"c_{code['commit'][:12]}"
            dirty = " dirty" if code.get("dirty") else ""
            nodes[cid] = f"git {code['commit'][:7]}{dirty}"
            edges.append((cid, vid(n), "code"))
        for d in n.data:
            did = "d_" + "".join(ch if ch.isalnum() else "_" for ch in f"{d['path']}{d['hash']}")
            nodes[did] = f"{d['path']} {d['hash']}".strip()
            edges.append((did, vid(n), "data"))
        for p in n.parents:
            walk(p)
            edges.append((vid(p), vid(n), "parent"))

    walk(root)
    return nodes, list(dict.fromkeys(edges))


def mermaid(root: Node) -> str:
    nodes, edges = _edges(root)
    lines = ["graph LR"]
    lines += [f'  {nid}["{label.replace(chr(34), "#quot;")}"]' for nid, label in nodes.items()]
    lines += [f"  {a} -->|{label}| {b}" for a, b, label in edges]
    return "\n".join(lines)


def dot(root: Node) -> str:
    nodes, edges = _edges(root)

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=LR;"]
    lines += [f"  {nid} [label={q(label)}];" for nid, label in nodes.items()]
    lines += [f"  {a} -> {b} [label={q(label)}];" for a, b, label in edges]
    lines.append("}")
    return "\n".join(lines)


def render(root: Node, fmt: str) -> str:
    return {"text": text, "mermaid": mermaid, "dot": dot}[fmt](root)


__all__ = ["FORMATS", "Node", "build", "data_versions", "dot", "mermaid", "render", "text"]
