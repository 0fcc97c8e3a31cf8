"""Stage `train`: a deterministic toy model (model/model.safetensors) and its metrics."""

import csv
import json
import pathlib

import numpy as np
import yaml
from safetensors.numpy import save_file

params = yaml.safe_load(pathlib.Path("params.yaml").read_text())["train"]
prepared = pathlib.Path("data/prepared.csv").read_text().splitlines()
rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(prepared)]
rng = np.random.default_rng(params["seed"] + len(rows))
hidden = params["hidden"]
weights = {
    "encoder.weight": rng.standard_normal((hidden, 2)).astype(np.float16),
    "head.weight": rng.standard_normal((1, hidden)).astype(np.float16),
    "data.mean": np.array(rows, dtype=np.float32).mean(axis=0),
}
model = pathlib.Path("model")
model.mkdir(exist_ok=True)
save_file(weights, str(model / "model.safetensors"))
(model / "config.json").write_text(json.dumps({"hidden": hidden}) + "\n")
pathlib.Path("metrics.json").write_text(json.dumps({"loss": 0.125, "rows": len(rows)}))
