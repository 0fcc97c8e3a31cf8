"""Settings: discovery by walking up, relative paths, named stores, environment overrides,
validation and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkeep.cli.main import main
from modelkeep.config import is_secret_key, load_config, redact, redact_url
from modelkeep.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MODELKEEP_STORE_OPTIONS",
                "MLFLOW_TRACKING_URI", "MODELKEEP_CONFIG"):
        monkeypatch.delenv(var, raising=False)


def test_found_from_a_subfolder_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "modelkeep.toml").write_text(
        'store = "data/store"\nregistry = "sqlite:///reg.db"\n'
        '[store_options]\nanon = false\n'
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    cfg = load_config(sub)
    assert cfg.file == tmp_path / "modelkeep.toml" and cfg.root == tmp_path
    assert cfg.store == str(tmp_path / "data" / "store")
    assert cfg.registry == f"sqlite:///{tmp_path / 'reg.db'}"
    assert cfg.store_options == {"anon": False}


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert cfg.file is None and cfg.registry is None
    assert cfg.store == str(tmp_path / ".modelkeep" / "store")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modelkeep.toml").write_text('store = "s"\nregistry = "sqlite:///f.db"\n')
    monkeypatch.setenv("MODELKEEP_STORE", "s3://bucket/models")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", '{"client_kwargs": {"region_name": "x"}}')
    cfg = load_config(tmp_path)
    assert cfg.store == "s3://bucket/models" and cfg.registry == "http://127.0.0.1:5000"
    assert cfg.store_options == {"client_kwargs": {"region_name": "x"}}
    monkeypatch.setenv("MODELKEEP_REGISTRY", "sqlite:////abs.db")
    assert load_config(tmp_path).registry == "sqlite:////abs.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('stroe = "x"\n', "unknown key 'stroe'"),
        ("store = 3\n", "'store'"),
        ('store = "x\n', "cannot read"),
        ('store_options = "x"\n', "must be a table"),
    ],
)
def test_invalid_file_names_the_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "modelkeep.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path)
    assert "modelkeep.toml" in str(info.value)


def test_invalid_options_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", "[1, 2]")
    with pytest.raises(ConfigError, match="MODELKEEP_STORE_OPTIONS"):
        load_config(tmp_path)


NAMED = """
registry = "sqlite:///reg.db"
default_store = "team"

[stores.team]
url = "s3://models/keep"
options = { key = "AKIAEXAMPLE", secret = "s3cr3t", client_kwargs = { endpoint_url = "http://h" } }

[stores.laptop]
url = "data/store"

[policies]
retention = { keep_last = 3 }
"""


def test_named_stores_and_default_store(tmp_path: Path) -> None:
    (tmp_path / "modelkeep.toml").write_text(NAMED)
    cfg = load_config(tmp_path)
    assert cfg.store_name == "team" and cfg.store == "s3://models/keep"
    assert cfg.store_options["secret"] == "s3cr3t"
    assert cfg.stores["laptop"].url == str(tmp_path / "data" / "store")
    assert cfg.policies == {"retention": {"keep_last": 3}}
    laptop = cfg.resolve_store("laptop")
    assert (laptop.name, laptop.url, laptop.options) == ("laptop", cfg.stores["laptop"].url, {})
    # Not a store name: a URL, with the default store's options as before named stores existed.
    other = cfg.resolve_store("s3://other/bucket")
    assert other.name is None and other.options["key"] == "AKIAEXAMPLE"
    assert cfg.resolve_store(None).name == "team"


def test_the_files_store_key_takes_a_named_store_first(tmp_path: Path) -> None:
    """``store = "team"`` with a ``[stores.team]`` is that store, as ``--store team`` is; a
    folder of that name is written ``./team``."""
    named = '[stores.team]\nurl = "s3://models/keep"\noptions = { key = "AKIAEXAMPLE" }\n'
    (tmp_path / "modelkeep.toml").write_text('store = "team"\n' + named)
    cfg = load_config(tmp_path)
    assert (cfg.store_name, cfg.store) == ("team", "s3://models/keep")
    assert cfg.store_options == {"key": "AKIAEXAMPLE"}
    (tmp_path / "modelkeep.toml").write_text('store = "./team"\n' + named)
    cfg = load_config(tmp_path)
    assert (cfg.store_name, cfg.store) == (None, str(tmp_path / "team"))


def test_store_name_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "modelkeep.toml").write_text(NAMED)
    monkeypatch.setenv("MODELKEEP_STORE", "laptop")
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", '{"auto_mkdir": true}')
    cfg = load_config(tmp_path)
    assert cfg.store_name == "laptop" and cfg.store == str(tmp_path / "data" / "store")
    assert cfg.store_options == {"auto_mkdir": True}
    assert cfg.sources["store"] == "env MODELKEEP_STORE"
    # The environment's options go to whichever store is in use.
    assert cfg.resolve_store("team").options["auto_mkdir"] is True


def test_pyproject_tool_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.modelkeep]\nstore = "s"\n'
        '[tool.modelkeep.stores.b]\nurl = "memory://b"\n'
    )
    sub = tmp_path / "pkg"
    sub.mkdir()
    # A pyproject.toml without [tool.modelkeep] is passed over on the way up.
    (sub / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    cfg = load_config(sub)
    assert cfg.file == tmp_path / "pyproject.toml" and cfg.store == str(tmp_path / "s")
    assert cfg.stores["b"].url == "memory://b"
    # In one folder, modelkeep.toml wins.
    (tmp_path / "modelkeep.toml").write_text('store = "t"\n')
    assert load_config(sub).store == str(tmp_path / "t")


def test_modelkeep_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "conf" / "team.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text('store = "x"\n')
    monkeypatch.setenv("MODELKEEP_CONFIG", str(elsewhere))
    cfg = load_config(tmp_path)
    assert cfg.file == elsewhere and cfg.store == str(elsewhere.parent / "x")
    monkeypatch.setenv("MODELKEEP_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="MODELKEEP_CONFIG"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('default_store = "x"\n', "'default_store' in .* names 'x'"),
        ('store = "a"\ndefault_store = "b"\n[stores.b]\nurl = "u"\n', "both 'store'"),
        ("[stores.a]\nurl = 3\n", "'stores.a.url' in .* must be a non-empty string"),
        ("[stores.a]\noptions = {}\n", "'stores.a.url'"),
        ('[stores.a]\nurl = "u"\nendpoint = "e"\n', "unknown key 'stores.a.endpoint'"),
        ('[stores.a]\nurl = "u"\noptions = "o"\n', "'stores.a.options' .* must be a table"),
        ('stores = { "a b" = { url = "u" } }\n', "store name 'stores.a b'"),
        ("stores = 1\n", "'stores' in .* must be a table"),
        ("policies = [1]\n", "'policies' in .* must be a table"),
    ],
)
def test_invalid_named_stores(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "modelkeep.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path)
    assert str(tmp_path / "modelkeep.toml") in str(info.value)


def test_invalid_pyproject_names_the_full_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.modelkeep]\nstroe = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'tool\.modelkeep\.stroe' in .*pyproject"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("key", "secret"),
    [("key", True), ("secret", True), ("aws_secret_access_key", True), ("password", True),
     ("token", True), ("sas_token", True), ("connection_string", True), ("accountKey", True),
     ("credential", True), ("client_kwargs", False), ("endpoint_url", False), ("anon", False),
     ("account_name", False), ("keep_last", False)],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_redact_urls_and_nested_values() -> None:
    assert redact_url("postgresql://me:pw@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact_url("https://a.blob.core.windows.net/c?sv=2024&sig=abc%3D&se=1") == (
        "https://a.blob.core.windows.net/c?sv=2024&sig=***&se=1")
    # A container in an abfs URL is not a secret.
    assert redact_url("abfs://container@acct.dfs.core.windows.net/p") == (
        "abfs://container@acct.dfs.core.windows.net/p")
    assert redact({"a": [{"password": "x"}, "mysql://r:p@h/d"], "token": ""}) == {
        "a": [{"password": "***"}, "mysql://r:***@h/d"], "token": ""}


def test_config_command_redacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    (tmp_path / "modelkeep.toml").write_text(NAMED.replace(
        "sqlite:///reg.db", "mysql+pymysql://root:hunter2@127.0.0.1/mlflow"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", '{"sas_token": "sv=1&sig=zzz"}')
    assert main(["--json", "config"]) == 0
    out = capsys.readouterr().out
    for secret in ("s3cr3t", "AKIAEXAMPLE", "hunter2", "zzz"):
        assert secret not in out
    data = json.loads(out)
    assert data["store"]["name"] == "team" and data["store"]["options"]["secret"] == "***"
    assert data["registry"]["uri"] == "mysql+pymysql://root:***@127.0.0.1/mlflow"
    assert data["stores"]["laptop"]["url"] == str(tmp_path / "data" / "store")
    assert data["policies"] == {"retention": {"keep_last": 3}}
    assert main(["--store", "laptop", "config"]) == 0
    human = capsys.readouterr().out
    assert "laptop: " in human and "[--store]" in human and "s3cr3t" not in human


def test_config_errors_reach_the_cli_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "modelkeep.toml").write_text('default_store = "nope"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "default_store" in err[0] and "modelkeep.toml" in err[0]


def test_cli_store_option_takes_a_named_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    mlflow_sqlite_uri: str,
) -> None:
    import json

    from tests.backends import unique_name
    from tests.helpers import tensors, write_model

    (tmp_path / "modelkeep.toml").write_text(
        f'registry = "{mlflow_sqlite_uri}"\ndefault_store = "main"\n'
        '[stores.main]\nurl = "main-store"\n[stores.second]\nurl = "second-store"\n'
    )
    monkeypatch.chdir(tmp_path)
    src = write_model(tmp_path / "model", tensors(n=2), extra=False)
    name = unique_name()
    capsys.readouterr()
    assert main(["--json", "--store", "second", "register", name, str(src)]) == 0
    v = json.loads(capsys.readouterr().out)
    assert str(tmp_path / "second-store") in v["uri"]
    assert not (tmp_path / "main-store").exists()


def test_a_version_in_another_named_store_is_read_with_its_options(
    tmp_path: Path, moto_s3, mlflow_sqlite_uri: str,
) -> None:
    import modelkeep
    from tests.backends import unique_name
    from tests.helpers import tensors, tree_digest, write_model

    o = moto_s3.storage_options
    bucket = moto_s3.make_bucket()
    (tmp_path / "modelkeep.toml").write_text(
        f'registry = "{mlflow_sqlite_uri}"\ndefault_store = "local"\n'
        '[stores.local]\nurl = "local-store"\n'
        f'[stores.remote]\nurl = "s3://{bucket}/models"\n'
        f'[stores.remote.options]\nkey = "{o["key"]}"\nsecret = "{o["secret"]}"\n'
        f'client_kwargs = {{ endpoint_url = "{o["client_kwargs"]["endpoint_url"]}", '
        f'region_name = "{o["client_kwargs"]["region_name"]}" }}\n'
    )
    cfg = load_config(tmp_path)
    src = write_model(tmp_path / "model", tensors(n=2), extra=False)
    v = modelkeep.open(store="remote", config=cfg).register(unique_name(), src)
    assert v.uri.startswith(f"modelkeep://s3/{bucket}/models/@")
    # The default store is local; the version's URI points into "remote", read with its options.
    local = modelkeep.open(config=cfg)
    assert local.store.url == str(tmp_path / "local-store")
    out = local.pull(v.ref, tmp_path / "out")
    assert tree_digest(out) == tree_digest(src)
