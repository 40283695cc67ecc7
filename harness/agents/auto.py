"""``python -m harness auto fit RUN_DIR --objective ... --slo-s ... --out policy.json``: a table
policy for the proxy's auto mode, fitted from a sweep.

RUN_DIR is a ``python -m harness run`` or ``python -m harness replay`` directory that ran the fixed
modes on the same tasks. Per task class (dataset) and network preset, the fit keeps the modes
whose task wall time meets the SLO and picks the one with the best value of the objective; when
none meets it, the fastest, and the cell says ``slo_met: false``. The file is what config.yaml's
``auto: {policy: table, table: policy.json}`` loads (proxy.policy.load_table); every cell keeps
the numbers it was chosen on, so the table can be read as well as used.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from proxy.config import MODES

from harness.agents import where
from harness.agents.results import read_rows

# objective -> (where.mode_result field, better)
OBJECTIVES = {"device_j_per_solved": ("device_j_per_solved", "min"),
              "device_j_per_task": ("device_j_per_task", "min"),
              "wall_s_p50": ("wall_s_p50", "min"),
              "accuracy": ("accuracy", "max"),
              "accuracy_per_j": ("accuracy_per_j", "max"),
              "cost_per_task": ("cost_per_task", "min")}
SLO_FIELDS = {"p50": "wall_s_p50", "p90": "wall_s_p90"}


def fit(rows: list[dict], objective: str, slo_s: float | None, slo_quantile: str = "p50",
        price: tuple[float, float] | None = None) -> dict:
    """{"table": {task: {network: cell}}, ...}: the mode per cell minimising (or maximising) the objective
    among the modes within the SLO."""
    field, sense = OBJECTIVES[objective]
    slo_field = SLO_FIELDS[slo_quantile]
    table: dict[str, dict] = {}
    for (dataset, _model, network), modes in where._groups([r for r in rows if r.get("mode") in MODES]).items():
        results = [where.mode_result(m, modes[m], price) for m in MODES if m in modes]
        measured = [r for r in results if r[field] is not None and r[slo_field] is not None]
        if not measured:
            continue
        within = [r for r in measured if slo_s is None or r[slo_field] <= slo_s]
        pool = within or [min(measured, key=lambda r: r[slo_field])]
        pick = (min if sense == "min" else max)(pool, key=lambda r: r[field])
        table.setdefault(str(dataset), {})[str(network)] = {
            "mode": pick["mode"], "value": pick[field], "slo_met": bool(within),
            "tasks": pick["tasks"], "accuracy": pick["accuracy"],
            "candidates": {r["mode"]: {objective: r[field], slo_field: r[slo_field]} for r in measured}}
    return {"objective": objective, "sense": sense, "slo_s": slo_s, "slo_quantile": slo_quantile, "table": table}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness auto", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a table policy (task class x network -> mode) from a sweep's results")
    f.add_argument("run_dir", help="harness run or replay directory (results.jsonl)")
    f.add_argument("--objective", choices=sorted(OBJECTIVES), default="device_j_per_solved")
    f.add_argument("--slo-s", type=float, default=None, help="task wall time limit, seconds (default: none)")
    f.add_argument("--slo-quantile", choices=sorted(SLO_FIELDS), default="p50")
    f.add_argument("--cloud-price", default=None, help="IN,OUT USD per million tokens (for cost_per_task)")
    f.add_argument("--out", required=True, help="policy file to write (JSON)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = Path(args.run_dir)
    rows = read_rows(path / "results.jsonl" if path.is_dir() else path)
    price = tuple(float(x) for x in args.cloud_price.split(",")) if args.cloud_price else None
    if args.objective == "cost_per_task" and price is None:
        raise SystemExit("auto fit: --objective cost_per_task needs --cloud-price IN,OUT")
    policy = fit(rows, args.objective, args.slo_s, args.slo_quantile, price)
    policy.update(source=str(path), fitted_at=time.time())
    if not policy["table"]:
        raise SystemExit(f"auto fit: no fixed-mode results with {args.objective} in {path}")
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(policy, indent=2))
    os.replace(tmp, args.out)
    for task, nets in policy["table"].items():
        for net, cell in nets.items():
            print(f"{task} on {net}: {cell['mode']} ({args.objective} {cell['value']:.3g}"
                  f"{'' if cell['slo_met'] else '; no mode met the SLO, fastest taken'})")
    print(f"wrote {args.out}")
    return 0
