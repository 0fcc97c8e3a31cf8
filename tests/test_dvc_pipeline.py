"""examples/dvc-pipeline: `dvc repro` registers a version once, carrying the stage's lineage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

import modelkeep
from modelkeep.hooks import make_plugin_manager
from tests.gitrepos import commit, dvc, init_git

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dvc-pipeline"


def test_dvc_repro_twice_registers_once(tmp_path: Path, mlflow_sqlite_uri: str) -> None:
    root = tmp_path / "pipe"
    shutil.copytree(EXAMPLE, root)
    init_git(root)
    dvc(root, "init", "-q")
    sha = commit(root, "pipeline")
    store = str(tmp_path / "store")
    env = {"MODELKEEP_STORE": store, "MODELKEEP_REGISTRY": mlflow_sqlite_uri}

    first = dvc(root, "repro", **env)
    assert "Running stage 'register'" in first
    registered = json.loads((root / "registered.json").read_text())
    assert registered["version"] == 1 and not registered["reused"]

    second = dvc(root, "repro", **env)
    assert "Running stage" not in second

    keep = modelkeep.open(store=store, registry=mlflow_sqlite_uri,
                          plugins=make_plugin_manager(entry_points=False))
    name = registered["name"]
    [version] = keep.versions(name)
    lineage = version.lineage
    assert lineage["git"]["commit"] == sha
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    stages = lineage["dvc"]["stages"]
    # the version carries this run's prepare and train entries: the data it was trained on
    # and the hash DVC recorded for the model it registered
    for stage in ("prepare", "train"):
        assert [(e["path"], e["md5"]) for e in stages[stage]["deps"]] == [
            (e["path"], e["md5"]) for e in lock[stage]["deps"]]
        assert [(e["path"], e["md5"]) for e in stages[stage]["outs"]] == [
            (e["path"], e["md5"]) for e in lock[stage]["outs"]]
    assert stages["train"]["params"] == {"params.yaml": {"train": {"hidden": 64, "seed": 7}}}
    assert lineage["dvc"]["params"]["prepare"] == {"scale": "0.5"}
    assert lineage["dvc"]["metrics"] == {"metrics.json": {"loss": "0.125", "rows": 4}}
    model_md5 = next(e["md5"] for e in lock["train"]["outs"] if e["path"] == "model")
    assert {e["path"]: e["md5"] for e in stages["train"]["outs"]}["model"] == model_md5
