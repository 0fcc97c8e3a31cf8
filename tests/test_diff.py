"""``modelkeep diff``: unified diffs of changed text files, per-tensor changes (dtype, shape,
largest absolute difference read through the store) of safetensors files, and ``--stat``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.errors import ModelkeepError
from modelkeep.hooks import make_plugin_manager
from modelkeep.ops import diff as diff_mod
from tests.backends import unique_name


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "big": rng.standard_normal((300, 700)).astype(np.float32),  # 820 KiB: several chunks
        "half": rng.standard_normal((64, 64)).astype(np.float16),
        "bf": rng.standard_normal(256).astype(ml_dtypes.bfloat16),
        "steps": np.arange(40, dtype=np.int64),
        "gone": np.ones(8, dtype=np.float32),
        "same": rng.standard_normal(128).astype(np.float32),
        "grow": np.zeros((4, 4), dtype=np.float32),
        "retype": np.zeros(16, dtype=np.float32),
    }


@pytest.fixture
def two(tmp_path: Path, mlflow_sqlite_uri: str) -> tuple[Keep, str, dict[str, np.ndarray],
                                                         dict[str, np.ndarray]]:
    """Two versions of one model: text files edited, added and removed, a binary file and a
    large text file changed, and tensors changed in value, dtype and shape, added and
    removed."""
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    src = tmp_path / "m"
    src.mkdir()
    old = _tensors(0)
    save_file(old, str(src / "model.safetensors"))
    (src / "config.json").write_text('{\n  "hidden": 512,\n  "layers": 4\n}\n')
    (src / "notes.txt").write_text("first\n")
    (src / "blob.bin").write_bytes(os.urandom(4000))
    (src / "big.txt").write_text("line\n" * 220_000)  # 1.05 MiB: over the text limit
    keep.register(name, src)

    new = dict(old)
    new["big"] = old["big"].copy()
    new["big"][123, 456] += 2.5
    new["big"][0, 0] -= 0.25
    new["half"] = (old["half"] + np.float16(0.125)).astype(np.float16)
    new["bf"] = (old["bf"].astype(np.float32) * 2).astype(ml_dtypes.bfloat16)
    new["steps"] = old["steps"] * 3
    new["grow"] = np.zeros((4, 5), dtype=np.float32)
    new["retype"] = np.zeros(16, dtype=np.float16)
    del new["gone"]
    new["fresh"] = np.full(3, 7, dtype=np.int8)
    save_file(new, str(src / "model.safetensors"))
    (src / "config.json").write_text('{\n  "hidden": 1024,\n  "layers": 4\n}')
    (src / "notes.txt").unlink()
    (src / "added.txt").write_text("new file\n")
    (src / "blob.bin").write_bytes(os.urandom(4000))
    (src / "big.txt").write_text("line\n" * 219_999 + "last\n")
    keep.register(name, src)
    return keep, name, old, new


def test_text_files_get_a_unified_diff(two: tuple[Keep, str, dict[str, np.ndarray],
                                                  dict[str, np.ndarray]]) -> None:
    keep, name, _old, _new = two
    d = keep.diff(f"{name}@1", f"{name}@2")
    files = {f.path: f for f in d.files}
    assert sorted(files) == ["added.txt", "big.txt", "blob.bin", "config.json",
                             "model.safetensors", "notes.txt"]
    assert files["config.json"].text_diff == (
        "--- a/config.json\n+++ b/config.json\n@@ -1,4 +1,4 @@\n"
        ' {\n-  "hidden": 512,\n+  "hidden": 1024,\n   "layers": 4\n-}\n+}\n'
        "\\ No newline at end of file\n")
    assert files["added.txt"].status == "added" and files["added.txt"].text_diff == (
        "--- /dev/null\n+++ b/added.txt\n@@ -0,0 +1 @@\n+new file\n")
    assert files["notes.txt"].text_diff == (
        "--- a/notes.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-first\n")
    assert files["blob.bin"].text_diff is None  # not text
    assert files["big.txt"].text_diff is None  # over 1 MiB
    assert files["model.safetensors"].text_diff is None


def test_tensors_report_dtype_shape_and_largest_difference(
        two: tuple[Keep, str, dict[str, np.ndarray], dict[str, np.ndarray]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    keep, name, old, new = two
    # Small blocks: "big" is compared in 200 pieces, so block edges are crossed many times.
    monkeypatch.setattr(diff_mod, "BLOCK", 4096)
    [f] = [f for f in keep.diff(f"{name}@1", f"{name}@2").files if f.path == "model.safetensors"]
    t = f.tensors
    assert t is not None
    assert t.added == ("fresh",) and t.removed == ("gone",) and t.unchanged == 1  # "same"
    assert t.changed == ("bf", "big", "grow", "half", "retype", "steps")
    got = {d.name: d for d in t.details}
    assert [d.status for d in t.details] == ["changed"] * 6 + ["added", "removed"]

    def expected(key: str) -> float:
        a, b = old[key].astype(np.float64), new[key].astype(np.float64)
        return float(np.abs(a - b).max())

    for key in ("big", "half", "bf", "steps"):
        assert got[key].dtype_a == got[key].dtype_b and got[key].shape_a == old[key].shape
        assert got[key].max_abs_diff == expected(key), key
    assert got["big"].max_abs_diff == pytest.approx(2.5, abs=1e-3)
    assert got["steps"].max_abs_diff == 78.0
    assert (got["grow"].shape_a, got["grow"].shape_b) == ((4, 4), (4, 5))
    assert (got["retype"].dtype_a, got["retype"].dtype_b) == ("F32", "F16")
    assert got["grow"].max_abs_diff is None and got["retype"].max_abs_diff is None
    assert (got["fresh"].dtype_b, got["fresh"].shape_b, got["fresh"].dtype_a) == ("I8", (3,),
                                                                                  None)
    assert (got["gone"].dtype_a, got["gone"].shape_b) == ("F32", None)


def test_nan_on_one_side_is_reported(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    src = tmp_path / "m"
    src.mkdir()
    x = np.array([1.0, np.nan, np.inf, 4.0], dtype=np.float32)
    save_file({"x": x, "y": x.copy()}, str(src / "model.safetensors"))
    keep.register(name, src)
    y = x.copy()
    y[3] = np.nan
    x2 = x.copy()
    x2[0] = 1.5  # NaN and inf where they were: equal there
    save_file({"x": x2, "y": y}, str(src / "model.safetensors"))
    keep.register(name, src)
    [f] = keep.diff(f"{name}@1", f"{name}@2").files
    assert f.tensors is not None
    got = {d.name: d.max_abs_diff for d in f.tensors.details}
    assert got["x"] == 0.5 and got["y"] is not None and np.isnan(got["y"])
    assert [d.to_json()["max_abs_diff"] for d in f.tensors.details] == [0.5, "nan"]


def test_cli_diff_full_stat_and_json(
        two: tuple[Keep, str, dict[str, np.ndarray], dict[str, np.ndarray]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    keep, name, _old, _new = two
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--store", keep.store.url, "--registry", keep.registry.uri]
    a, b = f"{name}@1", f"{name}@2"
    capsys.readouterr()
    assert main([*args, "diff", a, b]) == 0
    out = capsys.readouterr().out
    assert "M config.json  (35 B -> 35 B)\n" in out
    assert '-  "hidden": 512,\n+  "hidden": 1024,\n' in out
    assert "    M big  F32 [300, 700]  max abs diff 2.5\n" in out
    assert "    M grow  F32 [4, 4] -> F32 [4, 5]\n" in out
    assert "    + fresh  I8 [3]\n    - gone  F32 [8]\n    1 tensor(s) unchanged\n" in out
    assert "M blob.bin  (3.9 KiB -> 3.9 KiB)\n    (not shown: not UTF-8 text, or over 1 MiB)" \
        in out

    assert main([*args, "diff", "--stat", a, b]) == 0
    stat = capsys.readouterr().out
    assert stat.splitlines() == [
        "+ added.txt          - -> 9 B",
        "M big.txt            1.0 MiB -> 1.0 MiB",
        "M blob.bin           3.9 KiB -> 3.9 KiB",
        "M config.json        35 B -> 35 B",
        "M model.safetensors  " + stat.splitlines()[4].split("  ", 1)[1].lstrip(),
        "- notes.txt          6 B -> -",
        "4 changed, 1 added, 1 removed, 0 unchanged file(s)"]
    assert stat.splitlines()[4].endswith(
        "tensors: 6 changed, 1 added, 1 removed, 1 unchanged")

    assert main([*args, "--json", "diff", "--stat", a, b]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["content"] is False
    assert all(f["text_diff"] is None for f in data["files"])
    [st] = [f for f in data["files"] if f["path"] == "model.safetensors"]
    assert all(t["max_abs_diff"] is None for t in st["tensors"]["details"])

    assert main([*args, "--json", "diff", a, b]) == 0
    data = json.loads(capsys.readouterr().out)
    [full] = [f for f in data["files"] if f["path"] == "model.safetensors"]
    big = next(t for t in full["tensors"]["details"] if t["name"] == "big")
    assert big.pop("max_abs_diff") == pytest.approx(2.5, abs=1e-6)
    assert big == {"name": "big", "status": "changed", "dtype_a": "F32", "dtype_b": "F32",
                   "shape_a": [300, 700], "shape_b": [300, 700]}
    assert full["tensors"]["changed"] == ["bf", "big", "grow", "half", "retype", "steps"]


def test_stat_reads_only_the_snapshots(
        two: tuple[Keep, str, dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    keep, name, _old, _new = two
    chunks = Path(keep.store.location.root) / "chunks"
    shutil.move(chunks, chunks.with_name("chunks-away"))
    try:
        d = keep.diff(f"{name}@1", f"{name}@2", content=False)
        assert len(d.files) == 6 and not d.content
        with pytest.raises(ModelkeepError):
            keep.diff(f"{name}@1", f"{name}@2")  # the full diff needs chunk bodies
    finally:
        shutil.move(chunks.with_name("chunks-away"), chunks)


def test_only_the_chunks_that_differ_are_read(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    """A 12 MiB tensor is stored as three 4 MiB pieces; a change in the last one is measured
    with the other two pieces gone from the store."""
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name()
    src = tmp_path / "m"
    src.mkdir()
    w = np.random.default_rng(3).standard_normal(3 << 20).astype(np.float32)
    save_file({"w": w}, str(src / "model.safetensors"))
    keep.register(name, src)
    w[-5] += 1.25
    save_file({"w": w}, str(src / "model.safetensors"))
    keep.register(name, src)
    [entry_a] = keep.snapshot(f"{name}@1").files
    [entry_b] = keep.snapshot(f"{name}@2").files
    shared = [cid for cid, _n in entry_a.chunks if cid in {c for c, _n in entry_b.chunks}]
    assert len(entry_b.chunks) == 4 and len(shared) == 3  # header (same length) and 2 pieces
    root = Path(keep.store.location.root) / "chunks"
    for cid in shared[1:]:  # the two unchanged pieces of "w"
        (root / cid[:2] / cid[2:]).rename(tmp_path / cid)
    [f] = keep.diff(f"{name}@1", f"{name}@2").files
    assert f.tensors is not None
    [d] = f.tensors.details
    assert d.max_abs_diff == pytest.approx(1.25, abs=1e-6)
