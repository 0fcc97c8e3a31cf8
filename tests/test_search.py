"""``modelkeep search``: by tag, by metric threshold, ordered, limited, through each registry
adapter (SQL on the SQLite file, REST to an ``mlflow server``, MLflow's client, and a registry
without a search of its own), each returning exactly the expected versions."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import modelkeep
from modelkeep.cli.main import main
from modelkeep.errors import InvalidInputError, NotFoundError
from modelkeep.keep import Keep
from tests.helpers import tensors, write_model

pytestmark = pytest.mark.xdist_group("mlflow-servers")


class PlainRegistry:
    """A registry offering only the protocol's required methods (no ``search_versions``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.uri = inner.uri

    def __getattr__(self, attr: str) -> Any:
        if attr in ("search_versions", "models_tagged"):
            raise AttributeError(attr)
        return getattr(self._inner, attr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> dict[str, Any]:
    """Two models with tagged versions, registered once in a SQLite file and in the server."""
    root = tmp_path_factory.mktemp("search")
    src = write_model(root / "m", tensors(n=2, rows=8, cols=8), extra=False)
    team = f"nlp-{uuid.uuid4().hex[:8]}"
    a, b = f"a-{team}", f"b-{team}"
    rows = [  # (model, metrics, extra tags)
        (a, {"loss": "0.9", "acc": "0.50"}, {"team": team, "stage": "dev"}),
        (a, {"loss": "0.4", "acc": "0.81"}, {"team": team, "stage": "qa"}),
        (a, {"loss": "0.25", "acc": "0.79"}, {"team": team, "stage": "prod"}),
        (a, {}, {"team": team}),  # no metrics at all
        (b, {"loss": "0.3", "acc": "0.9"}, {"team": team, "stage": "qa"}),
        (b, {"loss": "0.1", "acc": "0.95"}, {"team": "other"}),
    ]
    keeps = {}
    for kind, uri in (("sqlite", f"sqlite:///{root / 'mlflow.db'}"),
                      ("server", str(mlflow_server.url))):
        keep = modelkeep.open(store=str(root / f"store-{kind}"), registry=uri)
        for model, metrics, tags in rows:
            keep.register(model, src, force=True,
                          tags={**tags, **{f"metric.{k}": v for k, v in metrics.items()}})
        keep.set_alias(f"{a}@3", "champion")
        keeps[kind] = keep
    return {"keeps": keeps, "root": root, "a": a, "b": b, "team": team}


@pytest.fixture(params=["sqlite", "server", "mlflow-client", "plain"])
def keep(request: pytest.FixtureRequest, world: dict[str, Any]) -> Keep:
    base: Keep = world["keeps"]["server" if request.param == "server" else "sqlite"]
    if request.param == "mlflow-client":
        from modelkeep.plugins.mlflow.registry import MlflowRegistry

        return Keep(base.store, MlflowRegistry(base.registry.uri), plugins=base.plugins)
    if request.param == "plain":
        return Keep(base.store, PlainRegistry(base.registry), plugins=base.plugins)  # type: ignore[arg-type]
    return base


def refs(found: list[modelkeep.ModelVersion]) -> list[str]:
    return [v.ref for v in found]


def test_search(keep: Keep, world: dict[str, Any]) -> None:
    a, b, team = world["a"], world["b"], world["team"]
    by_team = {"team": team}
    assert refs(keep.search(tags=by_team)) == [f"{a}@1", f"{a}@2", f"{a}@3", f"{a}@4", f"{b}@1"]
    assert refs(keep.search(a, tags={"stage": "qa"})) == [f"{a}@2"]
    assert refs(keep.search(tags={**by_team, "stage": "qa"})) == [f"{a}@2", f"{b}@1"]
    # Thresholds compare numbers, not text ("0.25" < "0.4" < "0.9"; 10 > 9 as numbers).
    assert refs(keep.search(tags=by_team, metrics=["loss<0.5"])) == [
        f"{a}@2", f"{a}@3", f"{b}@1"]
    assert refs(keep.search(tags=by_team, metrics=["loss<0.5", "metric.acc >= 0.8"])) == [
        f"{a}@2", f"{b}@1"]
    assert refs(keep.search(b, metrics=["acc==0.95"])) == [f"{b}@2"]
    assert refs(keep.search(a, metrics=["acc!=0.5"])) == [f"{a}@2", f"{a}@3"]
    # Ordering: by a metric (missing last), descending, with a limit; by a tag as text.
    assert refs(keep.search(tags=by_team, order_by="metric.loss")) == [
        f"{a}@3", f"{b}@1", f"{a}@2", f"{a}@1", f"{a}@4"]
    assert refs(keep.search(tags=by_team, order_by="metric.acc", desc=True, limit=2)) == [
        f"{b}@1", f"{a}@2"]
    assert refs(keep.search(a, order_by="tag.stage")) == [
        f"{a}@1", f"{a}@3", f"{a}@2", f"{a}@4"]
    assert refs(keep.search(a, limit=1)) == [f"{a}@1"]
    [champion] = keep.search(a, tags={"stage": "prod"})
    assert champion.aliases == ("champion",) and champion.files
    assert keep.search(a, metrics=["loss<0"]) == []


def test_search_refusals(keep: Keep) -> None:
    with pytest.raises(NotFoundError):
        keep.search(f"absent-{uuid.uuid4().hex[:8]}")
    for bad in ("loss", "loss<abc", "<3"):
        with pytest.raises(InvalidInputError):
            keep.search(metrics=[bad])
    with pytest.raises(InvalidInputError):
        keep.search(order_by="loss")


def test_search_command(world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    a, b, team = world["a"], world["b"], world["team"]
    keep = world["keeps"]["sqlite"]
    base = ["--store", keep.store.url, "--registry", keep.registry.uri]
    capsys.readouterr()
    assert main([*base, "search", "--json", "--tag", f"team={team}", "--metric", "loss<0.5",
                 "--order-by", "metric.loss", "--desc", "--limit", "2"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [v["ref"] for v in found] == [f"{a}@2", f"{b}@1"]
    assert main([*base, "--json", "show", f"{a}@2"]) == 0
    assert found[0] == json.loads(capsys.readouterr().out)  # the same object as show prints
    assert main([*base, "search", a, "--metric", "acc>0.8"]) == 0
    out = capsys.readouterr().out
    assert f"{a}@2" in out and "0.81" in out and f"{a}@1" not in out
    assert main([*base, "search", "--metric", "loss~1"]) == 2
    assert "invalid metric condition" in capsys.readouterr().err


def test_search_empty_registry(tmp_path: Path) -> None:
    keep = modelkeep.open(store=str(tmp_path / "s"), registry=f"sqlite:///{tmp_path / 'r.db'}")
    assert keep.search(tags={"x": "y"}) == []
