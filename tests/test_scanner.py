"""The pickle scanner: malicious pickles are flagged by name, real checkpoints are not, nothing is
ever loaded, and a hostile file costs bounded work.

The malicious pickles here are written with ``pickle.dumps`` of an object whose ``__reduce__``
returns ``(os.system, ("echo pwned",))``; no test ever unpickles one.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import struct
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

import modelkeep
from modelkeep.cli.main import main
from modelkeep.errors import VetoError
from modelkeep.hooks import Finding, PluginManager, hookimpl, make_plugin_manager
from modelkeep.plugins import scanner
from modelkeep.plugins.scanner import (
    CODE_FILE,
    CODE_LIMIT,
    CODE_MALFORMED,
    CODE_UNSAFE,
    scan_file,
    scan_version,
)
from tests.backends import Backend, make_backend, unique_name
from tests.helpers import tensors, write_model


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def evil_pickle(protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    return pickle.dumps({"weights": [1, 2, 3], "payload": _Evil()}, protocol=protocol)


def _scan(path: Path, name: str | None = None) -> list[Finding]:
    return scan_file(name or path.name, lambda: open(path, "rb", buffering=0)).findings()


def _codes(findings: Sequence[Finding]) -> set[str]:
    return {f.code for f in findings}


def _unsafe(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.code == CODE_UNSAFE]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_pickle_is_flagged_naming_os_system(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(evil_pickle(protocol))
    findings = _scan(path)
    [unsafe] = _unsafe(findings)
    assert unsafe.severity == "warning" and unsafe.scanner == scanner.SCANNER
    assert "os.system" in unsafe.message and unsafe.names == ("os.system",)
    assert CODE_FILE in _codes(findings)


def test_malicious_pickle_inside_a_torch_save_zip(tmp_path: Path) -> None:
    # torch.save's own zip layout (archive/data.pkl beside the tensor data), under a name that
    # says nothing about pickles.
    path = tmp_path / "checkpoint.weights"
    torch.save({"state": torch.nn.Linear(4, 2).state_dict(), "hook": _Evil()}, path)
    assert path.read_bytes()[:4] == b"PK\x03\x04"
    [unsafe] = _unsafe(_scan(path))
    assert "os.system" in unsafe.message and "data.pkl" not in unsafe.names


def test_malicious_pickle_in_a_hand_made_zip(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data.pkl", evil_pickle(2))
    assert [f.names for f in _unsafe(_scan(path))] == [("os.system",)]


def test_stack_global_operands_are_followed_through_the_memo(tmp_path: Path) -> None:
    # Strings memoised, popped, decoys pushed, then fetched back: only replaying the stack finds
    # that STACK_GLOBAL imports os.system and not the last two strings seen ("x", "y").
    crafted = (b"\x80\x04" b"\x8c\x02os\x94" b"0" b"\x8c\x06system\x94" b"0"
               b"\x8c\x01x\x8c\x01y" b"0" b"0"
               b"h\x00h\x01\x93" b"\x8c\x04echo\x85R.")
    path = tmp_path / "crafted.pkl"
    path.write_bytes(crafted)
    assert [f.names for f in _unsafe(_scan(path))] == [("os.system",)]


def test_every_unsafe_callable_is_named(tmp_path: Path) -> None:
    import subprocess

    class Many:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (getattr, (subprocess.Popen, "wait"))

    blob = pickle.dumps([Many(), eval, exec, subprocess.Popen, __import__], protocol=4)
    path = tmp_path / "x.pickle"
    path.write_bytes(blob)
    [unsafe] = _unsafe(_scan(path))
    assert set(unsafe.names) == {"builtins.getattr", "builtins.eval", "builtins.exec",
                                 "subprocess.Popen", "builtins.__import__"}


def test_real_torch_state_dict_is_not_unsafe(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    zipped, legacy = tmp_path / "model.pt", tmp_path / "legacy.bin"
    torch.save(model.state_dict(), zipped)
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        findings = _scan(path)
        assert _codes(findings) == {CODE_FILE}, findings
        [info] = findings
        assert info.severity == "info"
        assert "torch._utils._rebuild_tensor_v2" in info.names
        assert "collections.OrderedDict" in info.names


def test_safetensors_and_plain_files_are_never_flagged(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m", tensors(n=3))
    # A safetensors header length of 0x0380 starts the file with bytes that look like pickle
    # protocol 3; the name decides.
    (model / "odd.safetensors").write_bytes(struct.pack("<Q", 0x0380) + b" " * 0x0380)
    # Raw .bin weights are not pickles (seeded: random bytes may start like a pickle header).
    (model / "weights.bin").write_bytes(random.Random(1).randbytes(4096))
    for path in model.rglob("*"):
        if path.is_file():
            assert _scan(path, path.relative_to(model).as_posix()) == [], path


def test_malformed_pickles_are_findings_not_crashes(tmp_path: Path) -> None:
    cases = {
        "truncated.pkl": evil_pickle(4)[:-20],
        # Seeded, so a failure names bytes that can be replayed.
        **{f"garbage-{seed}.pkl": b"\x80\x04" + random.Random(seed).randbytes(512)
           for seed in range(64)},
        "nothing-to-return.pkl": b"\x80\x04.",
        "mark-to-return.pkl": b"\x80\x04(.",
        "text.pt": b"this is not a pickle at all\n",
        "huge-length.pkl": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"abc",
        "underflow.pkl": b"\x80\x04\x93.",
        "damaged.ckpt": b"PK\x03\x04" + random.Random(3).randbytes(100),
    }
    for name, blob in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        started = time.monotonic()
        findings = _scan(path)
        assert time.monotonic() - started < 2, name
        assert CODE_FILE in _codes(findings), name
        assert _codes(findings) & {CODE_MALFORMED, CODE_LIMIT}, (name, findings)


def test_a_prefix_that_runs_code_is_reported_even_when_the_rest_is_malformed(
    tmp_path: Path
) -> None:
    # pickle.load runs the REDUCE before it meets the damage; the scanner names it.
    path = tmp_path / "x.pkl"
    path.write_bytes(evil_pickle(2)[:-1] + b"\xff\xff")
    findings = _scan(path)
    assert {CODE_UNSAFE, CODE_MALFORMED} <= _codes(findings)


def test_scan_limits_bound_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(list(range(50_000)), protocol=2))
    monkeypatch.setattr(scanner, "MAX_OPCODES", 1000)
    assert CODE_LIMIT in _codes(_scan(path))
    monkeypatch.setattr(scanner, "MAX_OPCODES", 10_000_000)
    monkeypatch.setattr(scanner, "MAX_SCAN_BYTES", 4096)
    findings = _scan(path)
    assert CODE_LIMIT in _codes(findings)
    assert "4096" not in findings[-1].message or "MiB" in findings[-1].message


# -- at register and from the store ----------------------------------------------------------------


@pytest.fixture
def pm() -> PluginManager:
    return make_plugin_manager(entry_points=False)


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str, pm: PluginManager) -> modelkeep.Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri, plugins=pm)


def test_register_records_the_scan_summary(keep: modelkeep.Keep, tmp_path: Path) -> None:
    clean = write_model(tmp_path / "clean", tensors(n=2))
    v = keep.register(unique_name(), clean)
    assert v.tags["modelkeep.scan"] == "clean" and "modelkeep.scan.unsafe" not in v.tags

    torchy = tmp_path / "torchy"
    torchy.mkdir()
    torch.save(torch.nn.Linear(3, 3).state_dict(), torchy / "model.pt")
    v = keep.register(unique_name(), torchy)
    assert v.tags["modelkeep.scan"] == "pickle"

    evil = write_model(tmp_path / "evil", tensors(n=2))
    (evil / "extra.pkl").write_bytes(evil_pickle())
    name = unique_name()
    v = keep.register(name, evil)
    assert v.tags["modelkeep.scan"] == "unsafe"
    assert v.tags["modelkeep.scan.unsafe"] == "os.system"
    assert v.user_tags == {}  # the summary is modelkeep's, not the user's
    # The summary is in the snapshot too, so a rebuilt registry has it.
    assert keep.snapshot(v.ref).tags["modelkeep.scan"] == "unsafe"


def test_a_caller_cannot_forge_the_scan_summary(keep: modelkeep.Keep, tmp_path: Path) -> None:
    from modelkeep.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="reserved"):
        keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2)),
                      tags={"modelkeep.scan": "clean"})


def test_a_validator_can_block_unsafe_pickles(keep: modelkeep.Keep, pm: PluginManager,
                                              tmp_path: Path) -> None:
    class NoUnsafePickles:
        @hookimpl
        def modelkeep_validate_version(self, findings: Sequence[Finding]) -> str | None:
            bad = [n for f in findings if f.code == CODE_UNSAFE for n in f.names]
            return f"unsafe pickle imports {', '.join(bad)}" if bad else None

    pm.register(NoUnsafePickles())
    evil = write_model(tmp_path / "evil", tensors(n=2), extra=False)
    (evil / "optimizer.pt").write_bytes(evil_pickle())
    name = unique_name()
    with pytest.raises(VetoError, match=r"unsafe pickle imports os\.system"):
        keep.register(name, evil)
    assert name not in keep.models()
    keep.register(name, write_model(tmp_path / "ok", tensors(n=2), extra=False))


@pytest.mark.parametrize("kind", ["local", "s3", "azure"])
def test_scan_version_reads_through_the_store(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    mlflow_sqlite_uri: str, tmp_path: Path
) -> None:
    backend: Backend = make_backend(kind, request, tmp_path_factory, mlflow_sqlite_uri)
    keep = backend.open()
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    torch.save({"sd": torch.nn.Linear(2, 2).state_dict(), "x": _Evil()}, src / "ckpt.pt")
    (src / "plain.pkl").write_bytes(pickle.dumps({"lr": 0.1}))
    name = unique_name()
    registered = keep.register(name, src, force=True)
    findings = scan_version(keep, registered.ref)
    by_path = {(f.path, f.code) for f in findings}
    assert by_path == {("ckpt.pt", CODE_FILE), ("ckpt.pt", CODE_UNSAFE),
                       ("plain.pkl", CODE_FILE)}
    [unsafe] = _unsafe(findings)
    assert unsafe.names == ("os.system",)
    # The same findings as a scan of the local files.
    local = [f for p in sorted(src.iterdir()) for f in _scan(p)]
    assert sorted(local, key=repr) == sorted(findings, key=repr)


def test_buffered_and_unbuffered_openers_agree(tmp_path: Path) -> None:
    blob = evil_pickle(5)
    path = tmp_path / "a.pkl"
    path.write_bytes(blob)
    assert (scan_file("a.pkl", lambda: io.BytesIO(blob)).findings()
            == _scan(path))


def test_legacy_torch_file_with_a_protocol_0_payload(tmp_path: Path) -> None:
    # torch.load unpickles all five pickles of a legacy file, whatever their protocol: a payload
    # in the fourth, without a protocol header, is found too.
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    parts = [magic, pickle.dumps(1001, protocol=2), pickle.dumps({}, protocol=2),
             pickle.dumps(_Evil(), protocol=0), pickle.dumps([], protocol=2)]
    path = tmp_path / "legacy.ckpt"
    path.write_bytes(b"".join(parts) + random.Random(2).randbytes(256))
    assert [f.names for f in _unsafe(_scan(path))] == [("os.system",)]


def test_policy_blocks_promoting_a_malicious_pickle(
    tmp_path: Path, mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The built-in scanner and the built-in policy plugin together, as installed: a version
    with a pickle that would call os.system registers (pickle = "allow" at register) but may not
    become production; a clean safetensors version may."""
    config = tmp_path / "modelkeep.toml"
    config.write_text('[policies."*".promote.production]\npickle = "block"\n')
    monkeypatch.setenv("MODELKEEP_CONFIG", str(config))
    monkeypatch.setenv("MODELKEEP_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MODELKEEP_REGISTRY", mlflow_sqlite_uri)
    pm = make_plugin_manager(entry_points=False)
    keep = modelkeep.open(plugins=pm)
    name = unique_name()
    evil = write_model(tmp_path / "evil", tensors(n=2), extra=False)
    (evil / "optimizer.pt").write_bytes(evil_pickle())
    bad = keep.register(name, evil)
    with pytest.raises(VetoError, match=r"os\.system"):
        keep.set_alias(bad.ref, "production")
    assert main(["alias", bad.ref, "production"], plugins=pm) == 9
    err = capsys.readouterr().err
    assert "os.system" in err and len(err.strip().splitlines()) == 1
    assert "production" not in keep.get(bad.ref).aliases
    good = keep.register(name, write_model(tmp_path / "good", tensors(n=2, seed=3), extra=False))
    keep.set_alias(good.ref, "production")
    assert keep.get(f"{name}@production").version == good.version
