"""Every command's ``--json`` output validates against docs/json-schema.json.

The commands are discovered from the command tree itself (plugins' commands included), so a
command that gains ``--json`` without an example here, or without a schema in the document,
fails this test. Each example runs in one project that has every kind of object to print, with
``--json`` alternately before and after the command's name. Beyond the schema, every output is
walked for the names the schema forbids (one name per field) and for timestamps (one format)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from modelkeep.cli.main import _command, main
from modelkeep.hooks.manager import get_plugin_manager
from tests.gitrepos import ENV, run
from tests.helpers import change_fraction, tensors, write_model

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "json-schema.json"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# One name per field: these spellings were retired for the others ("model" names a model
# object, as in `log`, never a model's name).
RETIRED = {"snapshot": "snapshot_id", "user": "author", "model": "name"}
# Maps whose keys are the user's or a tool's own (tags, lineage records, settings).
FREE_FORM = {"tags", "lineage", "options", "stores", "policies", "data", "code", "settings",
             "aliases", "encryption", "registry", "store", "tables", "stages", "source"}
TIME_KEYS = {"created", "time", "last_used"}

# command path -> invocations (argument lists; "{dir}" is a fresh empty folder; a first argument
# starting with "+" is a step that prepares the next, its output not checked). Commands that do
# not exist in this tree (yet) are ignored; every command that does must be here.
# Commands whose --json needs a server this project does not start: validated against the same
# schema by the test that has one.
ELSEWHERE = {command: "tests/test_signin.py (an OpenID provider)"
             for command in ("login", "logout", "whoami")}
EXAMPLES: dict[str, list[list[str]]] = {
    "init": [["init", "--store", "{dir}/store", "--registry", "sqlite:///{dir}/r.db",
              "--no-gitignore"]],
    "register": [["register", "m", "src/m2", "--parent", "m@1", "--tag", "metric.loss=0.2"]],
    "list": [["list"], ["list", "m"], ["list", "m", "--limit", "1"], ["list", "m", "--all"]],
    "show": [["show", "m@champion"]],
    "log": [["log", "m"], ["log", "m", "-n", "1"], ["log", "m", "--all"]],
    "search": [["search", "--metric", "loss<1", "--order-by", "metric.loss"]],
    "pull": [["pull", "m@1", "{dir}/out"], ["pull", "m@1", "{dir}/out", "--link"]],
    "fetch": [["fetch", "m@1"]],
    "diff": [["diff", "m@1", "m@2"]],
    "du": [["du"]],
    "verify": [["verify"], ["verify", "m@1"], ["verify", "--repair"]],
    "keygen": [["keygen", "--signing", "{dir}/sign"]],
    "config": [["config"]],
    "plugins": [["plugins"]],
    "lineage": [["lineage", "m@2"]],
    "track": [["track", "t", "tracked"]],
    "checkout": [["checkout"]],
    "status": [["status"]],
    "check-pointers": [["check-pointers"]],
    "install-hooks": [["install-hooks"]],
    "alias": [["alias", "m@2", "canary"], ["alias", "--delete", "m", "canary"]],
    "rollback": [["+alias", "m@2", "champion"], ["rollback", "m", "champion"]],
    "promote": [["promote", "m@1", "--to", "p"]],
    "describe": [["describe", "m", "-m", "the model"]],
    "sync": [["sync", "--to", "{dir}/copy"]],
    "gc": [["gc", "--dry-run"]],
    "prune": [["prune", "--dry-run"]],
    "registry rebuild": [["registry", "rebuild", "--registry", "sqlite:///{dir}/r.db",
                          "--dry-run"]],
    "key status": [["key", "status"]],
    "key generate": [["key", "generate", "{dir}/k"]],
    "key rotate": [["--store", "enc", "key", "rotate", "--new-key-file", "k2"]],
    "policy show": [["policy", "show"], ["policy", "show", "m"]],
    "policy check": [["policy", "check", "m@2", "--alias", "champion"]],
    "cache ls": [["cache", "ls"]],
    "cache verify": [["cache", "verify"]],
    "cache prune": [["cache", "prune", "--all"]],
    "delete": [["delete", "p@1", "--yes"], ["+alias", "--delete", "m", "champion"],
               ["delete", "m", "--all", "--yes"]],
}


def json_commands() -> dict[str, Any]:
    """Every command (path -> click command) that takes --json, plugins' included."""
    out: dict[str, Any] = {}

    def walk(group: Any, prefix: tuple[str, ...]) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, (*prefix, name))
            elif any("--json" in getattr(p, "opts", ()) for p in cmd.params):
                out[" ".join((*prefix, name))] = cmd

    walk(_command(get_plugin_manager()), ())
    return out


def validator(schema: dict[str, Any], command: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/commands/{command}"})


def walk(value: Any, where: str = "$") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every member of every object, not entering free-form maps."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield where, key, item
            if key not in FREE_FORM:
                yield from walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{where}[{i}]")


def check_names(data: Any) -> None:
    for where, key, item in walk(data):
        if key in RETIRED and not (key == "model" and isinstance(item, dict)):
            raise AssertionError(f"{where}: {key!r} is spelled {RETIRED[key]!r}")
        if key in TIME_KEYS and isinstance(item, str):
            assert TIMESTAMP.match(item), f"{where}.{key}: {item!r} is not YYYY-MM-DDTHH:MM:SSZ"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI", "MODELKEEP_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODELKEEP_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "p"
    root.mkdir()
    run(root, "git", "init", "-q")
    monkeypatch.chdir(root)
    assert main(["init", "--registry", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    ts = tensors(n=4)
    write_model(root / "src" / "m1", ts)
    change_fraction(ts, 0.5)
    write_model(root / "src" / "m2", ts)
    write_model(root / "tracked", tensors(seed=5, n=2), extra=False)
    assert main(["register", "m", "src/m1", "--alias", "champion",
                 "--tag", "metric.loss=0.5"]) == 0
    # An encrypted store of its own, for the key commands.
    assert main(["key", "generate", "k1"]) == 0 and main(["key", "generate", "k2"]) == 0
    assert main(["--store", "enc", "init", "--encrypt", "--key-file", "k1"]) == 0
    monkeypatch.setenv("MODELKEEP_KEY", (root / "k1").read_text().strip())
    return root


def test_every_json_output_validates(project: Path, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    commands = json_commands()
    missing = sorted(set(commands) - set(EXAMPLES) - set(ELSEWHERE))
    assert not missing, f"add an example invocation of {missing} to EXAMPLES"
    unschemed = sorted(set(commands) - set(schema["commands"]))
    assert not unschemed, f"add the --json output of {unschemed} to {SCHEMA_FILE.name}"
    outputs: dict[str, list[Any]] = {}
    for i, (command, invocations) in enumerate(EXAMPLES.items()):
        if command not in commands:
            continue
        for j, argv in enumerate(invocations):
            folder = tmp_path / f"x{i}-{j}"
            folder.mkdir()
            args = [a.replace("{dir}", str(folder)) for a in argv]
            if args[0].startswith("+"):
                assert main([args[0][1:], *args[1:]]) == 0
                continue
            if command == "init":
                os.chdir(folder)
            capsys.readouterr()
            # --json before the command, and after it, alternately.
            code = main(["--json", *args] if i % 2 else [*args, "--json"])
            os.chdir(project)
            out, err = capsys.readouterr()
            assert code == 0, f"{args}: exit {code}: {err}"
            outputs.setdefault(command, []).append(json.loads(out))
    Path(os.environ.get("MODELKEEP_JSON_DUMP", "/dev/null")).write_text(
        json.dumps(outputs, indent=1))
    for command, docs in outputs.items():
        check = validator(schema, command)
        for doc in docs:
            errors = sorted(check.iter_errors(doc), key=lambda e: list(e.absolute_path))
            assert not errors, (f"{command}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]))
            check_names(doc)


@pytest.mark.parametrize("args", [
    ["show", "nosuch@3"],  # a modelkeep error: not found (3)
    ["register", "bad name", "."],  # bad input (2)
    ["show"],  # a usage error found while parsing (2)
    ["show", "m@1", "--bogus"],
    ["delete", "m@champion", "--yes"],  # a refusal (9)
])
def test_errors_under_json(project: Path, capsys: pytest.CaptureFixture[str],
                           args: list[str]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    check = jsonschema.Draft202012Validator({**schema, "$ref": "#/$defs/error"})
    capsys.readouterr()
    plain = main(args)
    text = capsys.readouterr().err
    assert plain != 0 and not text.lstrip().startswith("{")
    for argv in (["--json", *args], [*args, "--json"]):
        assert main(argv) == plain
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        doc = json.loads(err)
        check.validate(doc)
        assert doc["error"]["exit_code"] == plain
