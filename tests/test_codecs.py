"""Chunk codecs and parent deltas: byte-identical round trips on every backend, the delta chain
bound, garbage collection and sync of delta-coded versions, damage, and hostile payloads."""

from __future__ import annotations

import json
import os
import struct
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkeep.errors import IntegrityError
from modelkeep.store import Kind, Snapshot, Store, scan_local, utc_now
from modelkeep.store import codec as framing
from modelkeep.store.coding import (
    PIECE,
    Codec,
    decode,
    decode_pieces,
    delta_width,
    encode,
    encode_delta,
)
from modelkeep.store.objects import preallocate
from tests.backends import Backend, make_backend, unique_name

BACKENDS = ["memory", "local", "s3", "azure"]
# Every safetensors dtype, with its element width.
DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
          "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mlflow_sqlite_uri: str) -> Backend:
    return make_backend(request.param, request, tmp_path_factory, mlflow_sqlite_uri)


def _values(dtype: str, count: int, rng: np.random.Generator) -> bytes:
    """*count* elements of *dtype* that look like weights (floats) or ids (integers)."""
    weights = rng.standard_normal(count).astype(np.float32) * 0.02
    if dtype == "F64":
        return weights.astype(np.float64).tobytes()
    if dtype == "F32":
        return weights.tobytes()
    if dtype == "F16":
        return weights.astype(np.float16).tobytes()
    if dtype == "BF16":
        return (weights.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    if dtype == "BOOL":
        return (rng.random(count) < 0.5).astype(np.uint8).tobytes()
    width = DTYPES[dtype]
    if dtype.startswith("F8"):
        return rng.integers(0, 256, count, dtype=np.uint8).tobytes()
    kind = "u" if dtype.startswith("U") else "i"
    return rng.integers(0, 1000, count).astype(f"<{kind}{width}").tobytes()


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> Path:
    """A safetensors file written from raw bytes, so every dtype can be made without a
    framework."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _dtype, _shape, data in tensors.values():
            f.write(data)
    return path


def every_dtype(folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for dtype in DTYPES:
        tensors[f"{dtype.lower()}.weight"] = (dtype, [256, 96], _values(dtype, 256 * 96, rng))
        tensors[f"{dtype.lower()}.bias"] = (dtype, [96], _values(dtype, 96, rng))
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps({"layers": [{"n": i} for i in range(200)]}))
    return folder


def fine_tune(root: Path, steps: int, size: int, seed: int) -> list[Path]:
    """Folders of *steps* checkpoints of one F32 tensor of *size* elements, each a small step
    from the one before (every element changes, as in training)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(size).astype(np.float32)
    folders = []
    for step in range(steps):
        weights = weights + np.float32(1e-5) * rng.standard_normal(size, np.float32)
        folders.append(write_safetensors(root / f"v{step}" / "model.safetensors",
                                         {"w": ("F32", [size], weights.tobytes())}).parent)
    return folders


def headers(store: Store) -> dict[str, framing.Header]:
    """{chunk id: its header} of every chunk object in *store*."""
    db = store.db
    out = {}
    for cid in db.iter_ids(Kind.CHUNK):
        blob = db.read_blob(db.path(Kind.CHUNK, cid), cid)
        out[cid] = framing.check_header(memoryview(blob)[:16], len(blob) - 16, Kind.CHUNK, cid,
                                        sealed=db.cipher is not None)
    return out


def same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("policy", ["auto", "zstd", "none"])
def test_every_dtype_round_trips_with_every_codec(backend: Backend, policy: str,
                                                  tmp_path: Path) -> None:
    keep = Backend(backend.name, backend.registry, backend.make_url,
                   {**backend.options, "codec": policy}).open()
    src = every_dtype(tmp_path / "m")
    v = keep.register(unique_name(), src)
    keep.pull(v.ref, tmp_path / "out")
    assert same_files(src, tmp_path / "out")
    assert keep.verify(v.ref).ok
    codecs = {h.codec for h in headers(keep.store).values()}
    expected = {"auto": {Codec.PLANES, Codec.ZSTD}, "zstd": {Codec.ZSTD}, "none": {0}}[policy]
    assert expected <= codecs and codecs <= expected | {0}


def test_parent_deltas_store_a_fine_tune_at_a_fraction(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    name = unique_name()
    rng = np.random.default_rng(1)
    base = rng.standard_normal((512, 512)).astype(np.float32) * 0.02
    versions = []
    for step in range(5):  # every tensor changes a little, as in training
        weights = base + np.float32(1e-4) * step * rng.standard_normal(base.shape, np.float32)
        tensors = {f"layer.{i}": ("F32", [512, 512], (weights + i).astype(np.float32).tobytes())
                   for i in range(2)}
        src = write_safetensors(tmp_path / f"v{step}" / "model.safetensors", tensors).parent
        versions.append((keep.register(name, src), src))
    heads = headers(keep.store)
    deltas = [h for h in heads.values() if h.codec == Codec.DELTA]
    assert deltas, "no chunk was stored as a delta"
    for v, src in versions:
        out = tmp_path / f"out{v.version}"
        keep.pull(v.ref, out)
        assert same_files(src, out)
    later = sum(v.bytes_added for v, _src in versions[1:])
    stored = keep.store.stored_bytes()
    first = versions[0][0].size
    # Four fine-tune steps cost far less than four whole copies.
    assert stored < first + 0.6 * later
    assert keep.verify().ok


def test_delta_chains_stop_at_their_depth_bound(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    store = Store.open(str(tmp_path / "store"))
    rng = np.random.default_rng(2)
    weights = rng.standard_normal(65536).astype(np.float32)
    parent = None
    depths = []
    for step in range(framing.MAX_DELTA_DEPTH + 3):
        weights = weights + np.float32(1e-5) * rng.standard_normal(65536, np.float32)
        src = write_safetensors(tmp_path / f"v{step}" / "model.safetensors",
                                {"w": ("F32", [65536], weights.tobytes())}).parent
        files, _stats = store.ingest(scan_local(src), parent=parent)
        from modelkeep.store.snapshot import Snapshot

        parent = Snapshot(name="m", files=files, created="2026-01-01T00:00:00.000000Z")
        store.save_snapshot(parent)
        cid = next(c for c, _n in files[0].chunks if _n == 65536 * 4)
        depths.append(store.db.get_base(cid)[1])
        assert bytes(store.db.get(Kind.CHUNK, cid)) == weights.tobytes()
    assert max(depths) == framing.MAX_DELTA_DEPTH
    # After the bound, the next version starts a new chain from a whole chunk.
    assert depths == [0, 1, 2, 3, 0, 1][: len(depths)]


def test_gc_keeps_the_bases_of_kept_deltas(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    name = unique_name()
    srcs = fine_tune(tmp_path, 2, 300_000, seed=3)
    for src in srcs:
        keep.register(name, src)
    assert any(h.codec == Codec.DELTA for h in headers(keep.store).values())
    keep.delete_version(f"{name}@1")
    for _ in range(2):  # hide, then delete: what only version 1 used is gone
        keep.gc(grace=timedelta(0))
    keep.pull(f"{name}@2", tmp_path / "out")
    assert same_files(srcs[1], tmp_path / "out")
    assert keep.verify().ok


def test_sync_of_delta_coded_versions(backend: Backend, tmp_path: Path) -> None:
    keep = backend.open()
    name = unique_name()
    srcs = fine_tune(tmp_path, 2, 200_000, seed=4)
    for src in srcs:
        keep.register(name, src)
    dest = Store.open(str(tmp_path / "replica"))
    sids = [keep.get(f"{name}@{n}").snapshot_id for n in (1, 2)]
    keep.store.sync_to(dest, sids)
    for sid, src in zip(sids, srcs, strict=True):
        dest.materialize(dest.load_snapshot(sid), tmp_path / f"out-{sid[:8]}")
        assert same_files(src, tmp_path / f"out-{sid[:8]}")
    assert dest.verify().ok


def test_encrypted_store_codes_before_sealing(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    import modelkeep
    from modelkeep.store.crypto import format_key, new_key

    key = tmp_path / "k"
    key.write_text(format_key(new_key()))
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          store_options={"key_file": str(key)})
    src = every_dtype(tmp_path / "m")
    name = unique_name()
    keep.register(name, src)
    changed = every_dtype(tmp_path / "m2", seed=0)
    data = bytearray((changed / "model.safetensors").read_bytes())
    data[-4:] = b"\x01\x02\x03\x04"
    (changed / "model.safetensors").write_bytes(bytes(data))
    keep.register(name, changed)
    heads = headers(keep.store)
    assert all(h.flags & framing.FLAG_SEALED for h in heads.values())
    assert any(h.coded for h in heads.values())
    for n, src_dir in ((1, src), (2, changed)):
        keep.pull(f"{name}@{n}", tmp_path / f"out{n}")
        assert same_files(src_dir, tmp_path / f"out{n}")


@pytest.mark.parametrize("what", ["planes", "zstd", "delta"])
def test_a_damaged_coded_chunk_fails_verify_and_pull(what: str, tmp_path: Path,
                                                     mlflow_sqlite_uri: str) -> None:
    import modelkeep

    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri)
    name = unique_name()
    rng = np.random.default_rng(5)
    weights = rng.standard_normal(100_000).astype(np.float32)
    # One version, or a second whose chunk is a delta of the first's (a damaged base would
    # damage what is read through it too).
    for step in range(2 if what == "delta" else 1):
        weights = weights + np.float32(1e-5) * rng.standard_normal(100_000, np.float32)
        src = write_safetensors(tmp_path / f"v{step}" / "model.safetensors",
                                {"w": ("F32", [100_000], weights.tobytes())}).parent
        (src / "notes.txt").write_text("lorem ipsum dolor sit amet\n" * 2000)
        keep.register(name, src)
    codec = {"planes": Codec.PLANES, "zstd": Codec.ZSTD, "delta": Codec.DELTA}[what]
    cid = next(c for c, h in headers(keep.store).items() if h.codec == codec)
    path = Path(keep.store.db.path(Kind.CHUNK, cid))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    os.chmod(path, 0o644)
    path.write_bytes(bytes(blob))
    report = keep.verify()
    assert not report.ok and {p.object_id for p in report.problems} == {cid}
    problem = report.problems[0]
    assert problem.path in ("model.safetensors", "notes.txt") and problem.chunk_index is not None
    v = 2 if what == "delta" else 1
    with pytest.raises(IntegrityError, match=cid[:12]):
        keep.pull(f"{name}@{v}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_small_tensors_travel_together(tmp_path: Path) -> None:
    count = 100_000
    tensors = {f"t{i:06d}": ("F32", [1], struct.pack("<f", i * 0.5)) for i in range(count)}
    src = write_safetensors(tmp_path / "m" / "model.safetensors", tensors).parent
    store = Store.open(str(tmp_path / "store"))
    files, _stats = store.ingest(scan_local(src))
    size = (src / "model.safetensors").stat().st_size
    objects = sum(1 for _ in store.db.iter_ids(Kind.CHUNK))
    assert objects < 1000
    assert store.stored_bytes() <= size
    # Every tensor still has an identity of its own (what diff compares), worked out from the
    # stored header and chunks: the snapshot does not copy a map of 100,000 tensors.
    assert files[0].tensors is None
    found = store.tensor_map(files[0], digests=True)
    assert found is not None and len(found) == count
    assert all(t.digest is not None for t in found)


def test_incompressible_and_text_chunks(tmp_path: Path) -> None:
    random = os.urandom(3 << 20)
    assert encode(random, None) is None  # stored plain: costs only the header
    text = ("".join(f"token_{i} {i * 7 % 1000}\n" for i in range(100_000))).encode()[: 4 << 20]
    got = encode(text, None)
    assert got is not None and got[0] == Codec.ZSTD
    assert len(got[1]) <= len(zstandard.ZstdCompressor(level=3).compress(text))
    src = tmp_path / "m"
    src.mkdir()
    (src / "random.bin").write_bytes(random)
    store = Store.open(str(tmp_path / "store"))
    _files, stats = store.ingest(scan_local(src))
    assert stats.bytes_stored <= len(random) * 1.001


# -- hostile payloads -------------------------------------------------------------------------

HOSTILE = settings(max_examples=300, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


@HOSTILE
@given(st.sampled_from([1, 2, 3, 9]), st.binary(max_size=256),
       st.integers(1, 4 << 20))
def test_decoders_refuse_hostile_payloads(codec: int, payload: bytes, raw_length: int) -> None:
    base = bytes(raw_length) if codec == Codec.DELTA else None
    try:
        out = decode(codec, payload, raw_length, "chunk", base)
    except IntegrityError:
        out = None
    try:  # the piece-by-piece decoder of a pull checks the same, before its first piece
        pieces = [len(p) for p in decode_pieces(codec, payload, raw_length, "chunk", base)]
    except IntegrityError:
        assert out is None
        return
    assert out is not None and len(out) == raw_length
    assert sum(pieces) == raw_length and max(pieces) <= max(PIECE, raw_length)


def _weights(dtype: str, size: int, seed: int) -> bytes:
    """*size* bytes (a whole number of elements) of weight-like values of *dtype*."""
    return _values(dtype, size // DTYPES[dtype], np.random.default_rng(seed))


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64", "I32", "U8"])
def test_pieces_reused_buffers_and_whole_decode_agree(dtype: str) -> None:
    # Several pieces and a short last one: 1 MiB plus a few elements.
    width = DTYPES[dtype]
    raw = _weights(dtype, (1 << 20) + 24 * width, 0)
    parent = _weights(dtype, len(raw), 1)
    coded = [c for c in [encode(raw, dtype)] if c is not None]
    coded.append((Codec.DELTA, bytes(encode_delta(raw, parent, "ab" * 32, 1,
                                                  delta_width(dtype, len(raw))))))
    for codec, payload in coded:
        base = parent if codec == Codec.DELTA else None
        assert bytes(decode(codec, payload, len(raw), "chunk", base)) == raw
        pieces = [bytes(p) for p in decode_pieces(codec, payload, len(raw), "chunk", base)]
        assert b"".join(pieces) == raw
        assert len(pieces) == 1 or len(pieces) == -(-len(raw) // PIECE)
    # A payload in a reused buffer is the same as a fresh one, until the next reusing call.
    if dtype in ("BF16", "F16", "F32", "F64"):
        fresh = encode(raw, dtype)
        again = encode(raw, dtype, reuse=True)
        assert fresh is not None and again is not None and bytes(fresh[1]) == bytes(again[1])
        delta = encode_delta(raw, parent, "ab" * 32, 1, width, reuse=True)
        assert bytes(delta) == bytes(coded[-1][1])
        assert bytes(again[1]) == bytes(fresh[1])  # the delta has a buffer of its own


@HOSTILE
@given(st.integers(1, 1 << 40))
def test_a_zstd_frame_claiming_a_huge_size_is_refused_unread(claimed: int) -> None:
    frame = bytearray(zstandard.ZstdCompressor(level=1).compress(b"x" * 1000))
    with pytest.raises(IntegrityError):
        decode(Codec.ZSTD, bytes(frame), claimed if claimed != 1000 else 999, "chunk")


@HOSTILE
@given(st.binary(min_size=1, max_size=4096), st.sampled_from(["F32", "BF16", "F16", "F64", None]))
def test_encode_then_decode_is_the_identity(raw: bytes, dtype: str | None) -> None:
    got = encode(raw, dtype)
    if got is None:
        return
    assert len(got[1]) < len(raw)
    assert bytes(decode(got[0], got[1], len(raw), "chunk")) == raw


def test_pulled_files_and_chunk_objects_are_allocated_before_they_are_written(
        tmp_path: Path) -> None:
    # Allocated at once instead of block by block (fallocate): a file only sized by ftruncate
    # would have no blocks until written.
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert preallocate(fd, 3 << 20)
        st_ = os.fstat(fd)
        assert st_.st_size == 3 << 20 and st_.st_blocks * 512 >= 3 << 20
    finally:
        os.close(fd)
    # A pull of plane-coded chunks into such files gives back the same bytes.
    rng = np.random.default_rng(7)
    bf16 = (rng.normal(0, 0.02, 3 << 20).astype(np.float32).view(np.uint32) >> 16)
    src = write_safetensors(tmp_path / "m" / "model.safetensors",
                            {"w": ("BF16", [3 << 20], bf16.astype(np.uint16).tobytes())}).parent
    store = Store.open(str(tmp_path / "store"))
    store.ensure_initialized()
    files, _stats = store.ingest(scan_local(str(src)))
    assert {h.codec for h in headers(store).values()} >= {Codec.PLANES}
    snapshot = Snapshot(name="m", files=files, created=utc_now())
    out = store.materialize(store.load_snapshot(store.save_snapshot(snapshot)), tmp_path / "out")
    assert same_files(src, out)


def test_literal_frames_are_alike_with_and_without_the_cffi_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The exponent plane is coded through zstd's CFFI backend (literal coding forced on, the
    match search skipped); without that backend the C backend's parameters give frames any
    zstd decoder reads the same, at the same ratio."""
    from modelkeep.store import coding

    fast = coding._Literals()
    assert fast._fallback is None  # this machine, like CI, has the backend: the fast path runs
    real_import = coding.importlib.import_module

    def no_cffi(name: str, *args: object) -> object:
        if name == "zstandard.backend_cffi":
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(coding.importlib, "import_module", no_cffi)
    slow = coding._Literals()
    assert slow._fallback is not None
    raw = _weights("BF16", 1 << 20, 3)
    plane = np.frombuffer(raw, dtype="<u2")
    top = (((plane << 1) | (plane >> 15)) >> 8).astype(np.uint8).tobytes()
    frames = [fast.compress(top), slow.compress(top), fast.compress(memoryview(top)[:1000])]
    for frame, n in zip(frames, (len(top), len(top), 1000), strict=True):
        assert bytes(decode(Codec.ZSTD, frame, n, "plane")) == top[:n]
    assert len(frames[0]) < 0.4 * len(top)
    assert abs(len(frames[0]) - len(frames[1])) < 0.01 * len(top)


@pytest.mark.parametrize("width", [2, 4, 8])
def test_stored_planes_after_a_coded_one_sit_right_after_its_frame(width: int) -> None:
    # Planes are split where they would be if all were stored; a delta whose low byte is
    # always zero codes plane 0 and stores the random planes above it, which must then move
    # up to follow plane 0's frame (docs/format.md §3.3: each record follows the last).
    rng = np.random.default_rng(width)
    count = (1 << 20) // width + 5
    utype = np.dtype(f"<u{width}")
    raw = (rng.integers(0, 1 << 62, count, dtype=np.uint64) & ~np.uint64(0xFF)).astype(utype)
    payload = memoryview(encode_delta(raw.tobytes(), bytes(len(raw) * width), "ab" * 32, 1,
                                      width))
    pos = struct.calcsize("<32sBBB")
    assert payload[pos - 1] == width
    methods = []
    for j in range(width):
        method, length = struct.unpack_from("<BI", payload, pos)
        pos += 5
        body = bytes(payload[pos : pos + length])
        pos += length
        plane = ((raw >> (8 * j)) & 0xFF).astype(np.uint8).tobytes()
        if method == 1:
            body = zstandard.ZstdDecompressor().decompress(body)
        assert body == plane, f"plane {j}"
        methods.append(method)
    assert pos == len(payload)
    assert methods[0] == 1 and 0 in methods[1:]  # coded, then at least one stored that moved
    assert bytes(decode(Codec.DELTA, payload, count * width, "chunk",
                        bytes(count * width))) == raw.tobytes()


def test_pull_read_ahead_is_a_hint_and_workers_fit_the_cores(tmp_path: Path) -> None:
    from modelkeep.store.objects import local_workers

    workers = local_workers()
    assert 1 <= workers <= min(4, len(os.sched_getaffinity(0)))
    store = Store.open(str(tmp_path / "store"))
    store.ensure_initialized()
    blob = b"weights" * 1000
    cid = store.db.object_id(blob)
    store.db.put(Kind.CHUNK, cid, blob)
    # A present object, a missing one and a store that is not local: none fails.
    store.db.prefetch(Kind.CHUNK, cid)
    store.db.prefetch(Kind.CHUNK, "0" * 64)
    remote = Store.open(f"memory://{unique_name('prefetch')}")
    remote.ensure_initialized()
    remote.db.prefetch(Kind.CHUNK, cid)
    assert bytes(store.db.get(Kind.CHUNK, cid)) == blob


def test_planes_with_repeats_keep_zstds_match_search() -> None:
    """Only exponent planes without repeats (trained weights) are coded without the match
    search: a counter stored as floats, and the high bits of a small fine-tune step, code as
    small as with it (without it they took 4-20x the bytes)."""
    counter = np.arange(1 << 20, dtype=np.float32).tobytes()
    got = encode(counter, "F32")
    assert got is not None and len(got[1]) < 0.03 * len(counter)
    rng = np.random.default_rng(7)
    weights = (rng.standard_normal(2 << 20) * 0.03).astype(np.float32)
    stepped = weights + rng.standard_normal(weights.shape).astype(np.float32) * 1e-5
    parent, child = ((w.view(np.uint32) >> 16).astype(np.uint16).tobytes()
                     for w in (weights, stepped))
    delta = encode_delta(child, parent, "ab" * 32, 1, 2)
    assert len(delta) < 0.12 * len(child)
    assert bytes(decode(Codec.DELTA, delta, len(child), "chunk", parent)) == child
    coded = encode(parent, "BF16")
    assert coded is not None and len(coded[1]) < 0.67 * len(parent)
