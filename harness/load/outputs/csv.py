"""NAME.csv: one row per benchmark, its scalar metrics as columns (lists and dicts, such as
errors and per-request rows, stay in the JSON)."""
from __future__ import annotations

import csv
from pathlib import Path


def write(out: Path, name: str, doc: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    scalar = [{k: v for k, v in b.items() if not isinstance(v, (dict, list))} for b in doc["benchmarks"]]
    keys = list(dict.fromkeys(k for row in scalar for k in row))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(scalar)
    return path
