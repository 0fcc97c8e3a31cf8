"""How ``modelkeep diff`` prints a :class:`~modelkeep.ops.results.Diff` for a person: one line per
file (``+`` added, ``-`` removed, ``M`` changed), then a text file's unified diff or a safetensors
file's tensor changes; with ``--stat``, one line per file and a total."""

from __future__ import annotations

import math

from rich.console import Console
from rich.text import Text

from modelkeep.cli._output import human_bytes
from modelkeep.ops.results import Diff, FileChange, TensorChange

_MARKS = {"added": "+", "removed": "-", "changed": "M"}
_STYLES = {"+": "green", "-": "red", "@": "cyan"}


def _sizes(f: FileChange) -> str:
    text = f"{human_bytes(f.size_a)} -> {human_bytes(f.size_b)}"
    if f.mode_a is not None and f.mode_b is not None and f.mode_a != f.mode_b:
        text += f", mode {f.mode_a:o} -> {f.mode_b:o}"
    return text


def _shape(dtype: str | None, shape: tuple[int, ...] | None) -> str:
    return f"{dtype} [{', '.join(str(d) for d in shape or ())}]"


def _tensor_line(t: TensorChange) -> str:
    if t.status == "added":
        return f"    + {t.name}  {_shape(t.dtype_b, t.shape_b)}"
    if t.status == "removed":
        return f"    - {t.name}  {_shape(t.dtype_a, t.shape_a)}"
    a, b = _shape(t.dtype_a, t.shape_a), _shape(t.dtype_b, t.shape_b)
    line = f"    M {t.name}  {a}" if a == b else f"    M {t.name}  {a} -> {b}"
    if t.max_abs_diff is not None:
        value = "NaN on one side" if math.isnan(t.max_abs_diff) else f"{t.max_abs_diff:.6g}"
        line += f"  max abs diff {value}"
    return line


def _tensor_counts(f: FileChange) -> str:
    t = f.tensors
    if t is None:
        return ""
    return (f"  tensors: {len(t.changed)} changed, {len(t.added)} added, {len(t.removed)} "
            f"removed, {t.unchanged} unchanged")


def print_diff(c: Console, d: Diff, *, stat: bool = False) -> None:
    """Print *d* on *c*, in full or (*stat*) as a summary."""
    if not d.files:
        c.print(f"{d.a} and {d.b} have identical files", highlight=False, markup=False)
        return
    if stat:
        width = max(len(f.path) for f in d.files)
        for f in d.files:
            c.print(f"{_MARKS[f.status]} {f.path.ljust(width)}  {_sizes(f)}{_tensor_counts(f)}",
                    highlight=False, markup=False)
        count = {s: sum(1 for f in d.files if f.status == s) for s in _MARKS}
        c.print(f"{count['changed']} changed, {count['added']} added, {count['removed']} "
                f"removed, {d.unchanged_files} unchanged file(s)", highlight=False, markup=False)
        return
    for f in d.files:
        c.print(f"{_MARKS[f.status]} {f.path}  ({_sizes(f)})", highlight=False, markup=False)
        if f.tensors is not None:
            for t in f.tensors.details:
                c.print(_tensor_line(t), highlight=False, markup=False)
            c.print(f"    {f.tensors.unchanged} tensor(s) unchanged", highlight=False,
                    markup=False)
        elif f.text_diff:
            for line in f.text_diff.splitlines():
                style = _STYLES.get(line[:1], "") if not line.startswith(("---", "+++")) \
                    else "bold"
                c.print(Text(line, style=style), highlight=False)
        elif d.content and f.size_a != 0 and f.size_b != 0 and (
                f.mode_a == f.mode_b or f.status != "changed"):
            c.print("    (not shown: not UTF-8 text, or over 1 MiB)", highlight=False,
                    markup=False)
    c.print(f"{d.unchanged_files} file(s) unchanged", highlight=False, markup=False)
