"""``python -m harness report RUN_DIR``: summarise ``results.jsonl`` per dataset x mode x
network preset x model into summary.json, summary.csv, report.md and PNG plots."""
from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from harness.agents import where
from harness.agents.passk import mean_pass_at_k, pass_at_k
from harness.agents.results import read_rows
from harness.common import provenance
from harness.common.stats import bootstrap_ci, cluster_bootstrap_ci, mean, pass_at_k_ci, percentile, std

GROUP = ("dataset", "mode", "network", "model")


def _vals(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def _calls(rows: list[dict], key: str, proxy: bool = False) -> list[float]:
    out = []
    for r in rows:
        for c in r.get("llm_calls") or []:
            src = (c.get("edgemeter") or {}) if proxy else c
            if src.get(key) is not None:
                out.append(float(src[key]))
    return out


def _rate(rows: list[dict], key: str, value=True) -> float | None:
    """Share of the rows that recorded ``key`` (None: not applicable) whose value is ``value``."""
    vals = [r[key] == value for r in rows if r.get(key) is not None]
    return mean([float(v) for v in vals]) if vals else None


def _task_clusters(rows: list[dict], key: str) -> list[list[float]]:
    """``key``'s values grouped by task: a task's samples and repeats resample together."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None:
            out[(r["dataset"], r["task_id"])].append(float(r[key]))
    return list(out.values())


def _ci(ci) -> list | None:
    return list(ci) if ci else None


def summarise(rows: list[dict], ks: list[int]) -> dict:
    passed = [float(bool(r["passed"])) for r in rows]
    solved = int(sum(passed))
    wall = _vals(rows, "wall_s")
    by_task: dict[tuple, list[bool]] = defaultdict(list)
    for r in rows:
        by_task[(r["dataset"], r["task_id"])].append(bool(r["passed"]))
    metered = [r for r in rows if r.get("energy_j") is not None]
    energy = _vals(metered, "energy_j")
    total_energy = sum(energy)
    net = _vals(rows, "net_delay_s")
    llm_wall = sum(_vals(rows, "llm_wall_s"))
    completion = sum(_vals(rows, "completion_tokens"))
    starts = [r["started_at"] for r in rows if r.get("started_at")]
    makespan = max((r["started_at"] + r["wall_s"] for r in rows), default=0) - min(starts, default=0)
    ci = cluster_bootstrap_ci(_task_clusters([{**r, "passed": float(bool(r["passed"]))} for r in rows], "passed"))
    counts = [(len(v), sum(v)) for v in by_task.values()]
    s = {
        "attempts": len(rows), "tasks": len(by_task), "solved": solved,
        "errors": sum(r.get("error") is not None for r in rows),
        "accuracy": mean(passed), "accuracy_std": std(passed),
        "accuracy_ci95": list(ci) if ci else None,
        "accuracy_ci95_attempts": _ci(bootstrap_ci(passed)),  # attempts as if independent: too narrow, for contrast
        **{f"pass@{k}": mean_pass_at_k(counts, k) for k in ks},
        **{f"pass@{k}_ci95": _ci(pass_at_k_ci(counts, k, pass_at_k)) for k in ks},
        "wall_s_mean": mean(wall), "wall_s_std": std(wall),
        "wall_s_ci95": _ci(cluster_bootstrap_ci(_task_clusters(rows, "wall_s"))),
        "wall_s_p50": percentile(wall, 50), "wall_s_p90": percentile(wall, 90), "wall_s_p99": percentile(wall, 99),
        "ttft_s_p50": percentile(_calls(rows, "ttft_s"), 50), "ttft_s_p95": percentile(_calls(rows, "ttft_s"), 95),
        "proxy_ttft_s_p50": percentile(_calls(rows, "ttft_s", proxy=True), 50),
        "itl_s_mean": mean(_calls(rows, "itl_mean_s")),
        "call_e2e_s_p50": percentile(_calls(rows, "e2e_s"), 50),
        "turns_mean": mean(_vals(rows, "turns")), "tool_calls_mean": mean(_vals(rows, "n_tool_calls")),
        "prompt_tokens_mean": mean(_vals(rows, "prompt_tokens")),
        "completion_tokens_mean": mean(_vals(rows, "completion_tokens")),
        "tokens_per_s": completion / llm_wall if llm_wall else None,
        "llm_s_mean": mean(_vals(rows, "llm_wall_s")), "tool_s_mean": mean(_vals(rows, "tool_wall_s")),
        "net_delay_s_mean": mean(net) if net else None,
        "net_share": sum(net) / sum(wall) if net and sum(wall) else None,
        "energy_j_mean": mean(energy) if energy else None, "energy_j_std": std(energy) if energy else None,
        "energy_j_ci95": _ci(cluster_bootstrap_ci(_task_clusters(metered, "energy_j"))),
        **{f"{part}_j_mean": mean(_vals(metered, f"{part}_j")) if metered else None
           for part in ("baseline", "compute", "tools", "radio")},
        "cloud_usd_mean": mean(_vals(metered, "cloud_usd")) if metered else None,
        "cloud_j_mean": mean(_vals(metered, "cloud_j")) if metered else None,
        "device_profile": ",".join(sorted({str(r["device_profile"]) for r in metered if r.get("device_profile")}))
                          or None,
        "energy_j_per_solved": (total_energy / sum(bool(r["passed"]) for r in metered)
                                if metered and any(r["passed"] for r in metered) else None),
        "solved_per_agent_hour": solved / (sum(wall) / 3600) if wall and sum(wall) else None,
        "solved_per_hour": solved / (makespan / 3600) if makespan > 0 else None,
        # how answers were read (docs/grading.md): GSM8K strict is ``accuracy``, flexible beside it
        "accuracy_flexible": _rate(rows, "passed_flexible"),
        "unparsed_rate": _rate(rows, "unparsed"), "truncated_rate": _rate(rows, "truncated"),
        "graded_last_code_rate": _rate([r for r in rows if r.get("grading_tests_run") is not None],  # code tasks
                                       "graded_source", "last_code"),
        "ran_grading_tests_rate": _rate(rows, "ran_grading_tests"),
        "reasoning_tokens_mean": mean(_vals(rows, "reasoning_tokens")) if _vals(rows, "reasoning_tokens") else None,
    }
    return s


def summaries(rows: list[dict], ks: list[int]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in GROUP)].append(r)
    return [{**dict(zip(GROUP, key)), **summarise(g, ks)}
            for key, g in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _label(s: dict, keys=("mode", "network", "model")) -> str:
    return " / ".join(str(s[k]) if s[k] is not None else "-" for k in keys)


def run_design(info: dict) -> list[str]:
    """How the run was paced and ordered, and a warning when accurate mode ran one repeat."""
    lines = []
    if info.get("run_mode") == "accurate" and info.get("repeats", (info.get("args") or {}).get("repeats")) == 1:
        lines.append("- **1 repeat per sample**: spread and CIs come from tasks alone, not from repeats "
                     "(accurate mode's default is 3)")
    if info.get("arrivals"):
        lines.append(f"- task arrivals: {info['arrivals']['described']}")
    if info.get("order"):
        lines.append(f"- order: {info['order']['design']}, seed {info['order']['seed']}")
    return lines


def markdown(sums: list[dict], info: dict, ks: list[int]) -> str:
    lines = ["# Edgemeter harness report", ""]
    if info.get("provenance"):  # the full block is run.json's "provenance"
        lines += ["## Provenance", "", *provenance.header(info["provenance"]), ""]
    if info:
        a = info.get("args", {})
        lines += [f"- endpoint: `{a.get('base_url')}`; datasets: {a.get('dataset')}; protocol: {a.get('protocol')}; "
                  f"run mode: {info.get('run_mode')}; samples per task: {a.get('n')}; repeats: {info.get('repeats', a.get('repeats'))}; "
                  f"temperature: {a.get('temperature')}; max turns: {a.get('max_turns')}; "
                  f"max tokens per task: {a.get('max_tokens')}",
                  *run_design(info),
                  f"- sandbox isolation: {', '.join(info.get('sandbox_isolation') or []) or 'n/a'}",
                  "- CIs: bootstrap 95% over tasks (a task's samples and repeats resampled together), "
                  "pass@k's too; energy n/a when the endpoint sends no "
                  "`edgemeter` record (not the Edgemeter proxy)", ""]
    pk = [f"pass@{k}" for k in ks]
    head = ["dataset", "mode / network / model", "attempts", "accuracy [95% CI]", *pk, "wall s p50 / p90",
            "TTFT s p50", "tokens/task (in/out)", "net share", "J/task", "J/solved", "solved/agent-h"]
    lines += ["## Accuracy and cost", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sums:
        ci = s["accuracy_ci95"]
        acc = f"{_fmt(s['accuracy'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(s["accuracy"])
        row = [s["dataset"], _label(s), f"{s['attempts']} ({s['errors']} err)", acc,
               *[_fmt(s[p]) + (f" [{_fmt(s[p + '_ci95'][0])}, {_fmt(s[p + '_ci95'][1])}]" if s[p + "_ci95"] else "")
                 for p in pk],
               f"{_fmt(s['wall_s_p50'])} / {_fmt(s['wall_s_p90'])}", _fmt(s["ttft_s_p50"]),
               f"{_fmt(s['prompt_tokens_mean'])} / {_fmt(s['completion_tokens_mean'])}", _fmt(s["net_share"]),
               _fmt(s["energy_j_mean"]) + (f" ± {_fmt(s['energy_j_std'])}" if s["energy_j_std"] else ""),
               _fmt(s["energy_j_per_solved"]), _fmt(s["solved_per_agent_hour"])]
        lines.append("| " + " | ".join(row) + " |")
    head = ["dataset", "mode / network / model", "wall s mean ± std [95% CI]", "model calls s", "network delay s", "tools s",
            "turns", "tool calls", "ITL ms", "tokens/s"]
    lines += ["", "## Latency breakdown (means per task)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sums:
        itl = None if s["itl_s_mean"] is None else s["itl_s_mean"] * 1000
        wci = s["wall_s_ci95"]
        wall = f"{_fmt(s['wall_s_mean'])} ± {_fmt(s['wall_s_std'])}" + (f" [{_fmt(wci[0])}, {_fmt(wci[1])}]" if wci else "")
        row = [s["dataset"], _label(s), wall, _fmt(s["llm_s_mean"]),
               _fmt(s["net_delay_s_mean"]), _fmt(s["tool_s_mean"]), _fmt(s["turns_mean"]),
               _fmt(s["tool_calls_mean"]), _fmt(itl), _fmt(s["tokens_per_s"])]
        lines.append("| " + " | ".join(row) + " |")
    # one ledger in every mode: baseline x wall + on-device generation + on-device tools + settled radio
    head = ["dataset", "mode / network / model", "device profile", "baseline J", "compute J", "tools J", "radio J",
            "device J", "cloud $", "datacenter J"]
    lines += ["", "## Device energy and cloud cost (means per task; two axes, never summed)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sums:
        row = [s["dataset"], _label(s), s["device_profile"] or "n/a",
               *[_fmt(s[f"{p}_j_mean"]) for p in ("baseline", "compute", "tools", "radio")], _fmt(s["energy_j_mean"]),
               _fmt(s["cloud_usd_mean"]), _fmt(s["cloud_j_mean"])]
        lines.append("| " + " | ".join(row) + " |")
    head = ["dataset", "mode / network / model", "strict accuracy", "flexible accuracy", "unparsed", "truncated",
            "graded from earlier code", "ran grading tests", "reasoning tokens/task"]
    lines += ["", "## Answers and grading", "",
              "Strict reads the number the answer commits to, flexible the last number of the final reply "
              "(GSM8K, as lm-evaluation-harness reports both); truncated: the last reply hit its token limit; "
              "graded from earlier code: the final answer held no code, so the last complete definition the agent "
              "wrote was graded. See docs/grading.md.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sums:
        flexible = s["accuracy_flexible"]
        row = [s["dataset"], _label(s), _fmt(s["accuracy"]) if flexible is not None else "n/a", _fmt(flexible),
               _fmt(s["unparsed_rate"]), _fmt(s["truncated_rate"]), _fmt(s["graded_last_code_rate"]),
               _fmt(s["ran_grading_tests_rate"]), _fmt(s["reasoning_tokens_mean"])]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Plots: `energy_per_solved.png`, `latency_breakdown.png`, `accuracy_vs_cost.png`.", ""]
    return "\n".join(lines)


def plots(sums: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    labels = [f"{s['dataset']}\n{_label(s)}" for s in sums]
    height = max(3.0, 0.55 * len(sums) + 1.5)

    fig, ax = plt.subplots(figsize=(9, height))
    vals = [s["energy_j_per_solved"] or 0.0 for s in sums]
    bars = ax.barh(labels, vals, color="tab:green")
    for b, s in zip(bars, sums):
        if s["energy_j_per_solved"] is None:
            why = " no energy record (endpoint is not Edgemeter)" if s["energy_j_mean"] is None else " no task solved"
            ax.text(0, b.get_y() + b.get_height() / 2, why, va="center", fontsize=8)
    ax.set_xlim(0, max(vals) * 1.1 or 1.0)
    ax.set_xlabel("joules per solved task (device radio + compute)")
    ax.set_title("Energy per solved task by mode and network preset")
    ax.invert_yaxis()
    fig.tight_layout()
    written.append(out / "energy_per_solved.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, height))
    net = [s["net_delay_s_mean"] or 0.0 for s in sums]
    model = [max((s["llm_s_mean"] or 0.0) - n, 0.0) for s, n in zip(sums, net)]
    tools = [s["tool_s_mean"] or 0.0 for s in sums]
    other = [max((s["wall_s_mean"] or 0.0) - m - n - t, 0.0) for s, m, n, t in zip(sums, model, net, tools)]
    left = [0.0] * len(sums)
    for name, part, color in (("model (excl. network)", model, "tab:blue"), ("network delay", net, "tab:orange"),
                              ("tools", tools, "tab:purple"), ("harness/other", other, "tab:gray")):
        ax.barh(labels, part, left=left, label=name, color=color)
        left = [a + b for a, b in zip(left, part)]
    ax.set_xlabel("seconds per task (mean)")
    ax.set_title("Latency breakdown")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "latency_breakdown.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 5))
    use_energy = any(s["energy_j_mean"] is not None for s in sums)
    markers = "osD^v<>phX*"
    for i, (s, label) in enumerate(zip(sums, labels)):
        x = s["energy_j_mean"] if use_energy else s["wall_s_mean"]
        if x is None or s["accuracy"] is None:
            continue
        ax.scatter(x, s["accuracy"], marker=markers[i % len(markers)], s=50, alpha=0.8,
                   label=label.replace("\n", ": "))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("joules per task (mean)" if use_energy else "seconds per task (mean; no energy record)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Accuracy vs cost")
    fig.tight_layout()
    written.append(out / "accuracy_vs_cost.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_report(run_dir: str | Path, *, with_plots: bool = True, price: tuple[float, float] | None = None) -> list[dict]:
    out = Path(run_dir)
    info_path = out / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    ks = info.get("k") or [1]
    rows = read_rows(out / "results.jsonl")
    sums = summaries(rows, ks)
    # Where should it run: one decision per preset; a replay grid's points are summed up as break-even points.
    grid = (info.get("replay") or {}).get("grid")
    decisions = where.decide(rows, price)
    breaks = where.break_even(decisions, grid) if grid else None
    shown = [d for d in decisions if not grid or d["network"] not in grid["presets"]]
    (out / "where.json").write_text(json.dumps({"decisions": decisions, "break_even": breaks}, indent=2))
    (out / "summary.json").write_text(json.dumps(sums, indent=2))
    with open(out / "summary.csv", "w", newline="") as f:
        fields = list(sums[0]) if sums else list(GROUP)
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for s in sums:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in s.items()})
    (out / "report.md").write_text(markdown(sums, info, ks) + "\n" + where.markdown(shown, breaks))
    if with_plots and sums:
        plots(sums, out)
        where.plots(shown, breaks, grid, out, points=decisions)
    return sums


def _price(text: str) -> tuple[float, float]:
    try:
        p_in, p_out = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("give IN,OUT: USD per million prompt and completion tokens") from None
    return p_in, p_out


def add_price_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cloud-price", type=_price, metavar="IN,OUT",
                   help="USD per million prompt,completion tokens the cloud model costs (cloud-placed calls only)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness report", description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--no-plots", action="store_true")
    add_price_arg(p)
    args = p.parse_args(argv)
    if not (Path(args.run_dir) / "results.jsonl").exists():
        print(f"no results.jsonl in {args.run_dir}")
        return 1
    sums = write_report(args.run_dir, with_plots=not args.no_plots, price=args.cloud_price)
    print((Path(args.run_dir) / "report.md").read_text())
    return 0 if sums else 1
