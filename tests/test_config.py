"""Settings: discovery by walking up, relative paths, environment overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkeep.config import load_config
from modelkeep.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MODELKEEP_STORE_OPTIONS",
                "MLFLOW_TRACKING_URI"):
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
