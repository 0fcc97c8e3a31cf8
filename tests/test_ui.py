"""The MLflow UI, in real headless Chromium, shows what modelkeep registered (a version's summary,
its parents as links, the model's alias history as a table, who registered it) and opens a
version's files through modelkeep's artifact repository.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``make test``), driven by Playwright's
Python API; Playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.models import infer_signature
from playwright.sync_api import Page, sync_playwright

import modelkeep
from modelkeep.catalog.summary import SCAN_TEXT, human_bytes
from modelkeep.hooks import make_plugin_manager
from tests.backends import unique_name
from tests.helpers import tensors, write_model

pytestmark = pytest.mark.xdist_group("mlflow-servers")

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 90_000

MODEL_CODE = textwrap.dedent(
    """
    import mlflow
    from mlflow.pyfunc import PythonModel


    class Doubler(PythonModel):
        def predict(self, context, model_input, params=None):
            return [2 * x for x in model_input["x"]]


    mlflow.models.set_model(Doubler())
    """
)


@pytest.fixture(scope="module")
def browser_page():  # type: ignore[no-untyped-def]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _pyfunc_with_signature(folder: Path) -> Path:
    code = folder.parent / "doubler.py"
    code.write_text(MODEL_CODE)
    signature = infer_signature(pd.DataFrame({"feature_x": [1, 2]}), [2, 4])
    mlflow.pyfunc.save_model(str(folder), python_model=str(code), signature=signature,
                             pip_requirements=["mlflow"])
    return folder


def _text(page: Page) -> str:
    """The page's visible text, white space (non-breaking spaces too) folded to one space."""
    return " ".join(page.inner_text("body").split())


def _git_project(folder: Path) -> str:
    """A git work tree with a DVC-tracked data file, everything committed; its commit."""
    (folder / ".dvc").mkdir()
    (folder / ".dvc" / "config").write_text("")
    (folder / "train.csv.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 10\n  path: train.csv\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=ana", "-c", "user.email=ana@lab",
                               *args], cwd=folder, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "training code")
    return git("rev-parse", "HEAD")


def test_ui_shows_versions_tags_and_opens_files(
    mlflow_server, browser_page: Page, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = mlflow_server.url
    monkeypatch.setenv("MODELKEEP_AUTHOR", "ana@lab")
    pm = make_plugin_manager(entry_points=False)
    store = str(tmp_path / "store")
    # Over the server's REST API, as a team registers; and once into the server's SQLite file
    # directly, the only way MLflow's "Created by" (user_id) can be filled.
    keep = modelkeep.open(store=store, registry=url, plugins=pm)
    local = modelkeep.open(store=store, registry=mlflow_server.backend_store_uri, plugins=pm)
    name = unique_name("ui")
    weights = write_model(tmp_path / "weights", tensors(n=2))
    v1 = local.register(name, weights, tags={"lr": "3e-4"}, message="first weights")
    project = tmp_path / "project"
    project.mkdir()
    model = _pyfunc_with_signature(project / "pyfunc")
    commit = _git_project(project)
    v2 = keep.register(name, model, tags={"lr": "1e-4"}, aliases=["champion"],
                       parents=[v1.ref])
    page = browser_page

    # The model's page lists both versions with their tags, the alias, who registered the
    # one written through the file, and each version's description's first line.
    page.goto(f"{url}/#/models/{name}")
    page.wait_for_selector("text=Version 2")
    body = _text(page)
    assert "Version 1" in body and "Version 2" in body
    assert "lr : 3e-4" in body and "lr : 1e-4" in body and "@ champion" in body
    assert "modelkeep.alias_history.champion" in body  # the model's own tags
    assert v1.snapshot_id in body and v2.snapshot_id in body  # modelkeep.snapshot tags
    assert "first weights" in body
    assert "ana@lab" in body  # the "Created by" column
    # The alias history as a table in the model's description, newest change first.
    history = page.locator("table", has_text="Change")
    assert history.locator("th").all_inner_texts() == ["When", "Alias", "Change", "By"]
    cells = history.locator("tbody tr").first.locator("td").all_inner_texts()
    assert cells[1:] == ["champion", "set to version 2", "ana@lab"] and "UTC" in cells[0]
    assert "Aliases now: champion → version 2" in body

    # A version's page: its tags, and its schema, which the UI reads from the version's MLmodel
    # file through the server's get-artifact endpoint, served by modelkeep's repository.
    with page.expect_response(lambda r: "model-versions/get-artifact" in r.url
                              and "MLmodel" in r.url) as answer:
        page.goto(f"{url}/#/models/{name}/versions/{v2.version}")
    response = answer.value
    assert response.status == 200
    # The schema's input count comes from MLmodel alone.
    page.wait_for_function("document.body.innerText.includes('Inputs (1)')")
    assert page.request.get(response.url).body() == (model / "MLmodel").read_bytes()
    body = _text(page)
    assert "modelkeep.bytes_added" in body and v2.snapshot_id in body

    # The summary in its description, read without opening a tag: size and stored bytes in
    # human units, the ratios, lineage, scan, signature and how to load it.
    assert v2.stored_ratio is not None and v2.dedup_ratio is not None
    files = f"{len(v2.files)} files"
    assert f"Size {human_bytes(v2.size)} in {files} ({v2.size:,} bytes)" in body
    assert (f"{human_bytes(v2.bytes_stored or 0)} added, {v2.stored_ratio * 100:.1f}% of its "
            f"size: {v2.dedup_ratio * 100:.1f}% deduplicated") in body
    assert "compressed to" in body and re.search(r"\d\.\d (KiB|MiB)", body)
    assert f"Parents {v1.ref}" in body
    assert "Aliases champion since 20" in body
    assert f"Code git commit {commit[:12]} on " in body
    assert "Data DVC: train.csv.dvc md5 0123456789ab" in body
    assert f"Scan {SCAN_TEXT[v2.tags['modelkeep.scan']]}" in body
    assert "Signature not signed" in body
    assert "Registered by ana@lab at 20" in body
    assert (f"Load modelkeep fetch {v2.ref} (a read-only folder) · "
            f"modelkeep pull {v2.ref} DEST · models:/{name}/{v2.version} in MLflow") in body
    assert "modelkeep:generated" not in body  # the block's markers are not shown

    # The parent is a link to its own version page (the UI opens it in a new tab).
    with page.context.expect_page() as opened:
        page.get_by_role("link", name=v1.ref, exact=True).click()
    parent = opened.value
    parent.set_default_timeout(TIMEOUT_MS)
    parent.wait_for_function("document.body.innerText.includes('first weights')")
    assert parent.url == f"{url}/#/models/{name}/versions/{v1.version}"
    parent_body = _text(parent)
    assert "Version 1" in parent_body and "Creator : ana@lab" in parent_body
    assert f"Size {human_bytes(v1.size)} in {len(v1.files)} files" in parent_body
    parent.close()

    # Following the same kind of link for another file downloads it in the browser.
    link = f"{url}/model-versions/get-artifact?name={name}&version={v1.version}&path=config.json"
    with page.expect_download() as download:
        page.evaluate("link => { window.location.href = link; }", link)
    saved = Path(download.value.path())
    assert json.loads(saved.read_text()) == json.loads((weights / "config.json").read_text())
