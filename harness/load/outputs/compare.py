"""``python -m harness load compare A.json B.json``: two runs side by side, benchmarks paired in
order, each metric as A, B and B's change against A."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.load.outputs.console import table

COMPARED = ("completed", "failed", "request_throughput", "request_goodput", "output_throughput",
            "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms",
            "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms")


def compare(a: dict, b: dict) -> str:
    parts = []
    for x, y in zip(a["benchmarks"], b["benchmarks"]):
        rows = []
        for key in COMPARED:
            va, vb = x.get(key), y.get(key)
            if va is None and vb is None:
                continue
            change = f"{(vb - va) / va * 100:+.1f}%" if va and vb is not None else "-"
            rows.append([key, va, vb, change])
        parts += [f"== {x['name']} vs {y['name']}", table(["metric", "A", "B", "B vs A"], rows)]
    if len(a["benchmarks"]) != len(b["benchmarks"]):
        parts.append(f"(A has {len(a['benchmarks'])} benchmarks, B {len(b['benchmarks'])}; compared the first "
                     f"{min(len(a['benchmarks']), len(b['benchmarks']))})")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness load compare", description="two runs side by side")
    p.add_argument("runs", nargs=2, metavar="RUN.json", help="files written by python -m harness load --out")
    a, b = (json.loads(Path(x).read_text()) for x in p.parse_args(argv).runs)
    print(compare(a, b))
    return 0
