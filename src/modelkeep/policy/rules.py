"""Policy tables: parsing ``[policies."GLOB"]``, validating them, and combining the ones that match.

Each table of ``[policies]`` is keyed by a model-name glob (``fnmatch`` syntax, case-sensitive:
``*``, ``?``, ``[abc]``) and holds any of the keys in :data:`POLICY_KEYS`, with promotion gates
in ``[policies."GLOB".promote.ALIAS]`` tables (keys in :data:`GATE_KEYS`).

Every table whose glob matches a model name applies to it, key by key: for each key, the most
specific matching glob that sets it wins. An exact name (no wildcard) beats every glob; among
globs, the one with more literal characters wins (``llm-prod-*`` over ``llm-*`` over ``*``); on a
tie, the table written later in the file wins. Gate keys count one by one
(``promote.production.conditions`` is a key of its own), and a list replaces, never extends, the
list of a less specific table, so a narrow table can relax a broad one. Each effective value
remembers the glob and file it came from, so that a decision can say which rule made it.

Parsing is pure: it is handed the ``[policies]`` table, the file it came from and the names of the
configured stores, and raises :class:`~modelkeep.errors.ConfigError` naming the key as written in
the file (``policies."llm-*".keep_last``) and the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from modelkeep.errors import ConfigError

PICKLE_MODES = ("allow", "warn", "block")
POLICY_KEYS = ("keep_last", "keep_days", "keep_aliased", "keep_tags", "immutable",
               "required_tags", "formats", "max_size", "pickle", "replicate_to", "promote")
GATE_KEYS = ("required_tags", "conditions", "pickle", "require_signed")
# What a key is when no table sets it.
DEFAULTS: dict[str, Any] = {
    "keep_last": None, "keep_days": None, "keep_aliased": True, "keep_tags": (),
    "immutable": True, "required_tags": (), "formats": None, "max_size": None, "pickle": "allow",
    "replicate_to": (),
}
_ALIAS = re.compile(r"^[\w-]+$")
_FORMAT = re.compile(r"^[a-z0-9][a-z0-9_+-]*$|^$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "pib": 1 << 50}

# -- conditions -----------------------------------------------------------------------------------

_OPS = ("==", "!=", ">=", "<=", ">", "<")
_CONDITION = re.compile(
    r"^\s*(?P<key>[A-Za-z0-9_.:/-]+)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>.*?)\s*$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Condition:
    """``TAG OP VALUE``: a tag compared with a number (numerically) or a quoted string."""

    text: str
    key: str
    op: str
    value: float | str

    def evaluate(self, tags: Mapping[str, str]) -> tuple[bool, str]:
        """(holds, why) for a version with *tags*. A tag that is not set fails every condition."""
        if self.key not in tags:
            return False, f"{self.key} is not set"
        actual: str = tags[self.key]
        if isinstance(self.value, float):
            try:
                number = float(actual)
            except ValueError:
                return False, f"{self.key} is {actual!r}, not a number"
            if math.isnan(number):
                return False, f"{self.key} is {actual!r}, not a number"
            held = _compare(number, self.op, self.value)
        else:
            held = _compare(actual, self.op, self.value)
        return held, f"{self.key} is {actual!r}"


def _compare(a: Any, op: str, b: Any) -> bool:
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == ">=":
        return bool(a >= b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a < b)


def parse_condition(text: str) -> Condition:
    """Parse ``"eval.accuracy >= 0.9"`` or ``"approved-by != ''"``; ValueError says what is
    wrong. Nothing is evaluated as code: the grammar is a tag key, an operator and a literal."""
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"expected TAG OP VALUE with OP one of {' '.join(_OPS)}")
    raw = match["value"]
    value: float | str
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = raw[1:-1]
        if raw[0] in value:
            raise ValueError("a quoted value cannot contain its own quote")
    elif _NUMBER.match(raw):
        value = float(raw)
    else:
        raise ValueError(f"the value {raw!r} is neither a number nor a quoted string "
                         f"(write '{raw}' to compare text)")
    return Condition(text, match["key"], match["op"], value)


# -- sizes ----------------------------------------------------------------------------------------


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string such as ``"20 GiB"``, ``"500 MB"``, ``"1.5GiB"``."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match[1]) * _UNITS[(match[2] or "").lower()])
    raise ValueError("not a size")


# -- tables ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """One ``[policies."GLOB"]`` table as written: its keys flattened (``promote.A.KEY``)."""

    glob: str
    file: str | None
    index: int  # position in the file: a later table wins a tie
    values: Mapping[str, Any]

    @property
    def specificity(self) -> tuple[int, int, int]:
        exact = not any(c in self.glob for c in "*?[")
        literal = len(re.sub(r"\[[^\]]*\]|[*?]", "", self.glob))
        return (int(exact), literal, self.index)

    def matches(self, name: str) -> bool:
        return fnmatchcase(name, self.glob)


@dataclass(frozen=True)
class Setting:
    """An effective value and where it came from (glob None: the default)."""

    key: str
    value: Any
    glob: str | None = None
    file: str | None = None

    @property
    def origin(self) -> str:
        if self.glob is None:
            return "default"
        where = f" in {self.file}" if self.file else ""
        return f'policies."{self.glob}"{where}'

    def to_json(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, tuple):
            value = [c.text if isinstance(c, Condition) else c for c in value]
        return {"value": value, "glob": self.glob, "file": self.file}


@dataclass(frozen=True)
class Gate:
    """The promotion gate of one alias: what a version needs before the alias may point at it."""

    alias: str
    required_tags: Setting | None = None
    conditions: Setting | None = None
    pickle: Setting | None = None
    require_signed: Setting | None = None

    def settings(self) -> list[Setting]:
        return [s for s in (self.required_tags, self.conditions, self.pickle,
                            self.require_signed) if s is not None]


@dataclass(frozen=True)
class Policy:
    """The effective policy of one model name: every key, with the glob it came from."""

    name: str
    settings: Mapping[str, Setting]
    matched: tuple[str, ...] = ()  # the globs that matched, least specific first

    def setting(self, key: str) -> Setting:
        found = self.settings.get(key)
        return found if found is not None else Setting(key, DEFAULTS.get(key))

    @property
    def keep_last(self) -> int | None:
        value: int | None = self.setting("keep_last").value
        return value

    @property
    def keep_days(self) -> int | None:
        value: int | None = self.setting("keep_days").value
        return value

    @property
    def keep_aliased(self) -> bool:
        return bool(self.setting("keep_aliased").value)

    @property
    def keep_tags(self) -> tuple[str, ...]:
        return tuple(self.setting("keep_tags").value)

    @property
    def immutable(self) -> bool:
        return bool(self.setting("immutable").value)

    @property
    def required_tags(self) -> tuple[str, ...]:
        return tuple(self.setting("required_tags").value)

    @property
    def formats(self) -> tuple[str, ...] | None:
        value: tuple[str, ...] | None = self.setting("formats").value
        return value

    @property
    def max_size(self) -> int | None:
        value: int | None = self.setting("max_size").value
        return value

    @property
    def pickle(self) -> str:
        return str(self.setting("pickle").value)

    @property
    def replicate_to(self) -> tuple[str, ...]:
        """Named stores every new version is also copied to (the replication engine reads it)."""
        return tuple(self.setting("replicate_to").value)

    @property
    def applies(self) -> bool:
        return bool(self.matched)

    @property
    def has_retention(self) -> bool:
        return self.keep_last is not None or self.keep_days is not None

    @property
    def gates(self) -> dict[str, Gate]:
        by_alias: dict[str, dict[str, Setting]] = {}
        for key, setting in self.settings.items():
            if key.startswith("promote."):
                _p, alias, gate_key = key.split(".", 2)
                by_alias.setdefault(alias, {})[gate_key] = setting
        return {alias: Gate(alias, **keys) for alias, keys in sorted(by_alias.items())}

    def gate(self, alias: str) -> Gate | None:
        return self.gates.get(alias)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "matched": list(self.matched),
            "settings": {k: self.setting(k).to_json() for k in DEFAULTS},
            "promote": {a: {s.key.split(".", 2)[2]: s.to_json() for s in g.settings()}
                        for a, g in self.gates.items()},
        }


@dataclass(frozen=True)
class Policies:
    """Every ``[policies."GLOB"]`` table of a settings file."""

    tables: tuple[Table, ...] = ()
    file: str | None = None

    def __bool__(self) -> bool:
        return bool(self.tables)

    def for_name(self, name: str) -> Policy:
        """The effective policy of model *name*: for each key, the most specific matching glob."""
        matching = sorted((t for t in self.tables if t.matches(name)),
                          key=lambda t: t.specificity)
        settings: dict[str, Setting] = {}
        for table in matching:  # least specific first; a later one overrides
            for key, value in table.values.items():
                settings[key] = Setting(key, value, table.glob, table.file)
        return Policy(name, settings, tuple(t.glob for t in matching))

    def to_json(self) -> list[dict[str, Any]]:
        return [{"glob": t.glob, "file": t.file,
                 "keys": {k: Setting(k, v).to_json()["value"] for k, v in t.values.items()}}
                for t in self.tables]


def parse_policies(
    data: Mapping[str, Any], *, file: Path | str | None = None, prefix: str = "",
    stores: Iterable[str] = (),
) -> Policies:
    """Validate the ``[policies]`` table *data* of *file* (keys written under *prefix*, e.g.
    ``tool.modelkeep.`` in ``pyproject.toml``); *stores* are the configured store names."""
    where = str(file) if file is not None else "the settings"
    known_stores = set(stores)
    tables = []
    for index, (glob, table) in enumerate(data.items()):
        base = f'{prefix}policies."{glob}"'
        if not glob:
            raise ConfigError(f"empty model-name glob {base!r} in {where}",
                              hint='use "*" for every model')
        if not isinstance(table, dict):
            raise ConfigError(f"{base!r} in {where} must be a table",
                              hint=f'e.g. [policies."{glob}"] keep_last = 5')
        values: dict[str, Any] = {}
        for key, value in table.items():
            qkey = f"{base}.{key}"
            if key not in POLICY_KEYS:
                raise ConfigError(f"unknown key {qkey!r} in {where}",
                                  hint=f"policy keys: {', '.join(POLICY_KEYS)}")
            if key == "promote":
                values.update(_parse_gates(value, qkey, where))
            else:
                values[key] = _parse_value(key, value, qkey, where, known_stores)
        tables.append(Table(glob, str(file) if file is not None else None, index, values))
    return Policies(tuple(tables), str(file) if file is not None else None)


def _parse_gates(value: Any, qkey: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{qkey!r} in {where} must be a table of aliases",
                          hint='e.g. [policies."*".promote.production] required_tags = ["owner"]')
    out: dict[str, Any] = {}
    for alias, gate in value.items():
        gkey = f"{qkey}.{alias}"
        if not _ALIAS.match(alias):
            raise ConfigError(f"{gkey!r} in {where} is not a valid alias",
                              hint="aliases use letters, digits, '_' and '-'")
        if not isinstance(gate, dict):
            raise ConfigError(f"{gkey!r} in {where} must be a table",
                              hint=f"keys: {', '.join(GATE_KEYS)}")
        for key, item in gate.items():
            ikey = f"{gkey}.{key}"
            if key not in GATE_KEYS:
                raise ConfigError(f"unknown key {ikey!r} in {where}",
                                  hint=f"promotion gate keys: {', '.join(GATE_KEYS)}")
            if key == "conditions":
                items = _string_list(item, ikey, where)
                conditions = []
                for i, text in enumerate(items):
                    try:
                        conditions.append(parse_condition(text))
                    except ValueError as exc:
                        raise ConfigError(f"{ikey}[{i}] = {text!r} in {where} is not a "
                                          f"condition: {exc}",
                                          hint="e.g. \"eval.accuracy >= 0.9\" or "
                                          "\"approved-by != ''\"") from None
                out[f"promote.{alias}.conditions"] = tuple(conditions)
            elif key == "require_signed":
                out[f"promote.{alias}.require_signed"] = _bool(item, ikey, where)
            elif key == "pickle":
                out[f"promote.{alias}.pickle"] = _pickle(item, ikey, where)
            else:
                out[f"promote.{alias}.required_tags"] = tuple(_string_list(item, ikey, where))
    return out


def _parse_value(key: str, value: Any, qkey: str, where: str, stores: set[str]) -> Any:
    if key in ("keep_last", "keep_days"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{qkey!r} in {where} must be a whole number of at least 1",
                              hint="leave the key out to keep every version")
        return value
    if key in ("keep_aliased", "immutable"):
        return _bool(value, qkey, where)
    if key in ("keep_tags", "required_tags"):
        return tuple(_string_list(value, qkey, where))
    if key == "formats":
        items = [s.lower().lstrip(".") for s in _string_list(value, qkey, where, empty_ok=True)]
        for item in items:
            if not _FORMAT.match(item):
                raise ConfigError(f"{qkey!r} in {where} lists {item!r}, which is not a format "
                                  f"name", hint='formats are extensions: "safetensors", "json"')
        return tuple(items)
    if key == "max_size":
        try:
            return parse_size(value)
        except ValueError:
            raise ConfigError(f"{qkey!r} in {where} is {value!r}, not a size",
                              hint='write bytes (1000000) or a string such as "20 GiB"') from None
    if key == "pickle":
        return _pickle(value, qkey, where)
    # replicate_to
    names = _string_list(value, qkey, where)
    for name in names:
        if name not in stores:
            known = ", ".join(sorted(stores)) or "none"
            raise ConfigError(f"{qkey!r} in {where} names store {name!r}, which is not a "
                              f"configured store", hint=f"named stores ([stores.NAME]): {known}")
    return tuple(names)


def _bool(value: Any, qkey: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{qkey!r} in {where} must be true or false")
    return value


def _pickle(value: Any, qkey: str, where: str) -> str:
    if value not in PICKLE_MODES:
        raise ConfigError(f"{qkey!r} in {where} is {value!r}",
                          hint=f"use one of {', '.join(repr(m) for m in PICKLE_MODES)}")
    return str(value)


def _string_list(value: Any, qkey: str, where: str, *, empty_ok: bool = True) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{qkey!r} in {where} must be a list of strings",
                          hint='e.g. ["owner", "approved-by"]')
    if not empty_ok and not value:
        raise ConfigError(f"{qkey!r} in {where} must not be empty")
    return list(value)


def stricter_pickle(*modes: str | None) -> str:
    """The strictest of pickle modes (None counts as ``allow``)."""
    return max((m or "allow" for m in modes), key=PICKLE_MODES.index)
