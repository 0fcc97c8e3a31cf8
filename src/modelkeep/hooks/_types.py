"""Values that hooks pass to each other: findings of file scanners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """Something a scanner noticed in one file of a version being registered.

    An ``error`` finding refuses the version (the built-in validator turns it into a veto);
    ``info`` and ``warning`` findings are handed to every ``modelkeep_validate_version``
    implementation to judge.
    """

    path: str  # the file's path inside the version
    message: str
    severity: Severity = "warning"
    scanner: str = ""  # who found it, for the message a user sees
    code: str = ""  # a stable identifier (``pickle.unsafe-global``), for policies to match on
    # What the finding is about, one item each (the callables a pickle imports …), so that a
    # policy or a tag need not parse the message.
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "severity": self.severity,
                "scanner": self.scanner, "code": self.code, "names": list(self.names)}
