"""The MLflow UI, in real headless Chromium, shows what modelkeep registered and opens a version's
files through modelkeep's artifact repository.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``make test``), driven by Playwright's
Python API; Playwright's own browser download is never used.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.models import infer_signature
from playwright.sync_api import Page, sync_playwright

import modelkeep
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


def test_ui_shows_versions_tags_and_opens_files(
    mlflow_server, browser_page: Page, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    url = mlflow_server.url
    keep = modelkeep.open(store=str(tmp_path / "store"), registry=url,
                          plugins=make_plugin_manager(entry_points=False))
    name = unique_name("ui")
    weights = write_model(tmp_path / "weights", tensors(n=2))
    v1 = keep.register(name, weights, tags={"lr": "3e-4"}, message="first weights")
    model = _pyfunc_with_signature(tmp_path / "pyfunc")
    v2 = keep.register(name, model, tags={"lr": "1e-4"}, aliases=["champion"])
    page = browser_page

    # The model's page lists both versions with their tags and the alias.
    page.goto(f"{url}/#/models/{name}")
    page.wait_for_selector("text=Version 2")
    body = _text(page)
    assert "Version 1" in body and "Version 2" in body
    assert "lr : 3e-4" in body and "lr : 1e-4" in body and "@ champion" in body
    assert "modelkeep.alias_history.champion" in body  # the model's own tags
    assert v1.snapshot_id in body and v2.snapshot_id in body  # modelkeep.snapshot tags
    assert "first weights" in body

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

    # Following the same kind of link for another file downloads it in the browser.
    link = f"{url}/model-versions/get-artifact?name={name}&version={v1.version}&path=config.json"
    with page.expect_download() as download:
        page.evaluate("link => { window.location.href = link; }", link)
    saved = Path(download.value.path())
    assert json.loads(saved.read_text()) == json.loads((weights / "config.json").read_text())
