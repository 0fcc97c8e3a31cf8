"""Policies: the rules of ``[policies."GLOB"]`` tables, applied the same way on every backend.

* :mod:`~modelkeep.policy.rules` parses and validates the tables and combines the ones that
  match a model name into its effective :class:`Policy` (each value remembering its glob).
* :mod:`~modelkeep.policy.engine` decides: :func:`decide` returns one :class:`Decision` (rule,
  passed, reason) per rule for a version, or for an alias being set on it.
* :mod:`~modelkeep.policy.check` gathers the facts about a stored version (formats, scanner
  findings) and explains its decisions (``modelkeep policy check``).
* :mod:`~modelkeep.policy.retention` plans which versions retention lets go and deletes them.
* :mod:`~modelkeep.policy.plugin` is the built-in plugin ``modelkeep.policies``: it applies
  the decisions through the ``modelkeep_validate_version`` and ``modelkeep_before_alias_change``
  hooks.

The rules reach the store and registry only through the :class:`~modelkeep.keep.Keep` they are
handed; nothing here imports MLflow or a backend. See docs/policies.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelkeep._lazy import exports

# The names are imported on first use: the policy plugin and every Keep read the rules, and a
# command that checks nothing should not load the engine, the format sniffing and retention.
if TYPE_CHECKING:
    from modelkeep.policy.check import Check, check
    from modelkeep.policy.engine import Decision, decide, detect_format, refusal
    from modelkeep.policy.retention import (
        RetentionItem,
        RetentionReport,
        apply_retention,
        retention_plan,
    )
    from modelkeep.policy.rules import (
        PICKLE_MODES,
        Condition,
        Gate,
        Policies,
        Policy,
        Setting,
        parse_condition,
        parse_policies,
        parse_size,
    )

_WHERE = {
    "Check": "modelkeep.policy.check",
    "check": "modelkeep.policy.check",
    "Decision": "modelkeep.policy.engine",
    "decide": "modelkeep.policy.engine",
    "detect_format": "modelkeep.policy.engine",
    "refusal": "modelkeep.policy.engine",
    "RetentionItem": "modelkeep.policy.retention",
    "RetentionReport": "modelkeep.policy.retention",
    "apply_retention": "modelkeep.policy.retention",
    "retention_plan": "modelkeep.policy.retention",
    "PICKLE_MODES": "modelkeep.policy.rules",
    "Condition": "modelkeep.policy.rules",
    "Gate": "modelkeep.policy.rules",
    "Policies": "modelkeep.policy.rules",
    "Policy": "modelkeep.policy.rules",
    "Setting": "modelkeep.policy.rules",
    "parse_condition": "modelkeep.policy.rules",
    "parse_policies": "modelkeep.policy.rules",
    "parse_size": "modelkeep.policy.rules",
}
__getattr__ = exports(__name__, _WHERE, globals())

__all__ = [
    "PICKLE_MODES",
    "Check",
    "Condition",
    "Decision",
    "Gate",
    "Policies",
    "Policy",
    "RetentionItem",
    "RetentionReport",
    "Setting",
    "apply_retention",
    "check",
    "decide",
    "detect_format",
    "parse_condition",
    "parse_policies",
    "parse_size",
    "refusal",
    "retention_plan",
]
