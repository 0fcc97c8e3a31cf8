"""Gathering the facts about a stored version for :func:`~modelkeep.policy.engine.decide`.

The engine is pure; this module reads what it needs through a :class:`~modelkeep.keep.Keep`:
each file's first bytes (format sniffing, through the store, fetching one chunk per file) and,
when a ``pickle`` rule is in force, the findings of every ``modelkeep_scan_file`` plugin over the
stored files. :func:`check` is what ``modelkeep policy check`` prints; the built-in policy plugin
uses the same functions, so the explanation and the veto cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelkeep.errors import NotFoundError
from modelkeep.policy.engine import decide, detect_format, refusal
from modelkeep.policy.rules import stricter_pickle

if TYPE_CHECKING:
    from modelkeep.hooks._types import Finding
    from modelkeep.keep import Keep
    from modelkeep.policy.engine import Decision
    from modelkeep.policy.rules import Policy
    from modelkeep.store import FileEntry, Snapshot, Store


def content_store(keep: Keep, snapshot: Snapshot) -> Store:
    """The store holding *snapshot*'s chunks: the Keep's own, or (for a version promoted from
    another store) the store of the version it was promoted from."""
    first = next((f for f in snapshot.files if f.chunks), None)
    if first is None or keep.store.has_chunk(first.chunks[0][0]):
        return keep.store
    for parent in snapshot.parents:
        if parent.name and parent.version:
            try:
                rv = keep.registry.get_version(parent.name, parent.version)
                return keep.snapshot_at(rv.source)[0]
            except NotFoundError:
                continue
    return keep.store


def file_formats(store: Store, snapshot: Snapshot) -> dict[str, str]:
    """Each file's format (:func:`~modelkeep.policy.engine.detect_format`), read through
    *store*: one chunk per file, fetched in parallel since each is a round trip on an object
    store."""

    def one(entry: FileEntry) -> str:
        def opener() -> Any:
            return store.open_file(snapshot, entry.path)

        return detect_format(entry.path, opener if entry.size else None,
                             safetensors=entry.is_safetensors)

    with ThreadPoolExecutor(8, thread_name_prefix="modelkeep-formats") as pool:
        return dict(zip((e.path for e in snapshot.files), pool.map(one, snapshot.files),
                        strict=True))


def signed_state(keep: Keep, policy: Policy, alias: str | None, ref: str | None) -> bool | None:
    """Whether version *ref* has a valid signature by a trusted key, when the gate of *alias*
    requires one; None when nothing asks (or there is no registered version to check yet)."""
    gate = policy.gate(alias) if alias is not None else None
    if gate is None or gate.require_signed is None or not gate.require_signed.value:
        return None
    if ref is None:
        return None
    return keep.signature_status(ref).state == "valid"


def needs_scan(policy: Policy, alias: str | None) -> bool:
    """Whether deciding needs scanner findings (a ``pickle`` rule other than ``allow``)."""
    if alias is None:
        return policy.pickle != "allow"
    gate = policy.gate(alias)
    if gate is None or gate.pickle is None:
        return False
    return stricter_pickle(gate.pickle.value, policy.pickle) != "allow"


@dataclass(frozen=True)
class Check:
    """The decisions of one version's policy (``modelkeep policy check``)."""

    ref: str
    name: str
    alias: str | None
    policy: Policy
    decisions: tuple[Decision, ...] = ()
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    # With an alias: every plugin's refusal, asked as `modelkeep alias` asks (the verdict).
    refusals: tuple[str, ...] | None = None

    @property
    def passed(self) -> bool:
        if self.refusals is not None:
            return not self.refusals
        return all(d.passed for d in self.decisions)

    @property
    def plugin_refusals(self) -> tuple[str, ...]:
        """The refusals that the decisions do not already explain (other plugins')."""
        own = refusal(self.decisions)
        return tuple(r for r in self.refusals or () if r != own)

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "alias": self.alias, "passed": self.passed,
                "matched": list(self.policy.matched),
                "decisions": [d.to_json() for d in self.decisions],
                "refusals": list(self.refusals or ())}


def check(keep: Keep, ref: str, alias: str | None = None) -> Check:
    """What the policy decides for the version *ref*: the rules a new version must pass, or,
    with *alias*, the promotion gate of that alias, exactly as the built-in policy plugin would
    decide them. With *alias*, the verdict is what every plugin answers when the alias is set
    (:meth:`~modelkeep.keep.Keep.alias_refusals`), so plugins' gates count too."""
    version = keep.get(ref)
    policy = keep.policies.for_name(version.name)
    snapshot = keep.snapshot(version.ref)
    findings: Sequence[Finding] | None = None
    if needs_scan(policy, alias):
        findings = keep.scan(version.ref)
    formats = None
    if alias is None and policy.formats is not None:
        store = keep.snapshot_at(version.uri)[0]
        formats = file_formats(store, snapshot)
    decisions = decide(policy, tags=version.tags, size=version.size, formats=formats,
                       findings=findings, alias=alias,
                       signed=signed_state(keep, policy, alias, version.ref))
    refusals = None if alias is None else tuple(keep.alias_refusals(version.ref, alias))
    return Check(version.ref, version.name, alias, policy, tuple(decisions),
                 tuple(findings or ()), refusals)
