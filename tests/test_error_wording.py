"""Errors speak the caller's language: a Python caller reads the API's keywords
(``overwrite=True``), a command-line user the flags (``--force``); and a missing key file's hint
says where the key is expected instead of suggesting a new key that could not open the store."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import modelkeep
from modelkeep.cli.main import main
from modelkeep.errors import (
    ConfigError,
    DestinationExistsError,
    Hint,
    NotFoundError,
    Option,
    StoreError,
)
from modelkeep.store.crypto import format_key, new_key
from tests.backends import unique_name
from tests.helpers import tensors, write_model

SRC = Path(__file__).resolve().parents[1] / "src" / "modelkeep"


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODELKEEP_KEY", "MODELKEEP_SIGNING_KEY", "MODELKEEP_TRUSTED_KEYS",
                "MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str
            ) -> tuple[list[str], modelkeep.Keep]:
    """The global options of a CLI run and the Keep a Python caller opens on the same store."""
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "store")
    return (["--store", store, "--registry", mlflow_sqlite_uri],
            modelkeep.open(store=store, registry=mlflow_sqlite_uri))


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(args) != 0
    [line] = capsys.readouterr().err.splitlines()
    return line


def test_a_hint_renders_keywords_for_python_and_flags_for_the_cli() -> None:
    err = DestinationExistsError("destination 'x' is not empty", hint=Hint(
        "pass {overwrite} to replace it", overwrite=Option(api="overwrite=True", cli="--force")))
    assert str(err) == "destination 'x' is not empty (pass overwrite=True to replace it)"
    assert err.hint == "pass overwrite=True to replace it"
    assert err.for_cli() == "destination 'x' is not empty (pass --force to replace it)"
    # A plain hint reads the same everywhere.
    plain = NotFoundError("no such thing", hint="check the name")
    assert plain.for_cli() == str(plain) == "no such thing (check the name)"
    with pytest.raises(KeyError):
        Hint("pass {force}")  # a field without its option fails where it is written


def test_pull_into_a_non_empty_folder(project: tuple[list[str], modelkeep.Keep], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    base, keep = project
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(DestinationExistsError) as exc:
        keep.pull(v.ref, dest)
    assert "overwrite=True" in str(exc.value) and "--force" not in str(exc.value)
    line = _cli_error([*base, "pull", v.ref, str(dest)], capsys)
    assert line.endswith("(choose an empty or new folder, or pass --force to replace it)")
    assert "overwrite" not in line
    assert (dest / "mine.txt").read_text() == "keep me"


def test_rollback_without_history(project: tuple[list[str], modelkeep.Keep], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    base, keep = project
    name = unique_name()
    keep.register(name, write_model(tmp_path / "m", tensors(n=2)), aliases=["prod"])
    with pytest.raises(NotFoundError) as exc:
        keep.rollback(name, "prod")
    assert exc.value.hint == (f"see its history with alias_history({name!r}), or pass "
                              "to=VERSION")
    line = _cli_error([*base, "rollback", name, "prod"], capsys)
    assert line.endswith(f"(see its history with `modelkeep log {name}`, or pass --to VERSION)")


def test_sync_to_itself(project: tuple[list[str], modelkeep.Keep],
                        capsys: pytest.CaptureFixture[str]) -> None:
    base, keep = project
    keep.store.ensure_initialized()
    with pytest.raises(StoreError) as exc:
        keep.sync(keep.store.url)
    assert exc.value.hint == "name another store with to=STORE"
    line = _cli_error([*base, "sync", "--to", keep.store.url], capsys)
    assert line.endswith("(name another store with --to STORE)")


# -- missing key files ----------------------------------------------------------------------------


def test_missing_key_file_of_an_encrypted_store(tmp_path: Path, mlflow_sqlite_uri: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "team.key"
    key.write_text(format_key(new_key()) + "\n")
    store = str(tmp_path / "store")
    options = {"key_file": str(key)}
    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri, store_options=options)
    keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)))
    key.rename(tmp_path / "elsewhere.key")

    with pytest.raises(ConfigError) as exc:
        modelkeep.open(store=store, registry=mlflow_sqlite_uri,
                       store_options=options).store.key_status()
    message = str(exc.value)
    assert f"cannot read the key file {str(key)!r}" in message
    assert "expects its key in that file (key_file in the store's options" in message
    assert "MODELKEEP_KEY" in message and "a new key will not open this store" in message
    assert "generate" not in message  # a new key cannot open it

    # The command line says the same, naming the setting the key comes from.
    (tmp_path / "modelkeep.toml").write_text(
        f'store = "{store}"\nregistry = "{mlflow_sqlite_uri}"\n\n[store_options]\n'
        f'key_file = "{key}"\n')
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["key", "status"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "expects its key in that file" in err and "generate" not in err


def test_missing_key_file_of_a_store_not_created_yet(tmp_path: Path) -> None:
    from modelkeep.store import Store

    key = tmp_path / "new.key"
    with pytest.raises(ConfigError) as exc:
        Store.open(str(tmp_path / "store"), {"key_file": str(key)}).ensure_initialized()
    assert exc.value.hint.endswith(f"create it with `modelkeep key generate {key}`")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_missing_signing_key_file(project: tuple[list[str], modelkeep.Keep], tmp_path: Path,
                                  mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    base, keep = project
    missing = tmp_path / "release"
    model = write_model(tmp_path / "m", tensors(n=2))
    signing = modelkeep.open(store=keep.store.url, registry=mlflow_sqlite_uri,
                             signing_key=missing)
    with pytest.raises(ConfigError) as exc:
        signing.register(unique_name(), model)
    assert f"signing key file {str(missing)!r} does not exist" in str(exc.value)
    assert exc.value.hint == ("the signing key is the file signing_key=, MODELKEEP_SIGNING_KEY "
                              "or the store option signing_key names: put the key back there, "
                              "or point the setting at it")
    monkeypatch.setenv("MODELKEEP_SIGNING_KEY", str(missing))
    line = _cli_error([*base, "register", unique_name(), str(model)], capsys)
    assert line.endswith("(the signing key is the file MODELKEEP_SIGNING_KEY or the store option "
                         "signing_key names: put the key back there, or point the setting at "
                         "it)")


def test_missing_trusted_key_file(project: tuple[list[str], modelkeep.Keep], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    base, keep = project
    missing = str(tmp_path / "alice.pub")
    with pytest.raises(ConfigError) as exc:
        keep.trusted_keys([missing])
    assert "trusted keys are the files trusted_keys= and" in exc.value.hint
    line = _cli_error([*base, "verify", "--require-signed", "--trusted-key", missing], capsys)
    assert "trusted keys are the files --trusted-key and MODELKEEP_TRUSTED_KEYS name" in line


# -- no flag in a hint below the command line -----------------------------------------------------


def _literal_text(node: ast.expr) -> str:
    """The literal text of a str or f-string expression (placeholders left out)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(v) for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp):
        return _literal_text(node.left) + _literal_text(node.right)
    return ""


def test_no_plain_hint_outside_the_cli_names_a_flag() -> None:
    """Below the command line a hint that names an option is a Hint with both spellings; a
    whole command in backticks (`modelkeep init --encrypt`) is the same for everyone."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg != "hint":
                    continue
                text = re.sub(r"`[^`]*`", "", _literal_text(kw.value))
                if re.search(r"(?<![\w-])--[a-z]", text):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: {text}")
    assert offenders == []
