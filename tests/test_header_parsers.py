"""The two safetensors header parsers give one answer: the numpy one (plain headers, as the
safetensors libraries write them) and the reference (``json.loads`` and docs/format.md §4.1.1),
on real headers and on every mutation of them; and the chunk units worked out on whole arrays
are those of the one-pass loop they replaced (the cut points are part of the format)."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from modelkeep.store import safetensors as sf
from modelkeep.store.chunking import (
    PACK_MAX,
    SMALL_TENSOR,
    _make_units,
    chunk_tags,
    packs,
    tensor_cuts,
)
from modelkeep.store.safetensors import Layout, Tensor

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _padded(raw: bytes) -> bytearray:
    return bytearray(raw + bytes(sf._PAD))


def _fast(raw: bytes, size: int) -> Layout | None:
    return sf._plain(_padded(raw), len(raw), size)


def _reference(raw: bytes, size: int, monkeypatch: pytest.MonkeyPatch) -> Layout | None:
    with monkeypatch.context() as m:
        m.setattr(sf, "PLAIN_MIN", 1 << 62)
        return sf._parse(_padded(raw), len(raw), size)


def _file(path: Path, tensors: dict[str, np.ndarray],
          metadata: dict[str, str] | None = None) -> bytes:
    save_file(tensors, str(path), metadata=metadata)
    return path.read_bytes()


def _header(blob: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", blob)
    return blob[8 : 8 + n]


def _same(a: Layout | None, b: Layout | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert a.header_end == b.header_end
    assert a.tensors == b.tensors
    assert a.metadata == b.metadata
    assert a.count == b.count == len(a.tensors)


def _mixed(rng: random.Random, count: int) -> dict[str, np.ndarray]:
    """Tensors of several dtypes and shapes: scalars, empties, small and large ones."""
    dtypes = [np.float32, np.float16, np.int64, np.uint8, np.float64, np.bool_]
    out = {}
    for i in range(count):
        kind = rng.random()
        if kind < 0.05:
            shape: tuple[int, ...] = ()
        elif kind < 0.1:
            shape = (0, rng.randint(1, 3))
        elif kind < 0.15:
            shape = (rng.randint(17_000, 40_000),)  # over SMALL_TENSOR for 4-byte types
        else:
            shape = tuple(rng.randint(1, 12) for _ in range(rng.randint(1, 4)))
        name = f"model.layers.{i}.{rng.choice(['w', 'bias', 'norm', 'x y'])}"
        out[name] = np.zeros(shape, dtype=rng.choice(dtypes))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_fast_parser_reads_what_the_reference_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    metadata = {"format": "pt", "note": 'a "quoted" value'} if seed % 2 else None
    blob = _file(tmp_path / "m.safetensors", _mixed(rng, rng.randint(1, 400)), metadata)
    raw = _header(blob)
    fast = _fast(raw, len(blob))
    assert fast is not None, "a header safetensors wrote is plain"
    ref = _reference(raw, len(blob), monkeypatch)
    assert ref is not None
    # What cutting makes of it is the same: cuts, dtypes and chunk keys (worked out from the
    # header's bytes, before the fast layout makes its tensors), then the tensors and packs.
    cuts = tensor_cuts(fast, len(blob))
    assert cuts == tensor_cuts(ref, len(blob))
    tags = chunk_tags(fast, cuts)
    ids = [key[1].id for _dtype, key in tags if key is not None]
    assert ids and fast._tensors is None
    assert tags == chunk_tags(ref, cuts)
    _same(fast, ref)
    assert packs(fast) == packs(ref)


def test_headers_out_of_file_order_sort_alike(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Entries listed in another order than their bytes, and tensors that tie on offsets.
    entries = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * (9 - i),
                                                                         4 * (10 - i)]}
               for i in range(10)}
    entries["empty.a"] = {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}
    entries["empty.b"] = {"dtype": "I8", "shape": [0], "data_offsets": [8, 8]}
    raw = json.dumps(entries, separators=(",", ":")).encode()
    size = 8 + len(raw) + 40
    fast = _fast(raw, size)
    assert fast is not None
    _same(fast, _reference(raw, size, monkeypatch))
    assert [t.name for t in fast.tensors][:4] == ["t9", "t8", "empty.a", "empty.b"]


@pytest.mark.parametrize("raw", [
    b'{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}',  # leading zero
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[00,4]}}',
    b'{"a":{"dtype":"F32","shape":[1,,2],"data_offsets":[0,4]}}',
    b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
    b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4000]}}',  # past the file's end
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1e1]}}',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"I8","shape":[1],'
    b'"data_offsets":[4,5]}}',  # a duplicate name: the last wins, in the first's place
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}',
    b'{"__metadata__":{"k":"v"},"__metadata__":{"dtype":"F32","shape":[1],'
    b'"data_offsets":[0,4]}}',
    b'{"__metadata__":[1],"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    b'{"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    b'{"a\\"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}\n',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],'
    b'"data_offsets":[2,6]}}',  # overlapping
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}',  # another key
    b'{"a":{"shape":[1],"dtype":"F32","data_offsets":[0,4]}}',  # keys in another order
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}}',
    b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,12345678901234567]}}',
    b'{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}',
    b'{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}   ',
] + [b'{"a":{"dtype":"F32","shape":[%s],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],'
     b'"data_offsets":[4,8]}}' % shape for shape in (
         b"1,", b",1", b"1,01", b"0", b"0,0", b"10,0", b"1024,1024,3", b"1024,,1024",
         b"1024,01", b"0,12345678", b"12345678,", b"1 ", b"123456789012,0", b"1e3")])
def test_unusual_headers_get_the_reference_answer(raw: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    size = 8 + len(raw) + 400
    with monkeypatch.context() as m:
        m.setattr(sf, "PLAIN_MIN", 0)
        either = sf._parse(_padded(raw), len(raw), size)
    _same(either, _reference(raw, size, monkeypatch))


def test_every_mutation_of_a_plain_header_parses_as_the_reference_parses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    tensors = {f"layers.{i}.w": np.zeros(rng.choice([(1,), (2, 3), (), (0,)]),
                                         dtype=rng.choice([np.float32, np.int8, np.float16]))
               for i in range(40)}
    blob = _file(tmp_path / "m.safetensors", tensors, {"format": "pt"})
    base = _header(blob)
    alphabet = b'0123456789,:[]{}" \\-.aeFI_'

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, len(base) - 1), st.sampled_from(alphabet),
                              st.sampled_from(["set", "insert", "delete"])),
                    min_size=1, max_size=3))
    def check(edits: list[tuple[int, int, str]]) -> None:
        raw = bytearray(base)
        for at, byte, how in edits:
            at = min(at, len(raw) - 1)
            if how == "set":
                raw[at] = byte
            elif how == "insert":
                raw.insert(at, byte)
            else:
                del raw[at]
        header = bytes(raw)
        size = 8 + len(header) + len(blob) - 8 - len(base)
        fast = _fast(header, size)
        if fast is not None:  # None: the reference decides, so any answer agrees
            _same(fast, _reference(header, size, monkeypatch))

    check()


def _loop_units(tensors: tuple[Tensor, ...]) -> list[tuple[int, int, str, list[str]]]:
    """The one-pass loop the array version replaced, kept as the specification."""
    units: list[tuple[int, int, str, list[str]]] = []
    members: list[str] = []
    u_start = u_end = 0
    u_dtype = ""
    packing = False
    for t in tensors:
        if t.end == t.start:
            continue
        small = t.end - t.start < SMALL_TENSOR
        if packing and small and t.dtype == u_dtype and t.start == u_end \
                and t.end - u_start <= PACK_MAX:
            members.append(t.name)
            u_end = t.end
            continue
        if members:
            units.append((u_start, u_end, u_dtype, members))
        u_start, u_end, u_dtype, members, packing = t.start, t.end, t.dtype, [t.name], small
    if members:
        units.append((u_start, u_end, u_dtype, members))
    return units


@pytest.mark.parametrize("seed", range(20))
def test_units_are_those_of_the_one_pass_loop(seed: int) -> None:
    rng = random.Random(seed)
    tensors = []
    pos = 0
    for i in range(rng.randint(1, 3000)):
        pos += rng.choice([0, 0, 0, 0, 4, 64])  # mostly adjacent, sometimes a gap
        n = rng.choice([0, 2, 4, 100, 4000, SMALL_TENSOR - 4, SMALL_TENSOR, 300_000])
        tensors.append(Tensor(f"t{i}", rng.choice(["F32", "F32", "F32", "BF16"]), (n,),
                              pos, pos + n))
        pos += n
    layout = Layout(0, tuple(tensors), {})
    got = [(s, e, d, [tensors[i].name for i in p.tolist()]) for s, e, d, p in
           _make_units(layout)]
    assert got == _loop_units(layout.tensors)


@pytest.mark.parametrize("shape", [b"", b"0", b"0,0", b"10,0", b"7,0,3", b"1024,1024,3",
                                   b"0,12345678", b"123456789012,0", b"99999999"])
def test_the_fast_parser_takes_every_shape_a_library_writes(
        shape: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (b'{"a":{"dtype":"F32","shape":[%s],"data_offsets":[0,4]},"b":{"dtype":"BF16",'
           b'"shape":[1],"data_offsets":[4,12345678]}}' % shape)
    size = 8 + len(raw) + 12345678
    fast = _fast(raw, size)
    assert fast is not None
    _same(fast, _reference(raw, size, monkeypatch))


def test_a_pack_read_by_the_fast_parser_is_stored_against_its_parent(tmp_path: Path) -> None:
    # Chunk keys of a header read by numpy find the parent's chunk of the same tensors: the
    # changed pack is stored as a delta, a small fraction of its size.
    from modelkeep.store import Snapshot, Store, scan_local, utc_now

    def version(name: str, changed: int | None) -> Path:
        values = np.arange(5000, dtype=np.float32)
        if changed is not None:
            values[changed] = -1.0
        (tmp_path / name).mkdir()
        save_file({f"layers.{i}.w": values[i : i + 1] for i in range(5000)},
                  str(tmp_path / name / "model.safetensors"))
        return tmp_path / name

    store = Store.open(str(tmp_path / "store"))
    files, _ = store.ingest(scan_local(version("v1", None)))
    parent = Snapshot(name="m", files=files, created=utc_now())
    store.save_snapshot(parent)
    raw = (tmp_path / "v1" / "model.safetensors").read_bytes()
    assert _fast(_header(raw), len(raw)) is not None  # the numpy parser read it
    _files, whole = store.ingest(scan_local(version("whole", 1234)))
    other = Store.open(str(tmp_path / "other"))
    other.ingest(scan_local(tmp_path / "v1"))
    _files, delta = other.ingest(scan_local(version("v2", 1234)), parent=parent)
    assert delta.bytes_added == whole.bytes_added == 5000 * 4  # the pack, nothing else
    assert delta.bytes_stored < whole.bytes_stored / 4
