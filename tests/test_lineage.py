"""Lineage capture on register (git and DVC, from real repositories), sources beyond local
folders (fsspec URLs, DVC-tracked paths at a git revision), and ``modelkeep lineage``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
import yaml

import modelkeep
from modelkeep.api import Keep
from modelkeep.cli.main import main
from modelkeep.hooks import make_plugin_manager
from modelkeep.plugins.git import git_lineage, strip_credentials
from tests.backends import unique_name
from tests.gitrepos import commit, dvc, git, head, init_git
from tests.helpers import tensors, write_model

TRAIN = """\
import json, pathlib, yaml
params = yaml.safe_load(open("params.yaml"))
rows = pathlib.Path("data/raw.csv").read_text().splitlines()
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/summary.txt").write_text(f"{len(rows)} rows, lr {params['lr']}\\n")
json.dump({"acc": 0.9, "loss": {"final": 0.25}, "rows": len(rows)}, open("metrics.json", "w"))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A git + DVC project: a `.dvc`-tracked CSV, a `train` stage run by `dvc repro`, params,
    metrics, a local DVC remote, a credentialed git remote URL, and a DVC-tracked model folder
    at two commits (``old`` and ``new``)."""
    base = tmp_path_factory.mktemp("lineage")
    root = init_git(base / "proj")
    dvc(root, "init", "-q")
    dvc(root, "remote", "add", "-d", "storage", str(base / "dvc-remote"))
    (root / "data").mkdir()
    (root / "data" / "raw.csv").write_text("a,b\n1,2\n3,4\n")
    (root / "params.yaml").write_text("lr: 0.001\nepochs: 3\nmodel:\n  layers: 2\n")
    (root / "train.py").write_text(TRAIN)
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  train:\n"
        f"    cmd: {sys.executable} train.py\n"
        "    deps: [data/raw.csv, train.py]\n"
        "    params: [lr]\n"
        "    outs: [out/summary.txt]\n"
        "    metrics:\n"
        "    - metrics.json:\n"
        "        cache: false\n"
    )
    (root / ".gitignore").write_text("/model\n/.modelkeep\n")
    write_model(root / "models" / "m", tensors(seed=1, n=2), extra=False)
    dvc(root, "add", "-q", "data/raw.csv", "models/m")
    dvc(root, "repro", "-q")
    git(root, "remote", "add", "origin", "https://user:s3cret@example.com/org/proj.git")
    old = commit(root, "first model")
    old_bytes = (root / "models" / "m" / "model.safetensors").read_bytes()
    write_model(root / "models" / "m", tensors(seed=2, n=2), extra=False)
    dvc(root, "add", "-q", "models/m")
    new = commit(root, "second model")
    return {"root": root, "old": old, "new": new, "old_bytes": old_bytes, "base": base}


@pytest.fixture
def keep(tmp_path: Path, mlflow_sqlite_uri: str) -> Keep:
    return modelkeep.open(store=str(tmp_path / "store"), registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))


def clone(project: dict[str, Any], dest: Path, *args: str) -> Path:
    git(dest.parent, "clone", "-q", *args, f"file://{project['root']}", str(dest))
    return dest


def test_lineage_fields_are_exact(project: dict[str, Any], keep: Keep) -> None:
    root = project["root"]
    model = write_model(root / "model", tensors(n=2))
    name = unique_name()
    mv = keep.register(name, model)

    g = mv.lineage["git"]
    assert g == {"status": "ok", "commit": head(root), "branch": "main", "detached": False,
                 "dirty": False, "remote": "https://example.com/org/proj.git",
                 "shallow": False, "path": "model"}

    d = mv.lineage["dvc"]
    assert d["status"] == "ok"
    assert d["remote_name"] == "storage" and d["remote"] == str(project["base"] / "dvc-remote")
    for dvc_file in ("data/raw.csv.dvc", "models/m.dvc"):
        [out] = yaml.safe_load((root / dvc_file).read_text())["outs"]
        [recorded] = d["files"][dvc_file]["outs"]
        assert recorded["md5"] == out["md5"] and recorded["size"] == out["size"]
        assert recorded["path"] == out["path"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["train"]
    stage = d["stages"]["train"]
    assert stage["cmd"] == lock["cmd"]
    assert [(e["path"], e["md5"], e["size"]) for e in stage["deps"]] == [
        (e["path"], e["md5"], e["size"]) for e in lock["deps"]]
    assert [(e["path"], e["md5"]) for e in stage["outs"]] == [
        (e["path"], e["md5"]) for e in lock["outs"]]
    assert stage["params"] == {"params.yaml": {"lr": "0.001"}}  # floats are kept as text
    assert d["params"] == {"lr": "0.001", "epochs": 3, "model": {"layers": 2}}
    assert d["metrics"] == {"metrics.json": {"acc": "0.9", "loss": {"final": "0.25"},
                                             "rows": 3}}

    # mirrored into registry tags, and stored in the snapshot itself
    tags = keep.registry.get_version(name, mv.version).tags
    assert tags["modelkeep.git.commit"] == head(root)
    assert tags["modelkeep.git.branch"] == "main"
    assert tags["modelkeep.git.dirty"] == "false"
    assert tags["modelkeep.git.remote"] == "https://example.com/org/proj.git"
    assert tags["modelkeep.dvc.remote"] == str(project["base"] / "dvc-remote")
    assert json.loads(tags["modelkeep.dvc.stages"])["train"]["cmd"] == lock["cmd"]
    assert keep.store.load_snapshot(mv.snapshot_id).lineage == mv.lineage


def test_capture_reads_files_and_never_imports_dvc(project: dict[str, Any]) -> None:
    # How long capture takes on a large repository belongs in bench/, not here; what keeps it
    # cheap is checked: a few git calls and YAML reads, never an import of DVC itself.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelkeep.plugins.dvc import dvc_lineage\n"
        "from modelkeep.plugins.git import git_lineage\n"
        f"root = Path({str(project['root'])!r})\n"
        "g, d = git_lineage(root), dvc_lineage(root)\n"
        "print(g['status'], d['status'], 'dvc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["ok", "ok", "False"]


def test_show_prints_lineage(project: dict[str, Any], tmp_path: Path, mlflow_sqlite_uri: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    root = project["root"]
    model = write_model(root / "model", tensors(n=2))
    name = unique_name()
    store = str(tmp_path / "store")
    opts = ["--store", store, "--registry", mlflow_sqlite_uri]
    assert main([*opts, "register", name, str(model)]) == 0
    capsys.readouterr()
    assert main([*opts, "show", name]) == 0
    out = capsys.readouterr().out
    assert f"git:      {head(root)} on main" in out
    assert "data/raw.csv md5:" in out and "stages train" in out
    assert main([*opts, "--json", "show", name]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lineage"]["git"]["commit"] == head(root)


def test_dirty_tree(project: dict[str, Any], tmp_path: Path, keep: Keep) -> None:
    repo = clone(project, tmp_path / "c")
    model = write_model(repo / "model", tensors(n=1), extra=False)
    assert keep.register(unique_name(), model).lineage["git"]["dirty"] is False  # untracked
    (repo / "train.py").write_text("print('changed')\n")
    mv = keep.register(unique_name(), model)
    assert mv.lineage["git"]["dirty"] is True
    assert mv.lineage["git"]["commit"] == project["new"]
    assert keep.registry.get_version(mv.name, mv.version).tags["modelkeep.git.dirty"] == "true"


def test_detached_head(project: dict[str, Any], tmp_path: Path, keep: Keep) -> None:
    repo = clone(project, tmp_path / "c")
    git(repo, "checkout", "-q", "--detach", project["old"])
    model = write_model(repo / "model", tensors(n=1), extra=False)
    g = keep.register(unique_name(), model).lineage["git"]
    assert g["commit"] == project["old"] and g["branch"] is None and g["detached"] is True
    assert g["remote"] == f"file://{project['root']}"


def test_shallow_clone(project: dict[str, Any], tmp_path: Path, keep: Keep) -> None:
    repo = clone(project, tmp_path / "c", "--depth", "1")
    model = write_model(repo / "model", tensors(n=1), extra=False)
    mv = keep.register(unique_name(), model)
    assert mv.lineage["git"]["shallow"] is True
    assert mv.lineage["git"]["commit"] == project["new"]
    # the .dvc files come with the clone: data lineage is complete even without history
    assert mv.lineage["dvc"]["files"]["models/m.dvc"]["outs"][0]["md5"]


def test_no_git_at_all(tmp_path: Path, keep: Keep, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    model = write_model(tmp_path / "plain" / "model", tensors(n=1), extra=False)
    mv = keep.register(unique_name(), model)
    assert mv.lineage == {"git": {"status": "not-a-repository"},
                          "dvc": {"status": "not-a-repository"}}
    tags = keep.registry.get_version(mv.name, mv.version).tags
    assert tags["modelkeep.git.status"] == "not-a-repository"
    assert "modelkeep.git.commit" not in tags
    # and without a git executable at all
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_lineage(model) == {"status": "git-missing"}


def test_git_repo_without_dvc(tmp_path: Path, keep: Keep) -> None:
    repo = init_git(tmp_path / "code")
    (repo / "train.py").write_text("print('train')\n")
    sha = commit(repo, "code")
    model = write_model(repo / "out", tensors(n=1), extra=False)
    mv = keep.register(unique_name(), model)
    assert mv.lineage["git"]["commit"] == sha and mv.lineage["git"]["remote"] is None
    assert mv.lineage["dvc"] == {"status": "not-a-repository"}


def test_git_repo_without_commits(tmp_path: Path, keep: Keep) -> None:
    repo = init_git(tmp_path / "fresh")
    model = write_model(repo / "out", tensors(n=1), extra=False)
    g = keep.register(unique_name(), model).lineage["git"]
    assert g["status"] == "ok" and g["commit"] is None and g["branch"] == "main"


def test_strip_credentials() -> None:
    assert strip_credentials("https://u:tok@host.example:8443/a/b.git?x=1") == (
        "https://host.example:8443/a/b.git")
    assert strip_credentials("git@github.com:org/repo.git") == "git@github.com:org/repo.git"
    assert strip_credentials("s3://bucket/prefix") == "s3://bucket/prefix"


# -- sources beyond local folders -----------------------------------------------------------------


def test_register_from_dvc_at_older_revision(project: dict[str, Any], tmp_path: Path,
                                             mlflow_sqlite_uri: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name()
    opts = ["--store", str(tmp_path / "store"), "--registry", mlflow_sqlite_uri, "--json"]
    capsys.readouterr()
    assert main([*opts, "register", name, "dvc://models/m", "--rev", project["old"],
                 "--repo", str(project["root"])]) == 0
    mv = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in mv["files"]] == ["model.safetensors"]
    assert mv["lineage"]["source"] == {"type": "dvc", "repo": str(project["root"]),
                                       "rev": project["old"], "commit": project["old"],
                                       "path": "models/m"}
    assert mv["lineage"]["git"]["commit"] == project["old"]
    # the data lineage is that of the old revision too, read from git's objects
    old_dvc = yaml.safe_load(git(project["root"], "show", f"{project['old']}:models/m.dvc"))
    recorded = mv["lineage"]["dvc"]["files"]["models/m.dvc"]["outs"][0]
    assert recorded["md5"] == old_dvc["outs"][0]["md5"]
    assert recorded["md5"] != yaml.safe_load(
        (project["root"] / "models" / "m.dvc").read_text())["outs"][0]["md5"]
    assert mv["lineage"]["dvc"]["stages"]["train"]["cmd"].endswith("train.py")
    assert mv["lineage"]["dvc"]["remote_name"] == "storage"
    assert main([*opts, "pull", f"{name}@1", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == project["old_bytes"]
    # and the newest revision gives the newest bytes
    assert main([*opts, "register", name, "models/m", "--rev", project["new"],
                 "--repo", str(project["root"])]) == 0
    assert main([*opts, "pull", f"{name}@2", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "model.safetensors").read_bytes() == (
        project["root"] / "models" / "m" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*opts, "register", name, "models/m", "--rev", "no-such-rev",
                 "--repo", str(project["root"])]) == 2
    assert "cannot open DVC repository" in capsys.readouterr().err


def test_register_from_memory_url(keep: Keep, tmp_path: Path) -> None:
    src = write_model(tmp_path / "src", tensors(n=2))
    fs = fsspec.filesystem("memory")
    prefix = f"/{unique_name()}"
    for path in src.rglob("*"):
        if path.is_file():
            fs.pipe(f"{prefix}/m/{path.relative_to(src).as_posix()}", path.read_bytes())
    name = unique_name()
    mv = keep.register(name, f"memory://{prefix}/m")
    assert sorted(f.path for f in mv.files) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    keep.pull(mv.ref, tmp_path / "out")
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert mv.lineage["git"]["status"] in ("ok", "not-a-repository")  # of the working folder


def test_register_from_s3_url(moto_s3: Any, keep: Keep, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              mlflow_sqlite_uri: str) -> None:
    bucket = moto_s3.make_bucket()
    fs = fsspec.filesystem("s3", **moto_s3.storage_options)
    src = write_model(tmp_path / "src", tensors(n=2), extra=False)
    fs.put(str(src / "model.safetensors"), f"{bucket}/ckpt/model.safetensors")
    name = unique_name()
    capsys.readouterr()
    assert main(["--store", str(tmp_path / "store"), "--registry", mlflow_sqlite_uri, "--json",
                 "register", name, f"s3://{bucket}/ckpt", "--source-options",
                 json.dumps(moto_s3.storage_options)]) == 0
    mv = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in mv["files"]] == ["model.safetensors"]
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    assert main(["--store", str(tmp_path / "store"), "--registry", mlflow_sqlite_uri,
                 "pull", f"{name}@1", str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_register_from_azure_url(azurite: Any, keep: Keep, tmp_path: Path) -> None:
    container = azurite.make_container()
    fs = fsspec.filesystem("az", **azurite.storage_options)
    src = write_model(tmp_path / "src", tensors(n=2))
    fs.put(str(src), f"{container}/run/ckpt", recursive=True)
    mv = keep.register(unique_name(), f"az://{container}/run/ckpt",
                       storage_options=azurite.storage_options)
    keep.pull(mv.ref, tmp_path / "out")
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / path.relative_to(src)).read_bytes() == path.read_bytes()


# -- modelkeep lineage ----------------------------------------------------------------------------


def test_lineage_command(project: dict[str, Any], tmp_path: Path, mlflow_sqlite_uri: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    root = project["root"]
    base_model = write_model(root / "model", tensors(seed=3, n=2), extra=False)
    name = unique_name()
    opts = ["--store", str(tmp_path / "store"), "--registry", mlflow_sqlite_uri]
    assert main([*opts, "register", name, str(base_model)]) == 0
    tuned = write_model(tmp_path / "tuned", tensors(seed=4, n=2), extra=False)
    assert main([*opts, "register", name, str(tuned), "--parent", f"{name}@1"]) == 0
    capsys.readouterr()

    assert main([*opts, "lineage", f"{name}@2"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"{name}@2 ")
    assert any(line.strip("│├└─ ").startswith(f"{name}@1 ") for line in lines)
    assert f"code: git {head(root)[:12]} on main" in text
    raw = yaml.safe_load((root / "data" / "raw.csv.dvc").read_text())["outs"][0]["md5"]
    assert f"data: data/raw.csv md5:{raw[:12]} (data/raw.csv.dvc)" in text
    assert "(stage train)" in text

    assert main([*opts, "lineage", f"{name}@2", "--format", "mermaid"]) == 0
    mer = capsys.readouterr().out
    assert mer.startswith("graph LR") and "-->|parent|" in mer and "-->|code|" in mer

    assert main([*opts, "lineage", f"{name}@2", "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph lineage {") and f'label="{name}@1"' in dot
    assert f'label="git {head(root)[:7]}"' in dot

    assert main([*opts, "--json", "lineage", f"{name}@2"]) == 0
    graph = json.loads(capsys.readouterr().out)
    assert graph["parents"][0]["ref"] == f"{name}@1"
    assert graph["parents"][0]["code"]["commit"] == head(root)

    assert main([*opts, "lineage", f"{name}@2", "--format", "svg"]) == 2
