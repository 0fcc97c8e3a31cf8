"""Pointer files: track, register moving a pointer forward, checkout after `git checkout`,
status, and git hooks installed beside DVC's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from modelkeep.cli.gitdvc_cmds import HOOK_BEGIN
from modelkeep.cli.main import main
from tests.backends import unique_name
from tests.gitrepos import commit, dvc, git, init_git, run_result
from tests.helpers import tensors, write_model


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_sqlite_uri: str) -> Path:
    """A git work tree with modelkeep initialised (local store in .modelkeep/, ignored)."""
    root = init_git(tmp_path / "repo")
    monkeypatch.chdir(root)
    for var in ("MODELKEEP_STORE", "MODELKEEP_REGISTRY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    assert main(["init", "--registry", mlflow_sqlite_uri]) == 0
    (root / ".gitignore").write_text("/.modelkeep\n")
    return root


def run_json(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> object:
    capsys.readouterr()
    assert main(["--json", *args]) == code
    return json.loads(capsys.readouterr().out)


def model_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_track_register_checkout(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name()
    target = write_model(repo / "models" / "llm", tensors(seed=1, n=3))
    v1_bytes = model_bytes(target)
    tracked = run_json(capsys, "track", name, "models/llm")
    assert tracked["version"] == 1 and tracked["kind"] == "folder"
    pointer = yaml.safe_load((repo / "models" / "llm.modelkeep").read_text())
    assert pointer["model"] == name and pointer["version"] == 1 and pointer["format"] == 1
    assert pointer["uri"].endswith(pointer["snapshot"])
    assert "/llm" in (repo / "models" / ".gitignore").read_text().splitlines()
    c1 = commit(repo, "model v1")
    assert "models/llm/" not in git(repo, "ls-files")  # the model stays out of git

    [state] = run_json(capsys, "status")
    assert state["status"] == "ok" and state["unchanged"] == 5

    write_model(target, tensors(seed=2, n=3))
    [state] = run_json(capsys, "status", code=1)
    assert state["status"] == "modified" and state["modified"] == ["model.safetensors",
                                                                   "tokenizer/vocab.txt"]
    v2 = run_json(capsys, "register", name, "models/llm")
    assert v2["version"] == 2
    # register moved the pointer beside the registered folder forward
    assert yaml.safe_load((repo / "models" / "llm.modelkeep").read_text())["version"] == 2
    v2_bytes = model_bytes(target)
    commit(repo, "model v2")

    git(repo, "checkout", "-q", c1)
    [state] = run_json(capsys, "status", code=1)
    assert state["version"] == 1 and state["status"] == "modified"
    [done] = run_json(capsys, "checkout")
    assert done["modified"] == ["model.safetensors", "tokenizer/vocab.txt"]
    assert done["unchanged"] == 3
    assert model_bytes(target) == v1_bytes
    assert os.stat(target / "run.sh").st_mode & 0o111

    # unchanged: nothing is written again
    before = (target / "model.safetensors").stat().st_mtime_ns
    [again] = run_json(capsys, "checkout", "models/llm")
    assert again["status"] == "ok" and again["unchanged"] == 5
    assert (target / "model.safetensors").stat().st_mtime_ns == before
    # digests are remembered in the git folder, so an unchanged file costs a stat next time
    cache = json.loads((repo / ".git" / "modelkeep" / "digests.json").read_text())
    [cached] = [v for k, v in cache.items() if k.endswith("/models/llm/model.safetensors")]
    shown = run_json(capsys, "show", f"{name}@1")
    [entry] = [f for f in shown["files"] if f["path"] == "model.safetensors"]
    assert cached[0] == entry["size"] and cached[3] == entry["digest"]

    git(repo, "checkout", "-q", "main")
    run_json(capsys, "checkout")
    assert model_bytes(target) == v2_bytes

    # a file not in the version is removed; a missing one is restored
    (target / "junk" / "deep").mkdir(parents=True)
    (target / "junk" / "deep" / "stray.bin").write_bytes(b"x" * 10)
    (target / "config.json").unlink()
    capsys.readouterr()
    assert main(["checkout"]) == 10  # stray.bin is in no stored version: refused
    assert (target / "junk" / "deep" / "stray.bin").exists()
    assert not (target / "config.json").exists()
    [forced] = run_json(capsys, "checkout", "--force")
    assert forced["extra"] == ["junk/deep/stray.bin"] and forced["missing"] == ["config.json"]
    assert model_bytes(target) == v2_bytes and not (target / "junk").exists()


def test_checkout_keeps_unregistered_work(repo: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    name = unique_name()
    target = write_model(repo / "m", tensors(n=2), extra=False)
    original = (target / "model.safetensors").read_bytes()
    run_json(capsys, "track", name, "m")
    (target / "model.safetensors").write_bytes(b"fresh, never registered")
    capsys.readouterr()
    assert main(["checkout"]) == 10
    assert "in no stored version" in capsys.readouterr().err
    assert (target / "model.safetensors").read_bytes() == b"fresh, never registered"
    assert main(["-q", "checkout", "--force"]) == 0
    assert (target / "model.safetensors").read_bytes() == original


def test_track_existing_version_into_missing_path(repo: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name()
    src = write_model(repo.parent / "elsewhere", tensors(n=2), extra=False)
    run_json(capsys, "register", name, str(src / "model.safetensors"))
    tracked = run_json(capsys, "track", f"{name}@1", "weights.safetensors")
    assert tracked["kind"] == "file"
    assert (repo / "weights.safetensors").read_bytes() == (src / "model.safetensors"
                                                           ).read_bytes()
    [state] = run_json(capsys, "status", "weights.safetensors")
    assert state["status"] == "ok"


def test_hooks_run_beside_dvc_hooks(repo: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "dvc-remote"))
    dvc(repo, "install")
    hooks = repo / ".git" / "hooks"
    dvc_post = (hooks / "post-checkout").read_text()
    assert "dvc" in dvc_post
    run_json(capsys, "install-hooks")
    run_json(capsys, "install-hooks")  # a second install replaces its block
    for hook in ("post-checkout", "pre-push"):
        text = (hooks / hook).read_text()
        assert text.count(HOOK_BEGIN) == 1 and "dvc git-hook" in text
        assert text.index(HOOK_BEGIN) < text.index("dvc git-hook")  # before DVC's exec
        assert os.access(hooks / hook, os.X_OK)
    assert "dvc" in (hooks / "pre-commit").read_text()  # DVC's other hook is untouched

    name = unique_name()
    target = write_model(repo / "model", tensors(seed=1, n=2), extra=False)
    v1 = (target / "model.safetensors").read_bytes()
    (repo / "data.csv").write_text("v1\n")
    dvc(repo, "add", "-q", "data.csv")
    run_json(capsys, "track", name, "model")
    c1 = commit(repo, "v1")

    write_model(target, tensors(seed=2, n=2), extra=False)
    run_json(capsys, "register", name, "model")
    (repo / "data.csv").write_text("v2\n")
    dvc(repo, "add", "-q", "data.csv")
    commit(repo, "v2")

    git(repo, "checkout", "-q", c1)  # post-checkout: modelkeep checkout, then dvc checkout
    assert (target / "model.safetensors").read_bytes() == v1
    assert (repo / "data.csv").read_text() == "v1\n"
    git(repo, "checkout", "-q", "main")

    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    git(repo, "push", "-q", "origin", "main")  # pre-push: every pointed version exists
    assert (tmp_path / "dvc-remote").is_dir()  # and DVC's pre-push pushed the data

    pointer = repo / "model.modelkeep"
    text = pointer.read_text().replace("version: 2", "version: 99")
    pointer.write_text(text)
    commit(repo, "points nowhere")
    refused = run_result(repo, "git", "push", "origin", "main")
    assert refused.returncode != 0 and "pointed version(s) missing" in refused.stderr
    assert git(repo, "rev-parse", "main").strip() != git(bare, "rev-parse", "main").strip()


def test_install_hooks_with_dvc_lines(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hooks = repo / ".git" / "hooks"
    (hooks / "post-checkout").write_text("#!/bin/sh\necho mine\n")  # a hook of the user's
    (hooks / "pre-push").unlink(missing_ok=True)
    written = run_json(capsys, "install-hooks", "--with-dvc")
    assert sorted(Path(p).name for p in written) == ["post-checkout", "pre-commit", "pre-push"]
    post = (hooks / "post-checkout").read_text().splitlines()
    assert post[0] == "#!/bin/sh" and post[1] == HOOK_BEGIN
    assert "echo mine" in post and post[-1] == "exec dvc git-hook post-checkout $@"
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\nexec dvc git-hook pre-commit $@\n"
    run_json(capsys, "install-hooks", "--with-dvc")
    assert (hooks / "post-checkout").read_text().splitlines() == post  # idempotent


def test_check_pointers_of_a_commit(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique_name()
    write_model(repo / "m", tensors(n=1), extra=False)
    run_json(capsys, "track", name, "m")
    good = commit(repo, "points at v1")
    pointer = repo / "m.modelkeep"
    pointer.write_text(pointer.read_text().replace("version: 1", "version: 7"))
    bad = commit(repo, "points at v7")
    git(repo, "checkout", "-q", good)  # the work tree is fine; the pushed commit is checked
    assert run_json(capsys, "check-pointers", "--rev", good) == []
    capsys.readouterr()
    assert main(["--json", "check-pointers", "--rev", bad]) == 3
    [problem] = json.loads(capsys.readouterr().out)
    assert problem["ref"] == f"{name}@7" and problem["path"].endswith("/m")
