"""The decision engine: one function, :func:`decide`, turns a policy and the facts about a version
into a list of :class:`Decision` (rule, passed, reason), which the built-in policy plugin turns
into vetoes and ``modelkeep policy check`` prints.

Pure: the facts (tags, size, each file's format, scanner findings, whether a signature was
verified) are gathered by the caller. :func:`detect_format` names a file's format from its
extension and its first bytes, read through an opener the caller supplies.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from modelkeep.policy.rules import Setting, stricter_pickle

if TYPE_CHECKING:
    from modelkeep.hooks._types import Finding
    from modelkeep.policy.rules import Condition, Policy

# Extensions whose format has another usual name.
_EXT_ALIASES = {"pkl": "pickle", "yml": "yaml", "jpeg": "jpg"}
# Containers that hold pickles when they are zip files (torch.save's format since 1.6).
_PICKLE_IN_ZIP = (".pkl", "/data.pkl")
SNIFF_BYTES = 4


@dataclass(frozen=True)
class Decision:
    """One rule applied to one version: did it pass, and why."""

    rule: str  # the key as in the file: "required_tags", "promote.production.conditions"
    passed: bool
    reason: str
    glob: str | None = None  # the [policies."GLOB"] table the rule came from
    file: str | None = None
    fix: str = ""  # what to do when it failed
    warning: bool = False  # passed, but the rule asks for a warning (pickle = "warn")

    @property
    def origin(self) -> str:
        return Setting(self.rule, None, self.glob, self.file).origin

    @property
    def status(self) -> str:
        return "fail" if not self.passed else "warn" if self.warning else "pass"

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "passed": self.passed, "status": self.status,
                "reason": self.reason, "fix": self.fix, "glob": self.glob, "file": self.file}


def refusal(decisions: Sequence[Decision]) -> str | None:
    """The reason a veto shows for the failed *decisions* (None if none failed): one part per
    rule, its failures joined, so that several failed conditions stay on one short line."""
    groups: dict[tuple[str, str | None], list[Decision]] = {}
    for d in decisions:
        if not d.passed:
            groups.setdefault((d.rule, d.glob), []).append(d)
    parts = []
    for (rule, glob), failed in groups.items():
        where = f' (policies."{glob}")' if glob else ""
        reasons = ", ".join(d.reason for d in failed)
        fixes = "; ".join(dict.fromkeys(d.fix for d in failed if d.fix))
        parts.append(f"policy {rule}{where}: {reasons}" + (f"; {fixes}" if fixes else ""))
    return "; ".join(parts) or None


def detect_format(path: str, opener: Callable[[], IO[bytes]] | None = None, *,
                  safetensors: bool = False) -> str:
    """A file's format: ``pickle`` when its bytes are a pickle (protocol 2 and later) or a zip
    holding one, whatever its name says; else its extension, lowercased (``safetensors``,
    ``json``, ``txt``, ``pickle`` for ``.pkl``); ``""`` for a file without one. *safetensors*
    says the store already parsed the file as safetensors, which no pickle is."""
    base = path.rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[1].lower() if "." in base.strip(".") else ""
    ext = _EXT_ALIASES.get(ext, ext)
    if safetensors or opener is None:
        return ext
    with opener() as f:
        head = f.read(SNIFF_BYTES)
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            return "pickle"
        if head.startswith(b"PK\x03\x04"):
            try:
                f.seek(0)
                names = zipfile.ZipFile(f).namelist()  # reads only the central directory
            except (zipfile.BadZipFile, OSError, ValueError):
                return ext
            if any(n.endswith(_PICKLE_IN_ZIP) for n in names):
                return "pickle"
    return ext


def _listing(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _decision(setting: Setting, passed: bool, reason: str, fix: str = "",
              warning: bool = False, rule: str | None = None) -> Decision:
    return Decision(rule or setting.key, passed, reason, setting.glob, setting.file,
                    fix if not passed else "", warning)


def _pickle_decision(setting: Setting, mode: str, findings: Sequence[Finding] | None,
                     rule: str) -> Decision:
    if findings is None:
        return _decision(setting, mode != "block", "the files were not scanned",
                         "scan them with a pickle scanner plugin", rule=rule)
    hits = [f for f in findings if f.code.startswith("pickle.")]
    if not hits:
        return _decision(setting, True, f"pickle = {mode!r}: no scanner reported a pickle",
                         rule=rule)
    files = sorted({f.path for f in hits})
    unsafe = [f for f in hits if f.code != "pickle.file"]
    what = f"pickle in {_listing(files)}"
    if unsafe:
        what += f" ({unsafe[0].message})"
    if mode == "block":
        return _decision(setting, False, f"pickle = 'block' and scanners found {what}",
                         "convert the weights to safetensors", rule=rule)
    return _decision(setting, True, f"pickle = 'warn': scanners found {what}", warning=True,
                     rule=rule)


def decide(
    policy: Policy,
    *,
    tags: Mapping[str, str],
    size: int | None = None,
    formats: Mapping[str, str] | None = None,
    findings: Sequence[Finding] | None = None,
    alias: str | None = None,
    signed: bool | None = None,
) -> list[Decision]:
    """Apply *policy* to a version.

    Without *alias*: the rules a new version must pass (``required_tags``, ``formats``,
    ``max_size``, ``pickle``). With *alias*: the promotion gate of that alias
    (``promote.ALIAS.*``). Only rules that are set give a decision.

    :param tags: The version's tags.
    :param size: Its size in bytes (for ``max_size``).
    :param formats: Each file's format (:func:`detect_format`), for ``formats``.
    :param findings: Scanner findings over its files, for ``pickle``; None when not scanned.
    :param alias: The alias being set, for its promotion gate.
    :param signed: Whether its signature was verified (None: nothing checked signatures).
    :returns: One decision per rule, in a stable order.
    """
    out: list[Decision] = []
    if alias is None:
        setting = policy.setting("required_tags")
        if setting.value:
            out.append(_required(setting, tags, "required_tags", ""))
        setting = policy.setting("formats")
        if setting.value is not None and formats is not None:
            allowed = set(setting.value)
            bad = sorted(f"{p} ({fmt or 'no extension'})" for p, fmt in formats.items()
                         if fmt not in allowed)
            names = ", ".join(f or '""' for f in setting.value)
            if bad:
                out.append(_decision(setting, False, f"{_listing(bad)} not in formats [{names}]",
                                     "convert or leave out those files, or allow the format"))
            else:
                out.append(_decision(setting, True,
                                     f"all {len(formats)} file(s) in formats [{names}]"))
        setting = policy.setting("max_size")
        if setting.value is not None and size is not None:
            limit = setting.value
            if size > limit:
                out.append(_decision(setting, False, f"{size:,} bytes exceed max_size "
                                     f"{limit:,} bytes", "store a smaller model, or raise "
                                     "max_size"))
            else:
                out.append(_decision(setting, True, f"{size:,} bytes within max_size "
                                     f"{limit:,} bytes"))
        setting = policy.setting("pickle")
        if setting.value != "allow":
            out.append(_pickle_decision(setting, setting.value, findings, "pickle"))
        return out

    gate = policy.gate(alias)
    if gate is None:
        return out
    if gate.required_tags is not None and gate.required_tags.value:
        out.append(_required(gate.required_tags, tags, gate.required_tags.key,
                             "tag the version first"))
    if gate.conditions is not None:
        for condition in gate.conditions.value:
            out.append(_condition(gate.conditions, condition, tags))
    if gate.pickle is not None:
        mode = stricter_pickle(gate.pickle.value, policy.pickle)
        if mode != "allow":
            out.append(_pickle_decision(gate.pickle, mode, findings, gate.pickle.key))
    if gate.require_signed is not None and gate.require_signed.value:
        if signed:
            out.append(_decision(gate.require_signed, True, "the signature was verified"))
        else:
            why = ("the version is not registered yet, so it has no signature to check"
                   if signed is None else
                   "the version has no valid signature by a trusted key")
            out.append(_decision(gate.require_signed, False, why,
                                 "sign it (MODELKEEP_SIGNING_KEY), trust the key "
                                 "(MODELKEEP_TRUSTED_KEYS), then set the alias"))
    return out


def _required(setting: Setting, tags: Mapping[str, str], rule: str, fix: str) -> Decision:
    missing = [t for t in setting.value if t not in tags]
    if missing:
        # Neither --tag nor tags=: the same words reach a command-line user and a Python caller.
        example = " ".join(f"{t}=VALUE" for t in missing[:2])
        return _decision(setting, False, f"missing tag(s) {', '.join(missing)}",
                         fix or f"set them ({example})", rule=rule)
    return _decision(setting, True, f"has tag(s) {', '.join(setting.value)}", rule=rule)


def _condition(setting: Setting, condition: Condition, tags: Mapping[str, str]) -> Decision:
    held, why = condition.evaluate(tags)
    if held:
        return _decision(setting, True, f"{condition.text}: {why}")
    return _decision(setting, False, f"{condition.text} is not met ({why})",
                     "set the tags once the version qualifies")
