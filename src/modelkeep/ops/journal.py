"""What modelkeep writes to the store's journal (docs/format.md §10.4) and how a change is
made under it: the operations, :func:`journaled` (a redo-log entry written before the registry
change, cancelled when the registry refuses it), and :func:`record_commit` (written after a
version's registry entry, naming the number the registry gave it).

:mod:`modelkeep.store.journal` owns the entry format; :mod:`modelkeep.ops.rebuild` replays it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelkeep.keep import Keep
    from modelkeep.store import JournalEntry, Store

# Journal operations (docs/format.md §10.4).
OP_ALIAS = "alias"
OP_DESCRIPTION = "description"
OP_TAG = "tag"  # a user tag set on an existing version (a register of identical content)
OP_DELETE = "delete"  # a version deleted from the registry
OP_CANCEL = "cancel"
OP_COMMIT = "commit"


def journal(keep: Keep, name: str, op: str, data: Mapping[str, Any], author: str) -> JournalEntry:
    """Record a catalogue change in the store before the registry makes it, so a rebuild
    can replay it (docs/format.md §10.4)."""
    return keep.store.journal_append(name, op, data, author=author)


@contextmanager
def journaled(keep: Keep, entry: JournalEntry) -> Iterator[None]:
    """Make the registry change *entry* records; if the registry refuses it, record that
    the change did not happen. A crash in between leaves the entry standing: a rebuild then
    makes the change, as a redo log would (docs/format.md §10.4)."""
    try:
        yield
    except Exception:
        # If the cancel cannot be written either, the registry's error is the one to report.
        with suppress(Exception):
            keep.store.journal_append(entry.name, OP_CANCEL,
                                      {"cancels": entry.id}, author=entry.author)
        raise


def record_commit(store: Store, name: str, version: int, sid: str) -> None:
    """Record that snapshot *sid* became version *version* of *name*: the last step of the
    commit protocol (:mod:`modelkeep.ops.register`). A rebuild numbers versions by these
    records, so a snapshot whose register died before its registry entry is not a version.

    The version is committed once the registry holds it; a store that refuses this small write
    right after taking the snapshot does not undo that, so the failure is not reported as a
    failed register. A rebuild then lists the snapshot as uncommitted (``skipped``).
    """
    from modelkeep.ops._common import author

    with suppress(Exception):
        store.journal_append(name, OP_COMMIT, {"version": version, "snapshot": sid},
                             author=author())
