"""Stage `prepare`: scale the raw data (data/raw.csv -> data/prepared.csv)."""

import csv
import pathlib

import yaml

scale = yaml.safe_load(pathlib.Path("params.yaml").read_text())["prepare"]["scale"]
rows = list(csv.DictReader(pathlib.Path("data/raw.csv").read_text().splitlines()))
out = pathlib.Path("data/prepared.csv")
with out.open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["x", "y"])
    for r in rows:
        w.writerow([float(r["x"]) * scale, float(r["y"]) * scale])
