"""Built-in default plugin ``modelkeep.policies``: the policies of ``[policies."GLOB"]`` as vetoes.

``modelkeep_validate_version`` applies the rules every new version must pass (required tags,
formats, maximum size, pickle findings); ``modelkeep_before_alias_change`` applies the promotion
gate of the alias being set or rolled back to (deleting an alias passes no gate). Both ask the one
engine (:func:`modelkeep.policy.engine.decide`) and refuse with each failed decision's one line,
naming the rule, its glob and the fix. A ``pickle = "warn"`` rule that found something lets the
version through and logs a warning on the ``modelkeep.policy`` logger.

The policies are the :class:`~modelkeep.keep.Keep`'s (``keep.policies``, from the settings file
:func:`modelkeep.open` read). Blocking this plugin (``MODELKEEP_PLUGINS=-modelkeep.policies``)
turns the vetoes off; ``immutable`` is enforced by :meth:`Keep.delete_version` itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from modelkeep.hooks._markers import hookimpl

if TYPE_CHECKING:
    from modelkeep.hooks._types import Finding
    from modelkeep.keep import Keep
    from modelkeep.policy.engine import Decision
    from modelkeep.store import Snapshot

log = logging.getLogger("modelkeep.policy")

# The engine and the checks are imported by the hooks, when a policy applies: most commands
# never ask them, and every command registers this plugin.


def _refusal(name: str, decisions: Sequence[Decision]) -> str | None:
    from modelkeep.policy.engine import refusal

    for d in decisions:
        if d.warning:
            log.warning("warning: %s: policy %s: %s", name, d.rule, d.reason)
    return refusal(decisions)


@hookimpl(trylast=True)
def modelkeep_validate_version(
    name: str, snapshot: Snapshot, findings: Sequence[Finding], keep: Keep
) -> str | None:
    policy = keep.policies.for_name(name)
    if not policy.applies:
        return None
    from modelkeep.policy.check import content_store, file_formats
    from modelkeep.policy.engine import decide

    formats = None
    if policy.formats is not None:
        formats = file_formats(content_store(keep, snapshot), snapshot)
    return _refusal(name, decide(policy, tags=snapshot.tags, size=snapshot.size,
                                 formats=formats, findings=findings))


@hookimpl(trylast=True)
def modelkeep_before_alias_change(
    name: str, alias: str, version: int | None, tags: Mapping[str, str], action: str, keep: Keep,
    findings: Sequence[Finding] | None,
) -> str | None:
    if action == "delete":
        return None
    policy = keep.policies.for_name(name)
    if policy.gate(alias) is None:
        return None
    from modelkeep.policy.check import needs_scan, signed_state
    from modelkeep.policy.engine import decide

    if not needs_scan(policy, alias):
        findings = None
    elif version is not None:
        findings = keep.scan(f"{name}@{version}")
    ref = f"{name}@{version}" if version is not None else None
    return _refusal(name, decide(policy, tags=tags, findings=findings, alias=alias,
                                 signed=signed_state(keep, policy, alias, ref)))
