"""Stage `prepare`: scale the raw data (data/raw.csv -> data/prepared.csv)."""

import csv
import pathlib

import yaml

scale = yaml.safe_load(open("params.yaml"))["prepare"]["scale"]
rows = list(csv.DictReader(open("data/raw.csv")))
out = pathlib.Path("data/prepared.csv")
with out.open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["x", "y"])
    for r in rows:
        w.writerow([float(r["x"]) * scale, float(r["y"]) * scale])
