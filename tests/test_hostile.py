"""Hostile input: malformed snapshots, objects and paths from a store someone else controls, and
credentials that must never be shown.

The parsers are fuzzed with hypothesis (bounded: a few seconds each); the rest are crafted cases.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelkeep
from modelkeep.cli.main import main
from modelkeep.errors import (
    DestinationExistsError,
    IntegrityError,
    ModelkeepError,
    StoreError,
    UnsafePathError,
)
from modelkeep.store import Kind, codec, objects
from modelkeep.store.hashing import content_id
from modelkeep.store.materialize import safe_join
from modelkeep.store.snapshot import (
    FileEntry,
    Snapshot,
    check_relpath,
    file_digest,
    parse,
)
from tests.backends import unique_name
from tests.helpers import tensors, write_model

FUZZ = settings(max_examples=300, deadline=1000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(FUZZ, max_examples=100)  # examples that each build a whole snapshot


def _valid_snapshot() -> bytes:
    data = [b"first chunk", b"second"]
    chunks = tuple((content_id(d), len(d)) for d in data)
    files = (
        FileEntry("model/weights.bin", sum(n for _c, n in chunks), 0o644, file_digest(chunks),
                  chunks),
        FileEntry("run.sh", 0, 0o755, file_digest(()), ()),
    )
    return Snapshot(name="m", files=files, created="2026-01-01T00:00:00.000000Z",
                    author="a", message="hi", tags={"k": "v"},
                    lineage={"git": {"commit": "abc"}}).encode()


VALID = _valid_snapshot()


def _parse_or_refuse(payload: bytes) -> None:
    try:
        snap = parse(payload)
    except (IntegrityError, UnsafePathError):
        return
    for f in snap.files:  # whatever parses has only safe paths
        check_relpath(f.path)


# -- the snapshot parser --------------------------------------------------------------------------


def test_the_valid_snapshot_parses() -> None:
    assert parse(VALID).name == "m"


@FUZZ
@given(st.binary(max_size=2048))
def test_snapshot_parser_on_arbitrary_bytes(payload: bytes) -> None:
    _parse_or_refuse(payload)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_snapshot_parser_on_corrupted_snapshots(edits: list[tuple[int, int]]) -> None:
    payload = bytearray(VALID)
    for pos, value in edits:
        payload[pos] = value
    _parse_or_refuse(bytes(payload))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@FUZZ_SLOW
@given(st.dictionaries(st.sampled_from(["format", "type", "name", "created", "author", "message",
                                         "parents", "tags", "lineage", "size", "tree", "files"]),
                       _json))
def test_snapshot_parser_on_wrong_shapes(fields: dict) -> None:
    doc = json.loads(VALID)
    doc.update(fields)
    _parse_or_refuse(json.dumps(doc).encode())


@FUZZ_SLOW
@given(st.dictionaries(st.sampled_from(["path", "size", "mode", "digest", "chunks",
                                         "safetensors"]), _json, min_size=1))
def test_snapshot_parser_on_wrong_file_entries(fields: dict) -> None:
    doc = json.loads(VALID)
    doc["files"][0].update(fields)
    _parse_or_refuse(json.dumps(doc).encode())


@pytest.mark.parametrize("payload", [
    b"[" * 1_000_000,
    b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
    b'{"files": [' + b'"x",' * 500_000 + b'"x"]}',
])
def test_snapshot_parser_is_quick_on_pathological_json(payload: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(IntegrityError, match="malformed"):
        parse(payload)
    assert time.monotonic() - started < 2


def test_snapshot_parser_is_linear_in_deep_paths() -> None:
    # 1,000 files, each 1,000 folders deep: about a second; a check of "file under file" that
    # joins every prefix of every path took 30 s here (and grows with the square of the depth).
    deep = "/".join(["d"] * 1000)
    files = tuple(FileEntry(f"{deep}/f{i}", 0, 0o644, file_digest(()), ()) for i in range(1000))
    payload = Snapshot(name="m", files=files, created="2026-01-01T00:00:00.000000Z").encode()
    started = time.monotonic()
    assert len(parse(payload).files) == 1000
    assert time.monotonic() - started < 10


def test_snapshot_chunk_longer_than_the_format_allows() -> None:
    doc = json.loads(VALID)
    doc["files"][0]["chunks"][0][1] = (4 << 20) + 1
    with pytest.raises(IntegrityError, match="malformed chunk entry"):
        parse(json.dumps(doc).encode())


def test_snapshot_file_that_is_also_a_folder() -> None:
    entries = (FileEntry("a/b", 0, 0o644, file_digest(()), ()),
               FileEntry("a", 0, 0o644, file_digest(()), ()))
    with pytest.raises(IntegrityError, match="also holds other files"):
        parse(Snapshot(name="x", files=entries, created="2026-01-01T00:00:00.000000Z").encode())


# -- object framing -------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=64))
def test_object_header_parser_on_arbitrary_bytes(blob: bytes) -> None:
    for kind in Kind:
        try:
            payload = codec.decode(blob, kind, "object")
        except IntegrityError:
            continue
        assert len(payload) == len(blob) - codec.HEADER_SIZE


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
       st.integers(0, 2**64 - 1), st.binary(max_size=32))
def test_object_header_parser_on_well_framed_headers(
    version: int, kind: int, flags: int, reserved: int, length: int, payload: bytes
) -> None:
    blob = codec.HEADER.pack(codec.MAGIC, version, kind, flags, reserved, length) + payload
    try:
        out = codec.decode(blob, Kind.CHUNK, "chunk")
    except IntegrityError:
        return
    assert (version, kind) == (1, 1) and bytes(out) == payload
    if flags == codec.FLAG_CODED:  # a coded chunk: a known codec, shorter than what it decodes to
        assert reserved in codec.KNOWN_CODECS and 0 < len(payload) < length <= 4 << 20
    else:
        assert (flags, length) == (0, len(payload))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_oversized_objects_are_refused_before_they_are_read(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    mlflow_sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.backends import make_backend

    keep = make_backend(kind, request, tmp_path_factory, mlflow_sqlite_uri).open()
    keep.store.ensure_initialized()
    blob = b"x" * 5000
    oid = content_id(blob)
    keep.store.db.put(Kind.SNAPSHOT, oid, blob)
    monkeypatch.setitem(objects.MAX_OBJECT, Kind.SNAPSHOT, 4096)
    with pytest.raises(IntegrityError, match="larger than 4096 bytes"):
        keep.store.load_snapshot(oid)


# -- paths ----------------------------------------------------------------------------------------


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("ab./\\:\x00C~ ")), max_size=24))
def test_path_validation_never_lets_a_path_escape(path: str) -> None:
    root = Path("/srv/dest")
    try:
        checked = check_relpath(path)
    except UnsafePathError:
        return
    target = os.path.normpath(os.path.join(root, *checked.split("/")))
    assert target.startswith(str(root) + "/")
    assert checked == path and ".." not in checked.split("/") and "\\" not in checked


@FUZZ
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="/\\\x00",
                                               blacklist_categories=["Cs"]),
                        min_size=1, max_size=10).filter(lambda p: p not in (".", "..")),
                min_size=1, max_size=6))
def test_path_validation_accepts_ordinary_relative_paths(parts: list[str]) -> None:
    path = "/".join(parts)
    if len(path) >= 2 and path[1] == ":" and path[0].isascii() and path[0].isalpha():
        return  # a drive letter
    assert check_relpath(path) == path


def test_pull_refuses_a_destination_that_is_a_symlink(tmp_path: Path,
                                                      mlflow_sqlite_uri: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2), extra=False))
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DestinationExistsError):
        keep.pull(v.ref, tmp_path / "dest")
    assert list(outside.iterdir()) == []


def test_checkout_never_writes_through_a_symlinked_folder(tmp_path: Path,
                                                          mlflow_sqlite_uri: str) -> None:
    from modelkeep.plugins.pointers import track

    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    v = keep.register(unique_name(), src)
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        track(keep, v.ref, workspace)
    assert list(outside.iterdir()) == []
    assert not (workspace / "a.txt").exists()  # checked before anything was written


def test_safe_join_allows_real_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert safe_join(tmp_path, "a/b/c.bin") == tmp_path / "a" / "b" / "c.bin"
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "a/../../etc/passwd")


# -- credentials ----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SECRET = "hunter2-very-secret"


def test_registry_password_never_appears_in_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry = f"http://alice:{SECRET}@127.0.0.1:{_closed_port()}"
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=registry)
    assert SECRET not in repr(keep)
    with pytest.raises(ModelkeepError) as caught:
        keep.models()
    assert SECRET not in str(caught.value) and "alice:***@" in str(caught.value)
    code = main(["--json", "--store", str(tmp_path / "store"), "--registry", registry, "list"])
    out = capsys.readouterr()
    assert code != 0 and SECRET not in out.err + out.out and "***" in out.err


def test_store_credentials_never_appear_in_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    mlflow_sqlite_uri: str
) -> None:
    # A secret in the store URL itself is refused, without repeating it.
    with pytest.raises(StoreError) as caught:
        modelkeep.open(store=f"s3://AKIAEXAMPLE:{SECRET}@bucket/models",
                       registry=mlflow_sqlite_uri)
    assert SECRET not in str(caught.value)
    # Secrets in the storage options stay out of errors, --json output and `config`.
    options = {"key": "AKIAEXAMPLE", "secret": SECRET,
               "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                                 "region_name": "us-east-1"},
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    monkeypatch.setenv("MODELKEEP_STORE", "s3://bucket/models")
    monkeypatch.setenv("MODELKEEP_STORE_OPTIONS", json.dumps(options))
    monkeypatch.setenv("MODELKEEP_REGISTRY", mlflow_sqlite_uri)
    monkeypatch.chdir(tmp_path)
    src = write_model(tmp_path / "m", tensors(n=2), extra=False)
    for args in (["register", unique_name(), str(src)], ["config"], ["verify"]):
        capsys.readouterr()
        main(["--json", *args])
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err, args


def test_safetensors_header_parser_on_arbitrary_headers(tmp_path: Path) -> None:
    from modelkeep.store.safetensors import read_layout

    @FUZZ
    @given(st.binary(max_size=256), st.integers(0, 2**64 - 1))
    def check(header: bytes, declared: int) -> None:
        blob = struct.pack("<Q", declared) + header
        path = tmp_path / "x.safetensors"
        path.write_bytes(blob)
        with open(path, "rb") as f:
            read_layout(f, len(blob))  # a layout or None, never an exception

    check()


def test_verify_reports_a_deleted_chunk(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    from modelkeep.errors import NotFoundError

    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    v = keep.register(unique_name(), write_model(tmp_path / "m", tensors(n=2), extra=False))
    cid = v.files[0].chunks[1][0]
    os.unlink(keep.store.db.path(Kind.CHUNK, cid))
    report = keep.verify(v.ref)
    assert not report.ok and report.problems[0].object_id == cid
    assert "missing" in report.problems[0].reason
    with pytest.raises(NotFoundError, match="missing"):
        keep.pull(v.ref, tmp_path / "out")
    assert not (tmp_path / "out").exists()
