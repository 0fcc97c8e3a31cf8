"""Policies: parsing and combining ``[policies."GLOB"]``, the decisions of the built-in policy
plugin (register rules and promotion gates), ``policy check``/``policy show``, version deletion and
retention (``prune``).

The decisions and retention tests run unchanged on a local store, S3 (moto server) and Azure
(Azurite), each asserting the same expected result.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.errors import ConfigError, NotFoundError, VetoError
from modelkeep.hooks import Finding, PluginManager, hookimpl, make_plugin_manager
from modelkeep.policy import (
    apply_retention,
    check,
    detect_format,
    parse_condition,
    parse_policies,
    parse_size,
    retention_plan,
)
from modelkeep.store import Kind
from tests.backends import Backend, make_backend, unique_name
from tests.helpers import tensors, write_model

BACKENDS = ["local", "s3", "azure"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mlflow_sqlite_uri: str) -> Backend:
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


class PickleScanner:
    """A scanner like the pickle scanner plugin: ``pickle.file`` (info) for every pickle and
    ``pickle.unsafe-global`` (warning) when it names ``os.system``."""

    @hookimpl
    def modelkeep_scan_file(self, path: str, opener: Any) -> Iterator[Finding]:
        with opener() as f:
            data = f.read()
        if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            yield Finding(path, "pickle file", "info", scanner="test-pickle", code="pickle.file")
            if b"system" in data:
                yield Finding(path, "imports os.system", "warning", scanner="test-pickle",
                              code="pickle.unsafe-global")


@pytest.fixture
def pm() -> PluginManager:
    manager = make_plugin_manager(entry_points=False)
    manager.register(PickleScanner(), "test-pickle")
    return manager


POLICIES = """
[stores.backup]
url = "{backup}"

[policies."*"]
keep_last = 10
required_tags = ["owner"]

[policies."pm-*"]
keep_last = 2
keep_tags = ["keep"]
formats = ["safetensors", "json", "txt", "sh", ""]
max_size = "1 MiB"
pickle = "warn"
replicate_to = ["backup"]

[policies."pm-*".promote.production]
required_tags = ["approved-by"]
conditions = ["eval.accuracy >= 0.9", "approved-by != ''"]
pickle = "block"

[policies."pm-loose-*"]
formats = ["safetensors", "json", "txt", "sh", "", "pickle", "bin"]
immutable = false
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "modelkeep.toml"
    path.write_text(POLICIES.format(backup=tmp_path / "backup"))
    monkeypatch.setenv("MODELKEEP_CONFIG", str(path))
    return path


def open_keep(backend: Backend, pm: PluginManager, url: str | None = None) -> Keep:
    return modelkeep.open(store=url or backend.new_store_url(), registry=backend.registry,
                          store_options=backend.options, plugins=pm)


def small_model(folder: Path, seed: int = 0) -> Path:
    """A few KiB: weights, a config, a text file, a script (no random bytes a sniffer could
    take for a pickle)."""
    write_model(folder, tensors(seed=seed, n=2, rows=16, cols=32), extra=False)
    (folder / "config.json").write_text(f'{{"seed": {seed}}}\n')
    (folder / "notes.txt").write_text("trained on the usual data\n")
    (folder / "run.sh").write_text("#!/bin/sh\necho serve\n")
    return folder


def refusal(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(VetoError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- parsing and combining --------------------------------------------------------------------


def test_globs_combine_key_by_key_most_specific_wins(tmp_path: Path) -> None:
    policies = parse_policies({
        "llm-*": {"keep_last": 3, "pickle": "warn"},
        "*": {"keep_last": 10, "keep_days": 30, "required_tags": ["owner"]},
        "llm-prod": {"keep_last": 7},
        "llm-?rod": {"required_tags": []},
        "l*": {"keep_days": 5},  # as specific as "llm-*" by literal count? no: 1 < 4
    }, file=tmp_path / "modelkeep.toml")
    prod = policies.for_name("llm-prod")
    assert prod.keep_last == 7 and prod.setting("keep_last").glob == "llm-prod"
    assert prod.pickle == "warn" and prod.setting("pickle").glob == "llm-*"
    assert prod.keep_days == 5 and prod.setting("keep_days").glob == "l*"
    # "llm-?rod" has 7 literal characters, more than "llm-*" and "*": its empty list replaces
    # the broad one rather than extending it.
    assert prod.required_tags == () and prod.setting("required_tags").glob == "llm-?rod"
    assert prod.matched == ("*", "l*", "llm-*", "llm-?rod", "llm-prod")
    other = policies.for_name("bert")
    assert (other.keep_last, other.keep_days, other.required_tags) == (10, 30, ("owner",))
    assert policies.for_name("llm-dev").keep_last == 3
    # Defaults, and where they come from.
    assert prod.immutable is True and prod.setting("immutable").origin == "default"
    assert prod.setting("keep_last").origin == f'policies."llm-prod" in {tmp_path}/modelkeep.toml'


def test_equal_specificity_the_later_table_wins() -> None:
    first = parse_policies({"a-*": {"keep_last": 1}, "*-b": {"keep_last": 2}})
    assert first.for_name("a-b").keep_last == 2
    second = parse_policies({"*-b": {"keep_last": 2}, "a-*": {"keep_last": 1}})
    assert second.for_name("a-b").keep_last == 1


def test_gates_combine_per_key() -> None:
    policies = parse_policies({
        "*": {"promote": {"production": {"required_tags": ["owner"],
                                         "conditions": ["eval.f1 > 0.5"]}}},
        "nlp-*": {"promote": {"production": {"conditions": ["eval.f1 > 0.8"],
                                             "require_signed": True}}},
    })
    gate = policies.for_name("nlp-x").gate("production")
    assert gate is not None and gate.required_tags is not None
    assert gate.required_tags.value == ("owner",) and gate.required_tags.glob == "*"
    assert gate.conditions is not None and gate.conditions.glob == "nlp-*"
    assert [c.text for c in gate.conditions.value] == ["eval.f1 > 0.8"]
    assert gate.require_signed is not None and gate.require_signed.value is True
    assert policies.for_name("nlp-x").gate("staging") is None


def test_conditions_compare_numbers_and_strings_safely() -> None:
    acc = parse_condition("eval.accuracy >= 0.9")
    assert acc.evaluate({"eval.accuracy": "0.93"}) == (True, "eval.accuracy is '0.93'")
    assert acc.evaluate({"eval.accuracy": "0.85"})[0] is False
    assert acc.evaluate({"eval.accuracy": "1e0"})[0] is True  # numeric, not text, comparison
    assert acc.evaluate({"eval.accuracy": "n/a"}) == (False, "eval.accuracy is 'n/a', not a "
                                                             "number")
    assert acc.evaluate({}) == (False, "eval.accuracy is not set")
    approved = parse_condition("approved-by != ''")
    assert approved.evaluate({"approved-by": "ana"})[0] is True
    assert approved.evaluate({"approved-by": ""})[0] is False
    assert approved.evaluate({})[0] is False  # a missing tag fails every condition
    assert parse_condition('stage == "prod"').evaluate({"stage": "prod"})[0] is True
    assert parse_condition("date < '2027-01-01'").evaluate({"date": "2026-11-29"})[0] is True
    assert parse_condition("n != 3").evaluate({"n": "3.0"})[0] is False
    for bad in ["eval.accuracy => 0.9", "x == approved", "__import__('os') == 1", "x ==",
                "x == 'a'b'", "== 1"]:
        with pytest.raises(ValueError):
            parse_condition(bad)


def test_sizes() -> None:
    assert parse_size("20 GiB") == 20 << 30
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("500 MB") == 500_000_000
    assert parse_size(1234) == 1234
    for bad in ["20 parsecs", -1, True, "GiB", 1.5]:
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize(("table", "message"), [
    ('[policies."*"]\nkeep_lats = 3', r"""unknown key 'policies\."\*"\.keep_lats' in .*"""
     r"modelkeep\.toml \(policy keys: keep_last"),
    ('[policies."*"]\nkeep_last = 0', r"""'policies\."\*"\.keep_last' in .* must be a whole """
     "number of at least 1"),
    ('[policies."m-*"]\npickle = "deny"', r"""'policies\."m-\*"\.pickle' in .* is 'deny' """
     r"\(use one of 'allow', 'warn', 'block'\)"),
    ('[policies."*"]\nmax_size = "20 parsecs"', r"""'policies\."\*"\.max_size' in .* is """
     "'20 parsecs', not a size"),
    ('[policies."*"]\nreplicate_to = ["offsite"]', r"""'policies\."\*"\.replicate_to' in .* """
     r"names store 'offsite', which is not a configured store \(named stores \(\[stores\.NAME\]"
     r"\): none\)"),
    ('[policies."*".promote.production]\nconditions = ["eval.acc >= high"]',
     r"""policies\."\*"\.promote\.production\.conditions\[0\] = 'eval\.acc >= high' in .* is """
     "not a condition: the value 'high' is neither a number nor a quoted string"),
    ('[policies."*".promote.production]\nrequired = ["x"]',
     r"""unknown key 'policies\."\*"\.promote\.production\.required' in """),
    ('[policies."*"]\nrequired_tags = "owner"', r"""'policies\."\*"\.required_tags' in .* must """
     "be a list of strings"),
    ('[policies]\n"*" = 3', r"""'policies\."\*"' in .* must be a table"""),
])
def test_config_errors_name_the_key_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    table: str, message: str,
) -> None:
    path = tmp_path / "modelkeep.toml"
    path.write_text(table + "\n")
    monkeypatch.setenv("MODELKEEP_CONFIG", str(path))
    from modelkeep.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config()
    capsys.readouterr()
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err


def test_pyproject_keys_are_named_as_written(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.modelkeep.policies."*"]\nkeep_days = -1\n')
    monkeypatch.setenv("MODELKEEP_CONFIG", str(path))
    from modelkeep.config import load_config

    with pytest.raises(ConfigError, match=r"""'tool\.modelkeep\.policies\."\*"\.keep_days' in """):
        load_config()


def test_detect_format_by_extension_and_content(tmp_path: Path) -> None:
    import torch

    files = {
        "weights.bin": pickle.dumps({"w": [1, 2]}, protocol=4),
        "notes.txt": b"hello",
        "config.json": b"{}",
        "Makefile": b"all:\n",
        "data.pkl": pickle.dumps(1, protocol=2),
        "plain.zip": b"",
    }
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("readme.txt", "not a pickle")
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")  # a zip holding data.pkl

    def fmt(rel: str) -> str:
        return detect_format(rel, lambda: (tmp_path / rel).open("rb"))

    assert fmt("weights.bin") == "pickle"  # sniffed, whatever the name says
    assert fmt("model.pt") == "pickle"
    assert fmt("data.pkl") == "pickle"
    assert fmt("plain.zip") == "zip"
    assert (fmt("notes.txt"), fmt("config.json"), fmt("Makefile")) == ("txt", "json", "")
    assert detect_format("dir/model.safetensors", None, safetensors=True) == "safetensors"


# -- the same decisions on every backend --------------------------------------------------------


def test_register_rules_and_promotion_gates(backend: Backend, pm: PluginManager, config: Path,
                                            tmp_path: Path) -> None:
    keep = open_keep(backend, pm)
    assert keep.policies.for_name("pm-x").replicate_to == ("backup",)
    name = unique_name("pm")
    src = small_model(tmp_path / "model")

    # required_tags from "*" (the model matches "pm-*" too, which does not set it).
    msg = refusal(keep.register, name, src)
    assert msg == (f"{name}: new version refused: policy required_tags (policies.\"*\"): missing "
                   "tag(s) owner; set them (owner=VALUE) (nothing was registered)")
    with pytest.raises(NotFoundError):
        keep.registry.versions(name)

    # formats: a pickle named .bin is sniffed; max_size from a string.
    (src / "extra.bin").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    msg = refusal(keep.register, name, src, tags={"owner": "ana"})
    assert "policy formats (policies.\"pm-*\"): extra.bin (pickle) not in formats" in msg
    (src / "extra.bin").unlink()
    (src / "big.txt").write_bytes(b"x" * (1 << 20))
    msg = refusal(keep.register, name, src, tags={"owner": "ana"})
    assert "policy max_size (policies.\"pm-*\"): " in msg and "exceed max_size 1,048,576" in msg
    (src / "big.txt").unlink()

    v1 = keep.register(name, src, tags={"owner": "ana"})
    assert v1.version == 1

    # Promotion gate: required tag, conditions, then it passes.
    msg = refusal(keep.set_alias, v1.ref, "production")
    assert msg.startswith(f"alias 'production' on {name}@1 refused: policy "
                          "promote.production.required_tags (policies.\"pm-*\"): missing tag(s) "
                          "approved-by")
    assert ("promote.production.conditions (policies.\"pm-*\"): eval.accuracy >= 0.9 is not met "
            "(eval.accuracy is not set), approved-by != '' is not met (approved-by is not set); "
            "set the tags once the version qualifies (the alias was not moved)") in msg
    assert msg.endswith("(the alias was not moved)")
    keep.registry.set_tag(name, 1, "eval.accuracy", "0.85")
    keep.registry.set_tag(name, 1, "approved-by", "bo")
    msg = refusal(keep.set_alias, v1.ref, "production")
    assert "eval.accuracy >= 0.9 is not met (eval.accuracy is '0.85')" in msg
    assert "required_tags" not in msg
    keep.registry.set_tag(name, 1, "eval.accuracy", "0.91")
    assert keep.set_alias(v1.ref, "production").aliases == ("production",)
    assert keep.set_alias(v1.ref, "staging").aliases == ("production", "staging")  # no gate
    keep.delete_alias(name, "production")  # deleting passes no gate

    # A gate on the version being registered (it has no number yet).
    src2 = small_model(tmp_path / "model2", seed=1)
    msg = refusal(keep.register, name, src2, tags={"owner": "ana"}, aliases=["production"])
    assert f"alias 'production' on the new version of {name} refused" in msg
    assert len(keep.registry.versions(name)) == 1

    # pickle: "warn" lets a pickle through on register (the loose table allows the format),
    # and the production gate's "block" refuses it, from findings re-scanned from the store.
    loose = unique_name("pm-loose")
    (src2 / "opt.bin").write_bytes(pickle.dumps({"k": "os.system"}, protocol=4))
    v = keep.register(loose, src2, tags={"owner": "ana", "approved-by": "bo",
                                         "eval.accuracy": "0.95"})
    msg = refusal(keep.set_alias, v.ref, "production")
    assert ("policy promote.production.pickle (policies.\"pm-*\"): pickle = 'block' and scanners "
            "found pickle in opt.bin (imports os.system); convert the weights to safetensors"
            ) in msg
    # ... also when the alias comes with the registration.
    msg = refusal(keep.register, loose, src2, tags={"owner": "ana", "approved-by": "bo",
                                                    "eval.accuracy": "0.95"},
                  aliases=["production"], force=True)
    assert "promote.production.pickle" in msg

    # Promotion into a stricter model re-scans the promoted files from the store.
    msg = refusal(keep.promote, v.ref, name)
    assert "opt.bin (pickle) not in formats" in msg

    # The same decisions, explained.
    result = check(keep, v.ref, alias="production")
    assert [(d.rule, d.passed) for d in result.decisions] == [
        ("promote.production.required_tags", True),
        ("promote.production.conditions", True),
        ("promote.production.conditions", True),
        ("promote.production.pickle", False),
    ]
    result = check(keep, v.ref)
    assert [(d.rule, d.status, d.glob) for d in result.decisions] == [
        ("required_tags", "pass", "*"), ("formats", "pass", "pm-loose-*"),
        ("max_size", "pass", "pm-*"), ("pickle", "warn", "pm-*")]


def test_pickle_warning_is_logged(tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager,
                                  config: Path, caplog: pytest.LogCaptureFixture) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri, plugins=pm)
    src = small_model(tmp_path / "model")
    (src / "opt.bin").write_bytes(pickle.dumps([1], protocol=4))
    name = unique_name("pm-loose")
    with caplog.at_level("WARNING", logger="modelkeep.policy"):
        keep.register(name, src, tags={"owner": "ana"})
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {name}: policy pickle: pickle = 'warn': scanners found pickle in opt.bin"]


def test_require_signed_gate_checks_the_signature(tmp_path: Path, mlflow_sqlite_uri: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from modelkeep.signing import write_key_pair

    monkeypatch.delenv("MODELKEEP_SIGNING_KEY", raising=False)
    monkeypatch.delenv("MODELKEEP_TRUSTED_KEYS", raising=False)
    path = tmp_path / "modelkeep.toml"
    path.write_text('[policies."*".promote.production]\nrequire_signed = true\n')
    monkeypatch.setenv("MODELKEEP_CONFIG", str(path))
    store = str(tmp_path / "store")
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri)
    unsigned = keep.register(unique_name(), small_model(tmp_path / "model"))
    msg = refusal(keep.set_alias, unsigned.ref, "production")
    assert "policy promote.production.require_signed (policies.\"*\"): the version has no " \
           "valid signature by a trusted key" in msg
    private, _public, _kid = write_key_pair(tmp_path / "keys" / "signer")
    signer = modelkeep.open(store=store, registry=mlflow_sqlite_uri, signing_key=private)
    signed = signer.register(unique_name(), small_model(tmp_path / "model2"))
    # A client that does not trust the key refuses the promotion ...
    msg = refusal(keep.set_alias, signed.ref, "production")
    assert "no valid signature by a trusted key" in msg
    # ... one that holds it (its public half is trusted) makes it.
    signer.set_alias(signed.ref, "production")
    assert "production" in signer.get(signed.ref).aliases


def test_blocking_the_plugin_turns_the_vetoes_off(tmp_path: Path, mlflow_sqlite_uri: str,
                                                  config: Path) -> None:
    pm = make_plugin_manager(entry_points=False, selection="-modelkeep.policies")
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri, plugins=pm)
    v = keep.register(unique_name("pm"), small_model(tmp_path / "model"))  # no owner tag
    assert keep.set_alias(v.ref, "production").aliases == ("production",)


# -- deletion and retention on every backend ----------------------------------------------------


def snapshot_ids(keep: Keep) -> set[str]:
    return set(keep.store.snapshot_ids())


def test_delete_version(backend: Backend, pm: PluginManager, config: Path,
                        tmp_path: Path) -> None:
    keep = open_keep(backend, pm)
    name = unique_name("pm")
    v1 = keep.register(name, small_model(tmp_path / "a"), tags={"owner": "ana"})
    v2 = keep.register(name, small_model(tmp_path / "b", seed=1), tags={"owner": "ana"})
    keep.set_alias(v2.ref, "staging")
    assert snapshot_ids(keep) == {v1.snapshot_id, v2.snapshot_id}

    # Immutable (the default): an aliased version stays, and nothing changes.
    msg = refusal(keep.delete_version, f"{name}@staging")
    assert msg == (f"deleting {name}@2 refused: {name}@2 has alias(es) staging and versions of "
                   f"{name} are immutable (default) (point the alias elsewhere or remove it "
                   f"first (delete_alias({name!r}, 'staging')); nothing was deleted)")
    assert keep.get(f"{name}@staging").version == 2 and v2.snapshot_id in snapshot_ids(keep)

    # Another registered version (of another model) pointing at the same snapshot keeps it.
    other = unique_name("other")
    keep.registry.create_version(other, v1.uri, tags=dict(v1.tags))
    gone = keep.delete_version(v1.ref)
    assert (gone.snapshot_deleted, gone.shared_with) == (False, (f"{other}@1",))
    assert [v.version for v in keep.versions(name)] == [2]
    assert keep.pull(f"{other}@1", tmp_path / "out").is_dir()
    gone = keep.delete_version(f"{other}@1")
    assert gone.snapshot_deleted and snapshot_ids(keep) == {v2.snapshot_id}
    assert not keep.store.db.exists(Kind.SNAPSHOT, v1.snapshot_id)
    with pytest.raises(NotFoundError):
        keep.get(v1.ref)
    assert keep.verify(f"{name}@2").ok

    # Not immutable: the aliases go first (recorded in the history), then the version.
    loose = unique_name("pm-loose")
    v = keep.register(loose, small_model(tmp_path / "c", seed=2), tags={"owner": "ana"})
    keep.set_alias(v.ref, "staging")
    gone = keep.delete_version(f"{loose}@staging")
    assert gone.aliases_deleted == ("staging",) and gone.snapshot_deleted
    assert [e.op for e in keep.alias_history(loose)] == ["set", "delete"]
    assert keep.versions(loose) == []


def test_retention_plan_and_apply(backend: Backend, pm: PluginManager, config: Path,
                                  tmp_path: Path) -> None:
    keep = open_keep(backend, pm)
    name = unique_name("pm")  # keep_last = 2, keep_tags = ["keep"]
    versions = [keep.register(name, small_model(tmp_path / f"v{i}", seed=i),
                              tags={"owner": "ana", **({"keep": "yes"} if i == 1 else {})})
                for i in range(1, 7)]
    keep.set_alias(versions[2].ref, "staging")  # version 3
    bystander = unique_name("bert")  # keep_last = 10 from "*": nothing to delete
    keep.register(bystander, small_model(tmp_path / "b"), tags={"owner": "ana"})

    plan = retention_plan(keep, name) + retention_plan(keep, bystander)
    assert [(i.version, i.action) for i in plan if i.name == name] == [
        (1, "keep"), (2, "delete"), (3, "keep"), (4, "delete"), (5, "keep"), (6, "keep")]
    reasons = {i.version: i.reasons for i in plan if i.name == name}
    assert reasons[1] == ("keep_tags: tagged keep",)
    assert reasons[2] == ("not one of the 2 newest (keep_last), 4 newer version(s)",)
    assert reasons[3] == ("aliased (staging) and immutable",)
    assert reasons[5] == ("keep_last = 2: one of the 2 newest",)
    assert reasons[6] == ("newest version", "keep_last = 2: one of the 2 newest")
    assert [(i.version, i.action) for i in plan if i.name == bystander] == [(1, "keep")]

    dry = apply_retention(keep, dry_run=True, name=name)
    assert [i.ref for i in dry.to_delete] == [f"{name}@2", f"{name}@4"] and not dry.deleted
    assert len(keep.versions(name)) == 6

    # Version 4 gains an alias after the plan: it is kept.
    plan = retention_plan(keep, name)
    keep.set_alias(f"{name}@4", "canary")
    report = apply_retention(keep, dry_run=False, name=name, plan=plan)
    assert [d.ref for d in report.deleted] == [f"{name}@2"]
    assert report.skipped == [(f"{name}@4", "aliased (canary) and immutable")]
    assert [v.version for v in keep.versions(name)] == [1, 3, 4, 5, 6]
    assert versions[1].snapshot_id not in snapshot_ids(keep)
    for v in keep.versions(name):
        assert keep.verify(v.ref).ok


def test_keep_days_counts_from_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "modelkeep.toml"
    path.write_text('[policies."*"]\nkeep_days = 7\nkeep_aliased = false\nimmutable = false\n')
    monkeypatch.setenv("MODELKEEP_CONFIG", str(path))
    # A registry of its own: the plan without a name covers every model in it.
    keep = modelkeep.open(store=str(tmp_path / "store"),
                          registry=f"sqlite:///{tmp_path / 'own.db'}")
    name = unique_name()
    for i in range(3):
        keep.register(name, small_model(tmp_path / f"v{i}", seed=i))
    keep.set_alias(f"{name}@1", "old")
    now = datetime.now(UTC)
    assert {i.action for i in retention_plan(keep, name, now=now)} == {"keep"}
    later = now + timedelta(days=8)
    plan = retention_plan(keep, now=later)
    assert [(i.version, i.action) for i in plan] == [(1, "delete"), (2, "delete"), (3, "keep")]
    assert plan[0].reasons[0].startswith("older than 7 day(s) (keep_days): created 8 day(s)")
    report = apply_retention(keep, dry_run=False, now=later)
    assert [d.ref for d in report.deleted] == [f"{name}@1", f"{name}@2"]
    assert report.deleted[0].aliases_deleted == ("old",)
    assert [v.version for v in keep.versions(name)] == [3]


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str,
            config: Path) -> Path:
    monkeypatch.setenv("MODELKEEP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODELKEEP_REGISTRY", mlflow_sqlite_uri)
    monkeypatch.setenv("COLUMNS", "250")  # rich folds long table cells at 80
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], pm: PluginManager, *args: str) -> tuple[int, str,
                                                                                    str]:
    capsys.readouterr()
    code = main(list(args), plugins=pm)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_gate_veto_and_policy_check(cli_env: Path, pm: PluginManager,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("pm")
    src = small_model(cli_env / "model")
    code, out, err = run(capsys, pm, "register", name, str(src), "--tag", "owner=ana",
                         "--alias", "production")
    assert code == 9 and out == ""
    assert err.count("\n") == 1 and err.startswith(
        f"error: alias 'production' on the new version of {name} refused: policy "
        "promote.production.required_tags (policies.\"pm-*\"): missing tag(s) approved-by; "
        "tag the version first;")
    assert err.rstrip().endswith("(nothing was registered)")

    code, _out, _err = run(capsys, pm, "register", name, str(src), "--tag", "owner=ana",
                           "--tag", "eval.accuracy=0.8", "--tag", "approved-by=bo")
    assert code == 0
    code, out, _err = run(capsys, pm, "policy", "check", f"{name}@1", "--alias", "production")
    assert code == 9
    assert "promote.production.conditions" in out and "FAIL" in out
    assert "eval.accuracy >= 0.9 is not met (eval.accuracy is '0.8')" in out
    assert f"policies from {cli_env / 'modelkeep.toml'}" in out and '"pm-*"' in out
    assert "1 of 4 rule(s) failed" in out

    code, out, _err = run(capsys, pm, "policy", "check", f"{name}@1", "--alias", "production",
                          "--json")
    assert code == 9
    data = json.loads(out)
    assert data["passed"] is False and data["matched"] == ["*", "pm-*"]
    assert [(d["rule"], d["status"]) for d in data["decisions"]] == [
        ("promote.production.required_tags", "pass"),
        ("promote.production.conditions", "fail"),
        ("promote.production.conditions", "pass"),
        ("promote.production.pickle", "pass")]
    failed = data["decisions"][1]
    assert failed["glob"] == "pm-*" and failed["file"] == str(cli_env / "modelkeep.toml")
    assert failed["fix"] == "set the tags once the version qualifies"

    code, out, _err = run(capsys, pm, "--json", "policy", "check", f"{name}@1")
    assert code == 0 and json.loads(out)["passed"] is True
    code, _out, err = run(capsys, pm, "alias", f"{name}@1", "production")
    assert code == 9 and "eval.accuracy >= 0.9 is not met" in err
    code, out, _err = run(capsys, pm, "policy", "check", f"{name}@1", "--alias", "staging")
    assert code == 0 and "no rule is set" in out


def test_cli_policy_show(cli_env: Path, pm: PluginManager,
                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, pm, "policy", "show", "pm-x", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["matched"] == ["*", "pm-*"]
    assert data["settings"]["keep_last"] == {"value": 2, "glob": "pm-*",
                                             "file": str(cli_env / "modelkeep.toml")}
    assert data["settings"]["immutable"] == {"value": True, "glob": None, "file": None}
    assert data["promote"]["production"]["conditions"]["value"] == [
        "eval.accuracy >= 0.9", "approved-by != ''"]
    code, out, _err = run(capsys, pm, "policy", "show", "pm-x")
    assert code == 0 and "keep_last" in out and "default" in out
    code, out, _err = run(capsys, pm, "--json", "policy", "show")
    assert [t["glob"] for t in json.loads(out)] == ["*", "pm-*", "pm-loose-*"]


def test_cli_prune(cli_env: Path, pm: PluginManager, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name("pm")
    for i in range(4):
        code, _o, err = run(capsys, pm, "register", name,
                            str(small_model(cli_env / f"v{i}", seed=i)), "--tag", "owner=ana")
        assert code == 0, err
    code, out, _err = run(capsys, pm, "prune", name, "--dry-run")
    assert code == 0 and "would delete 2 of 4 version(s) (dry run)" in out
    code, out, _err = run(capsys, pm, "--json", "prune", name)
    assert code == 0
    data = json.loads(out)
    assert [d["ref"] for d in data["deleted"]] == [f"{name}@1", f"{name}@2"]
    assert all(d["snapshot_deleted"] for d in data["deleted"])
    code, out, _err = run(capsys, pm, "--json", "list", name)
    assert [v["version"] for v in json.loads(out)["versions"]] == [3, 4]
    code, out, _err = run(capsys, pm, "prune", name)
    assert code == 0 and "deleted 0 of 2 version(s)" in out
