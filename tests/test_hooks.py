"""Plugin hooks, exercised through real register and pull runs (local store, MLflow SQLite).

Each hook in :mod:`modelkeep.hooks.specs` has a test named ``test_hook_<name>`` (the hook name
without ``modelkeep_``); :func:`test_every_hook_has_a_test` enforces it.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import typer

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import State, main
from modelkeep.errors import InvalidInputError, ModelkeepError, PluginError, VetoError
from modelkeep.hooks import Finding, PluginManager, hookimpl, make_plugin_manager, specs
from tests.backends import unique_name
from tests.helpers import tensors, write_model


@pytest.fixture
def pm() -> PluginManager:
    return make_plugin_manager(entry_points=False)


@pytest.fixture
def open_keep(tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager):
    def opener(**kwargs: Any) -> Keep:
        kwargs.setdefault("store", str(tmp_path / unique_name("store")))
        kwargs.setdefault("registry", mlflow_sqlite_uri)
        return modelkeep.open(plugins=pm, **kwargs)

    return opener


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model", tensors(n=3))


class Calls:
    """A plugin that records every call of the hooks it implements."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def of(self, hook: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.calls if name == hook]


# -- opening ------------------------------------------------------------------------------------


def test_hook_registry(pm: PluginManager, open_keep, model: Path, mlflow_sqlite_uri: str) -> None:
    from modelkeep.plugins.mlflow import MlflowRegistry

    class Recording:
        def __init__(self, inner: MlflowRegistry) -> None:
            self.inner, self.created = inner, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def create_version(self, *args: Any, **kwargs: Any) -> Any:
            self.created += 1
            return self.inner.create_version(*args, **kwargs)

    asked: list[str | None] = []

    class Plugin:
        @hookimpl
        def modelkeep_registry(self, uri: str | None) -> Any:
            asked.append(uri)
            return Recording(MlflowRegistry(uri)) if uri == mlflow_sqlite_uri else None

    pm.register(Plugin())
    keep = open_keep()
    assert isinstance(keep.registry, Recording) and asked == [mlflow_sqlite_uri]
    v = keep.register(unique_name(), model)
    assert keep.registry.created == 1 and keep.get(v.ref).snapshot_id == v.snapshot_id
    # A plugin that passes leaves the built-in MLflow registry in place (for a SQLite file, the
    # adapter that reads MLflow's tables).
    from modelkeep.plugins.mlflow.sqlite import SqliteRegistry

    other = mlflow_sqlite_uri.replace("mlflow.db", "other.db")
    assert type(open_keep(registry=other).registry) is SqliteRegistry
    # With the built-in registry blocked and no other answer, the error says so.
    bare = make_plugin_manager(entry_points=False, selection="-modelkeep.mlflow")
    with pytest.raises(PluginError, match="no plugin provides a registry"):
        modelkeep.open(store=str(model.parent / "s"), registry=other, plugins=bare)


def test_hook_storage_options(pm: PluginManager, mlflow_sqlite_uri: str, moto_s3,
                              model: Path, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    opts = moto_s3.storage_options

    class Credentials:
        @hookimpl
        def modelkeep_storage_options(self, protocol: str, url: str,
                                      store_name: str | None) -> Mapping[str, Any] | None:
            seen.append({"protocol": protocol, "url": url, "store_name": store_name})
            if protocol != "s3":
                return None
            # Endpoint and credentials come from the plugin only; the caller names a region.
            return {**opts, "client_kwargs": {**opts.get("client_kwargs", {}),
                                              "region_name": "plugin-region"}}

    class Later:
        @hookimpl(trylast=True)
        def modelkeep_storage_options(self) -> Mapping[str, Any]:
            return {"key": "loses-to-the-first-answer", "default_fill_cache": False}

    pm.register(Later())
    pm.register(Credentials())
    bucket = moto_s3.make_bucket()
    url = f"s3://{bucket}/models"
    keep = modelkeep.open(store=url, registry=mlflow_sqlite_uri, plugins=pm,
                          store_options={"client_kwargs": {"region_name": "us-east-1"}})
    options = keep.store.location.options
    assert options["key"] == opts["key"] and options["default_fill_cache"] is False
    assert options["client_kwargs"]["region_name"] == "us-east-1"  # explicit options win
    assert options["client_kwargs"]["endpoint_url"] == opts["client_kwargs"]["endpoint_url"]
    assert seen[0] == {"protocol": "s3", "url": url, "store_name": None}
    v = keep.register(unique_name(), model)
    assert keep.pull(v.ref, tmp_path / "out").is_dir()

    # A named store passes its name.
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "modelkeep.toml").write_text(f'[stores.team]\nurl = "{url}"\n')
    cfg = modelkeep.config.load_config(tmp_path / "proj")
    keep = modelkeep.open(store="team", registry=mlflow_sqlite_uri, plugins=pm, config=cfg)
    assert seen[-1] == {"protocol": "s3", "url": url, "store_name": "team"}
    assert keep.get(v.ref).size == v.size


def test_hook_provide_keys(pm: PluginManager, open_keep, tmp_path: Path, model: Path) -> None:
    from modelkeep.store import Store
    from modelkeep.store.crypto import new_key

    assert specs.modelkeep_provide_keys.modelkeep_spec["firstresult"] is True
    kek = new_key()
    url = str(tmp_path / "encrypted")
    Store.open(url).init_encrypted(kek)
    asked: list[tuple[str, str | None]] = []

    class Vault:
        @hookimpl
        def modelkeep_provide_keys(self, url: str, store_name: str | None) -> dict[str, bytes]:
            asked.append((url, store_name))
            return {"unrelated": new_key(), "vault-2026": kek}

    pm.register(Vault())
    keep = open_keep(store=url)
    v = keep.register(unique_name(), model)
    assert keep.verify(v.ref).ok
    assert asked == [(url, None)]  # once, when the store turned out to be encrypted
    assert keep.store.key_status().key_source == "key provider key 'vault-2026'"
    open_keep().register(unique_name(), model)  # a plain store never asks
    assert len(asked) == 1


# -- registering ----------------------------------------------------------------------------------


class Scanner(Calls):
    def __init__(self, error_on: str | None = None) -> None:
        super().__init__()
        self.error_on = error_on

    @hookimpl
    def modelkeep_scan_file(self, name: str, path: str, size: int, opener: Any):
        self.calls.append(("scan", {"name": name, "path": path, "size": size}))
        with opener() as f:
            head = f.read(2)
        if path == "run.sh":
            yield Finding(path, f"shell script ({head!r})", severity="warning", scanner="t")
        if path == self.error_on:
            yield Finding(path, "forbidden file", severity="error", scanner="test-scanner")

    @hookimpl
    def modelkeep_validate_version(self, findings: Any) -> None:
        self.calls.append(("validate", {"findings": list(findings)}))


def test_hook_scan_file(pm: PluginManager, open_keep, model: Path) -> None:
    scanner = Scanner()
    pm.register(scanner)
    keep = open_keep()
    name = unique_name()
    keep.register(name, model)
    scanned = {c["path"]: c["size"] for c in scanner.of("scan")}
    assert scanned == {p.relative_to(model).as_posix(): p.stat().st_size
                       for p in model.rglob("*") if p.is_file()}
    [validated] = scanner.of("validate")
    assert [f.path for f in validated["findings"]] == ["run.sh"]
    assert "#!" in validated["findings"][0].message

    # An error finding refuses the version through the built-in validator.
    scanner.error_on = "config.json"
    (model / "config.json").write_text('{"changed": true}\n')
    with pytest.raises(VetoError, match=r"config\.json: forbidden file \(found by test-scanner\)"):
        keep.register(name, model)
    assert [v.version for v in keep.versions(name)] == [1]
    # Blocking the built-in validator lets error findings through.
    relaxed = make_plugin_manager(entry_points=False, selection="-modelkeep.findings")
    relaxed.register(scanner)
    lenient = Keep(keep.store, keep.registry, plugins=relaxed)
    assert lenient.register(name, model).version == 2


def test_a_scanner_must_return_findings(pm: PluginManager, open_keep, model: Path) -> None:
    class Bad:
        @hookimpl
        def modelkeep_scan_file(self) -> list[str]:
            return ["not a finding"]

    pm.register(Bad())
    with pytest.raises(InvalidInputError, match="not a Finding"):
        open_keep().register(unique_name(), model)


def test_hook_collect_metadata(pm: PluginManager, open_keep, model: Path) -> None:
    seen: list[dict[str, Any]] = []

    class Lineage:
        @hookimpl
        def modelkeep_collect_metadata(self, name: str, source: Path, snapshot: Any,
                                       keep: Keep) -> dict[str, str]:
            seen.append({"name": name, "source": source, "files": len(snapshot.files)})
            return {"lineage.host": "ci-7", "team": "plugin-team"}

    pm.register(Lineage())
    keep = open_keep()
    name = unique_name()
    v = keep.register(name, model, tags={"team": "caller-team"})
    assert v.user_tags == {"lineage.host": "ci-7", "team": "caller-team"}
    assert keep.get(v.ref).tags["lineage.host"] == "ci-7"
    assert keep.snapshot(v.ref).tags["lineage.host"] == "ci-7"  # recorded in the store too
    assert seen == [{"name": name, "source": model, "files": 5}]

    class Reserved:
        @hookimpl
        def modelkeep_collect_metadata(self) -> dict[str, str]:
            return {"modelkeep.size": "0"}

    pm.register(Reserved())
    with pytest.raises(InvalidInputError, match="reserved"):
        keep.register(name, model, force=True)


def test_hook_collect_lineage(pm: PluginManager, open_keep, model: Path) -> None:
    seen: list[dict[str, Any]] = []

    class Slurm:
        @hookimpl
        def modelkeep_collect_lineage(self, name: str, source: Path, repo_dir: Path,
                                      keep: Keep) -> dict[str, Any]:
            seen.append({"name": name, "source": source, "repo_dir": repo_dir})
            return {"slurm": {"job": 42, "array": None, "nodes": ["n1", "n2"]},
                    "git": {"status": "replaced"}}

    pm.register(Slurm())
    keep = open_keep()
    name = unique_name()
    v = keep.register(name, model)
    assert seen == [{"name": name, "source": model, "repo_dir": model}]
    # plugins answer before the built-ins: a section they answer wins; the others still come
    assert v.lineage["slurm"] == {"job": 42, "array": None, "nodes": ["n1", "n2"]}
    assert v.lineage["git"] == {"status": "replaced"} and "dvc" in v.lineage
    assert keep.snapshot(v.ref).lineage == v.lineage
    tags = keep.registry.get_version(name, v.version).tags
    assert tags["modelkeep.slurm.job"] == "42" and tags["modelkeep.slurm.nodes"] == '["n1","n2"]'
    assert "modelkeep.slurm.array" not in tags

    class Floats:
        @hookimpl(tryfirst=True)
        def modelkeep_collect_lineage(self) -> dict[str, Any]:
            return {"metrics": {"acc": 0.5}}

    pm.register(Floats())
    with pytest.raises(InvalidInputError, match=r"metrics\.acc"):
        keep.register(name, model, force=True)


def test_hook_validate_version(pm: PluginManager, open_keep, model: Path) -> None:
    calls: list[dict[str, Any]] = []

    class SizeLimit:
        @hookimpl
        def modelkeep_validate_version(self, name: str, snapshot: Any, findings: Any,
                                       keep: Keep) -> str | None:
            calls.append({"name": name, "size": snapshot.size, "tags": dict(snapshot.tags)})
            return "larger than 1 KiB" if snapshot.size > 1024 else None

    class NeedsOwner:
        @hookimpl
        def modelkeep_validate_version(self, snapshot: Any) -> str | None:
            return None if "owner" in snapshot.tags else "needs an owner tag"

    pm.register(SizeLimit())
    pm.register(NeedsOwner())
    keep = open_keep()
    name = unique_name()
    with pytest.raises(VetoError) as info:
        keep.register(name, model)
    # Every validator is asked; the message carries every reason and says nothing was kept.
    assert set(info.value.reasons) == {"larger than 1 KiB", "needs an owner tag"}
    assert info.value.exit_code == 9 and "nothing was registered" in str(info.value)
    assert keep.registry.latest(name) is None and list(keep.store.snapshot_ids()) == []
    assert calls[0]["name"] == name and calls[0]["size"] > 1024

    pm.unregister(name="modelkeep.findings")  # other validators still run without it
    small = model / "config.json"
    ok = open_keep(store=str(keep.store.url))
    v = ok.register(name, small, tags={"owner": "ana"})
    assert v.version == 1


def test_hook_before_register(pm: PluginManager, open_keep, model: Path) -> None:
    seen: list[dict[str, Any]] = []

    class Gate:
        refuse = False

        @hookimpl
        def modelkeep_before_register(self, name: str, snapshot: Any, tags: Mapping[str, str],
                                      keep: Keep) -> None:
            seen.append({"name": name, "tags": dict(tags), "sid": snapshot.id})
            if self.refuse:
                raise ModelkeepError("registration window closed", hint="try after 18:00")

    gate = Gate()
    pm.register(gate)
    keep = open_keep()
    name = unique_name()
    v = keep.register(name, model)
    assert seen[0]["tags"]["modelkeep.snapshot"] == v.snapshot_id == seen[0]["sid"]
    gate.refuse = True
    (model / "config.json").write_text("{}\n")
    with pytest.raises(ModelkeepError, match="window closed"):
        keep.register(name, model)
    assert [x.version for x in keep.versions(name)] == [1]
    assert set(keep.store.snapshot_ids()) == {v.snapshot_id}  # the refused one was not written


def test_hook_after_register(pm: PluginManager, open_keep, model: Path) -> None:
    done: list[Any] = []

    class After:
        @hookimpl
        def modelkeep_after_register(self, version: Any, keep: Keep, source: Path) -> None:
            done.append((version, keep.get(version.ref).version))
            assert source == model

    pm.register(After())
    keep = open_keep()
    name = unique_name()
    v = keep.register(name, model, aliases=["candidate"])
    [(version, visible)] = done
    assert version == v and visible == 1 and version.aliases == ("candidate",)
    keep.register(name, model)  # identical content is reused: not a new registration
    assert len(done) == 1


# -- aliases --------------------------------------------------------------------------------------


class Approval(Calls):
    @hookimpl
    def modelkeep_before_alias_change(self, name: str, alias: str, version: int | None,
                                      tags: Mapping[str, str], previous: int | None,
                                      keep: Keep) -> str | None:
        self.calls.append(("before", {"alias": alias, "version": version, "previous": previous,
                                      "tags": dict(tags)}))
        if alias == "production" and "approved-by" not in tags:
            return "production needs an approved-by tag"
        return None

    @hookimpl
    def modelkeep_after_alias_change(self, name: str, alias: str, version: int,
                                     previous: int | None, keep: Keep) -> None:
        self.calls.append(("after", {"alias": alias, "version": version, "previous": previous,
                                     "now": keep.get(f"{name}@{alias}").version}))


def test_hook_before_alias_change(pm: PluginManager, open_keep, model: Path) -> None:
    approval = Approval()
    pm.register(approval)
    keep = open_keep()
    name = unique_name()
    with pytest.raises(VetoError, match="production needs an approved-by tag") as info:
        keep.register(name, model, aliases=["candidate", "production"])
    assert "nothing was registered" in str(info.value)
    assert keep.registry.latest(name) is None  # not even the accepted alias's version
    assert [c["version"] for c in approval.of("before")] == [None, None]

    v1 = keep.register(name, model, aliases=["candidate"])
    assert v1.aliases == ("candidate",)
    # Reusing identical content asks about the alias on the existing version, with the tags it
    # will have once the register's own are applied; a refusal applies nothing.
    with pytest.raises(VetoError, match=rf"alias 'production' on {name}@1 refused") as info:
        keep.register(name, model, aliases=["production"], tags={"reviewer": "al"},
                      message="retry")
    assert "the alias was not moved" in str(info.value)
    assert approval.of("before")[-1]["version"] == 1
    rv = keep.registry.get_version(name, 1)
    assert "reviewer" not in rv.tags and rv.description != "retry"
    again = keep.register(name, model, aliases=["production"], tags={"approved-by": "al"})
    assert again.reused and again.applied == {"tags": {"approved-by": "al"},
                                              "aliases": ["production"]}
    assert approval.of("before")[-1]["tags"]["approved-by"] == "al"
    (model / "config.json").write_text("{}\n")
    v2 = keep.register(name, model, aliases=["production"], tags={"approved-by": "bo"})
    # The tags the version will have, the built-in scanner's summary among them.
    assert approval.of("before")[-1] == {"alias": "production", "version": None,
                                         "previous": 1,
                                         "tags": {"approved-by": "bo", "modelkeep.scan": "clean"}}
    assert keep.get(f"{name}@production").version == v2.version == 2


def test_hook_after_alias_change(pm: PluginManager, open_keep, model: Path) -> None:
    approval = Approval()
    pm.register(approval)
    keep = open_keep()
    name = unique_name()
    keep.register(name, model, aliases=["candidate"])
    (model / "config.json").write_text("{}\n")
    keep.register(name, model, aliases=["candidate"])
    keep.register(name, model, aliases=["stable"])  # reused content: alias set on version 2
    assert approval.of("after") == [
        {"alias": "candidate", "version": 1, "previous": None, "now": 1},
        {"alias": "candidate", "version": 2, "previous": 1, "now": 2},
        {"alias": "stable", "version": 2, "previous": None, "now": 2},
    ]


# -- reading --------------------------------------------------------------------------------------


def test_hook_after_pull(pm: PluginManager, open_keep, model: Path, tmp_path: Path) -> None:
    class Stamp:
        @hookimpl
        def modelkeep_after_pull(self, version: Any, dest: Path, keep: Keep) -> None:
            (dest / "VERSION").write_text(version.ref)

    pm.register(Stamp())
    keep = open_keep()
    v = keep.register(unique_name(), model, aliases=["candidate"])
    out = keep.pull(f"{v.name}@candidate", tmp_path / "serving")
    assert (out / "VERSION").read_text() == v.ref
    assert (out / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


# -- command line ---------------------------------------------------------------------------------


def test_hook_cli_commands(pm: PluginManager, tmp_path: Path, mlflow_sqlite_uri: str,
                           model: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    class Commands:
        @hookimpl
        def modelkeep_cli_commands(self, app: typer.Typer) -> None:
            @app.command("count")
            def count(ctx: typer.Context, name: str) -> None:
                """Count the versions of NAME."""
                keep = ctx.find_object(State).keep()
                print(f"{name}: {len(keep.versions(name))} version(s)")

    pm.register(Commands())
    pm.register(Approval())
    monkeypatch.chdir(tmp_path)
    name = unique_name()
    base = ["--store", str(tmp_path / "s"), "--registry", mlflow_sqlite_uri]
    assert main([*base, "register", name, str(model)], plugins=pm) == 0
    capsys.readouterr()
    assert main([*base, "count", name], plugins=pm) == 0
    assert capsys.readouterr().out == f"{name}: 1 version(s)\n"
    assert main(["--help"], plugins=pm) == 0
    assert "Count the versions" in capsys.readouterr().out
    # Plugin commands stay out of a CLI run with other plugins.
    assert main([*base, "count", name], plugins=make_plugin_manager(entry_points=False)) == 2

    capsys.readouterr()
    # A veto reaches the user as one line and a distinct exit code.
    assert main([*base, "register", name, str(model), "--force", "--alias", "production"],
                plugins=pm) == 9
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: alias 'production' on the new version of {name} refused: "
                   "production needs an approved-by tag (nothing was registered)"]


def test_plugins_command_lists_plugins_and_hooks(
    pm: PluginManager, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    pm.register(Approval(), "approval-test")
    assert main(["--json", "plugins"], plugins=pm) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["approval-test"]["hooks"] == ["modelkeep_after_alias_change",
                                                "modelkeep_before_alias_change"]
    assert listed["approval-test"]["origin"] == "registered"
    assert listed["modelkeep.mlflow"]["origin"] == "builtin"
    assert listed["modelkeep.mlflow"]["hooks"] == ["modelkeep_registry"]
    assert main(["plugins"], plugins=pm) == 0
    assert "approval-test" in capsys.readouterr().out


def test_plugin_errors_are_clear(capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match="'nope', which is not installed"):
        make_plugin_manager(selection="nope")
    monkeypatch.setenv("MODELKEEP_PLUGINS", "nope")
    assert main(["plugins"]) == 8
    assert "MODELKEEP_PLUGINS names plugin 'nope'" in capsys.readouterr().err

    class Typo:
        @hookimpl
        def modelkeep_after_pul(self) -> None: ...

    pm = make_plugin_manager(entry_points=False)
    pm.register(Typo(), "typo")
    with pytest.raises(Exception, match="unknown hook"):
        pm.check_pending()

    class WrongArgs:
        @hookimpl
        def modelkeep_after_pull(self, versoin: Any) -> None: ...

    with pytest.raises(PluginError, match="cannot register plugin 'wrong'"):
        pm.register(WrongArgs(), "wrong")


# -- meta -----------------------------------------------------------------------------------------


def hook_names() -> list[str]:
    return sorted(name for name, obj in vars(specs).items()
                  if name.startswith("modelkeep_") and hasattr(obj, "modelkeep_spec"))


def test_every_hook_has_a_test() -> None:
    tests = {name for name, obj in globals().items()
             if name.startswith("test_hook_") and inspect.isfunction(obj)}
    missing = [h for h in hook_names() if f"test_hook_{h.removeprefix('modelkeep_')}" not in tests]
    assert hook_names() and not missing, f"hooks without a test_hook_<name>: {missing}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hookspec_is_typed_and_documented(name: str) -> None:
    spec = getattr(specs, name)
    doc = inspect.getdoc(spec) or ""
    params = [p for p in inspect.signature(spec).parameters]
    for p in params:
        assert f":param {p}:" in doc, f"{name}: {p} undocumented"
    assert "Example::" in doc
    hints = spec.__annotations__
    assert set(params) <= set(hints) and "return" in hints
    if hints["return"] != "None":
        assert ":returns:" in doc


def test_importing_stays_cheap() -> None:
    code = (
        "import sys, modelkeep, modelkeep.hooks\n"
        "heavy = ('fsspec', 'mlflow', 'typer', 'modelkeep.api', 'modelkeep.hooks.manager',"
        " 'importlib.metadata', 'modelkeep.config')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
