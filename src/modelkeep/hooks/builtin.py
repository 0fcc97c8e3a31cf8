"""Built-in default plugin: a scanner's ``error`` finding refuses the version.

Scanners only report; deciding what a finding means is a validator's job, so a plugin (or the
``pickle`` policy rule, docs/policies.md) can be stricter about warnings, and blocking this plugin
(``MODELKEEP_PLUGINS=-modelkeep.findings``) lets errors through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modelkeep.hooks._markers import hookimpl

if TYPE_CHECKING:
    from modelkeep.hooks._types import Finding


@hookimpl(trylast=True)
def modelkeep_validate_version(findings: Sequence[Finding]) -> str | None:
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return None
    first = errors[0]
    by = f" (found by {first.scanner})" if first.scanner else ""
    more = f", and {len(errors) - 1} more error finding(s)" if len(errors) > 1 else ""
    return f"{first.path}: {first.message}{by}{more}"
