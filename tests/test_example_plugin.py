"""The example plugin in examples/plugins/approval, installed with pip (into a folder of the
test's own), found through its entry point and vetoing a promotion in front of a CLI user; and
``policy check --alias`` asking it exactly what ``alias`` asks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.backends import unique_name
from tests.helpers import tensors, write_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where the example plugin is installed for the subprocesses: nowhere extra when this
    environment already has it, else a pip --target folder of its own (it is an example, so the
    environment every user gets does not install it)."""
    # Entry points of installed distributions only: once another test has put the example's
    # src/ on sys.path, a build's egg-info there is visible to this process but not to the
    # subprocesses.
    examples = ROOT / "examples"
    names = {ep.name for ep in metadata.entry_points(group="modelkeep")
             if ep.dist is None or not Path(str(ep.dist.locate_file(""))).resolve()
             .is_relative_to(examples)}
    if "approval" in names:
        return ""
    target = tmp_path_factory.mktemp("approval-plugin")
    # Built from a copy: an in-tree build writes build/ and an egg-info into the example's
    # folder, which other tests in other workers import from at the same time.
    source = tmp_path_factory.mktemp("approval-source") / "approval"
    shutil.copytree(ROOT / "examples/plugins/approval", source,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(target)


@pytest.fixture
def cli(tmp_path: Path, mlflow_sqlite_uri: str, installed: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELKEEP_", "MLFLOW_"))}
    env.update(MODELKEEP_STORE=str(tmp_path / "store"), MODELKEEP_REGISTRY=mlflow_sqlite_uri)
    if installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (installed, env.get("PYTHONPATH")) if p)

    def run(*args: str, plugins: str = "approval") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelkeep", *args], cwd=tmp_path,
                              env={**env, "MODELKEEP_PLUGINS": plugins},
                              capture_output=True, text=True, timeout=120)

    return run


def test_discovered_through_its_entry_point(cli) -> None:
    out = cli("--json", "plugins")
    assert out.returncode == 0, out.stderr
    [plugin] = [p for p in json.loads(out.stdout) if p["name"] == "approval"]
    assert plugin["origin"] == "entry point"
    assert plugin["distribution"] == "modelkeep-approval 0.1.0"
    assert plugin["hooks"] == ["modelkeep_before_alias_change", "modelkeep_cli_commands",
                               "modelkeep_collect_metadata"]
    # Left out of the selection, it does not load.
    out = cli("--json", "plugins", plugins="")
    assert "approval" not in {p["name"] for p in json.loads(out.stdout)}


def test_the_veto_reaches_the_cli_user(cli, tmp_path: Path) -> None:
    model = write_model(tmp_path / "model", tensors(n=2))
    name = unique_name()
    refused = cli("register", name, str(model), "--alias", "production")
    assert refused.returncode == 9
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: alias 'production' on the new version of {name} refused: 'production' needs "
        "an 'approved-by' tag; approve the version first (nothing was registered)"]
    assert cli("list", name).returncode == 3  # nothing was registered

    # Without the plugin enabled, nothing stops it.
    assert cli("--json", "register", name, str(model), "--alias", "production",
               plugins="").returncode == 0

    (model / "config.json").write_text("{}\n")
    ok = cli("--json", "register", name, str(model), "--alias", "production", "--alias",
             "candidate", "--tag", "approved-by=ana")
    assert ok.returncode == 0, ok.stderr
    v = json.loads(ok.stdout)
    assert v["version"] == 2 and v["aliases"] == ["candidate", "production"]
    assert v["tags"]["approval.status"] == "approved"  # the tag the plugin adds on register


def test_its_command_approves_a_version(cli, tmp_path: Path) -> None:
    model = write_model(tmp_path / "model", tensors(n=2))
    name = unique_name()
    v = json.loads(cli("--json", "register", name, str(model)).stdout)
    assert v["tags"]["approval.status"] == "pending"
    done = cli("approve", f"{name}@1", "--by", "ana")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{name}@1 approved by ana"
    shown = json.loads(cli("--json", "show", f"{name}@1").stdout)
    assert shown["tags"]["approved-by"] == "ana"
    # Identical content with an alias: checked against the now-approved version 1.
    again = json.loads(cli("--json", "register", name, str(model), "--alias", "production").stdout)
    assert again["reused"] is True and again["aliases"] == ["production"]


def test_policy_check_asks_what_alias_asks(cli, tmp_path: Path) -> None:
    name = unique_name()
    assert cli("-q", "register", name, str(write_model(tmp_path / "model", tensors(n=2)))
               ).returncode == 0
    refused = cli("alias", f"{name}@1", "production")
    assert refused.returncode == 9, refused.stderr
    check = cli("policy", "check", f"{name}@1", "--alias", "production")
    assert check.returncode == 9, check.stderr
    assert (f"{name}@1: promotion to 'production' refused by a plugin: 'production' needs an "
            "'approved-by' tag; approve the version first") in " ".join(check.stdout.split())
    assert f"no policy matches {name}" in check.stdout  # no [policies] table: only the plugin
    as_json = json.loads(cli("--json", "policy", "check", f"{name}@1", "--alias",
                             "production").stdout)
    assert as_json["passed"] is False and len(as_json["refusals"]) == 1
    # Not installed in the selection: nothing refuses, and the check says so too.
    assert cli("policy", "check", f"{name}@1", "--alias", "production",
               plugins="").returncode == 0
    assert cli("alias", f"{name}@1", "production", plugins="").returncode == 0
