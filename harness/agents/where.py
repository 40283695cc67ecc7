"""Where should it run? From task results: every deployment mode side by side per dataset x
network preset, compared on the same tasks, the Pareto-optimal modes, one plain sentence naming
the winner per objective, and the network conditions at which two modes' ranking flips.

Objectives: accuracy (higher is better), task wall time p50, device energy per task (the
device's radio and compute; a cloud model's compute is not the device's), and cloud cost per
task when a price is given. Accuracy per joule and per watt (task accuracy / mean device power,
"intelligence per watt" of Saad-Falcon et al., Stanford 2025) are shown beside them, so results
read next to that study's.

Accuracy decides only when the paired difference is real: two modes are compared on the tasks
both ran (McNemar's exact test, paired bootstrap CI of the accuracy difference), and when no pair
differs at p < ALPHA the report says accuracy cannot decide rather than naming a winner on noise.
"""
from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations

from proxy.config import AUTO, MODES

from harness.common.stats import mcnemar_exact, paired_bootstrap_diff, percentile

ALPHA = 0.05
# objective -> (field, better): "max" or "min"
OBJECTIVES = {"accuracy": ("accuracy", "max"), "speed": ("wall_s_p50", "min"),
              "device energy": ("device_j_per_task", "min"), "cloud cost": ("cost_per_task", "min")}
SAME_HOST = ("same-host", "in-process")
SHOWN = MODES + (AUTO,)  # auto's rows stand beside the fixed modes'; it is no mode of its own to break even with
TIE = 0.02  # break-even: two modes within 2 % of each other are tied


def _records(row: dict) -> list[dict]:
    return [c["edgemeter"] for c in row.get("llm_calls") or [] if c.get("edgemeter")]


def _placement(rec: dict, mode: str) -> str:
    """Where the call's model ran: the record says so; older records follow the mode."""
    return rec.get("placement") or ("device" if mode == "local" else "cloud")


def task_key(row: dict) -> tuple:
    """What makes two modes' rows the same task: in a replay, the same recorded session too (a
    sweep recorded in several modes replays each recording under every mode)."""
    own = (row.get("replay") or {}).get("own_placement")  # replayed from its own placement's recording
    session = row.get("session") if row.get("run_mode") == "replay" and not own else None
    return row.get("task_id"), row.get("sample"), row.get("repeat"), session


def mode_result(mode: str, rows: list[dict], price: tuple[float, float] | None) -> dict:
    """One mode's numbers on one preset."""
    n = len(rows)
    solved = sum(bool(r["passed"]) for r in rows)
    wall = [float(r["wall_s"]) for r in rows if r.get("wall_s") is not None]
    metered = [r for r in rows if r.get("energy_j") is not None]
    energy = sum(float(r["energy_j"]) for r in metered)
    acc = solved / n if n else None
    per_task = energy / len(metered) if metered else None
    power = energy / sum(float(r["wall_s"]) for r in metered) if metered and energy else None
    recs = [(rec, r["mode"]) for r in rows for rec in _records(r)]
    cloud = [rec for rec, m in recs if _placement(rec, m) == "cloud"]
    cost = None
    if price is not None and n:
        cost = sum(price[0] * (rec.get("prompt_tokens") or 0) + price[1] * (rec.get("completion_tokens") or 0)
                   for rec in cloud) / 1e6 / n
    return {
        "mode": mode, "tasks": n, "solved": solved, "accuracy": acc,
        # the share of model calls the device answered: 1 for local, 0 for hybrid and cloud, auto's own mix
        "device_share": sum(_placement(rec, m) == "device" for rec, m in recs) / len(recs) if recs else None,
        "wall_s_p50": percentile(wall, 50), "wall_s_p90": percentile(wall, 90),
        "device_j_per_task": per_task,
        "device_j_per_solved": energy / sum(bool(r["passed"]) for r in metered)
        if metered and any(r["passed"] for r in metered) else None,
        "accuracy_per_j": acc / per_task if acc is not None and per_task else None,
        "accuracy_per_w": acc / power if acc is not None and power else None,
        "cost_per_task": cost,
        "same_host_cloud": any(rec.get("served_host") in SAME_HOST for rec in cloud),
        "emulated": any(rec.get("placement_emulated") for rec, _ in recs),
        "networks": sorted({str(r.get("network")) for r in rows}),
    }


def paired(a_rows: list[dict], b_rows: list[dict]) -> dict:
    """Mode a vs mode b on the tasks both ran."""
    a = {task_key(r): bool(r["passed"]) for r in a_rows}
    b = {task_key(r): bool(r["passed"]) for r in b_rows}
    keys = sorted(set(a) & set(b), key=str)
    only_a = sum(a[k] and not b[k] for k in keys)
    only_b = sum(b[k] and not a[k] for k in keys)
    diff = paired_bootstrap_diff([float(a[k]) for k in keys], [float(b[k]) for k in keys])
    return {"pairs": len(keys), "only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b),
            "diff": diff[0] if diff else None, "diff_ci95": [diff[1], diff[2]] if diff else None}


def pareto(results: list[dict], objectives: list[str]) -> list[str]:
    """Modes no other mode matches or beats on every objective while beating on one."""
    def better_eq(x, y, field, sense):
        return x[field] >= y[field] if sense == "max" else x[field] <= y[field]

    def strictly(x, y, field, sense):
        return x[field] > y[field] if sense == "max" else x[field] < y[field]

    objs = [OBJECTIVES[o] for o in objectives]
    return [r["mode"] for r in results
            if not any(all(better_eq(o, r, f, s) for f, s in objs) and any(strictly(o, r, f, s) for f, s in objs)
                       for o in results if o is not r)]


def _groups(rows: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """(dataset, model, network preset) -> mode -> rows. Local mode crosses no network, so its
    rows join every preset that has none of their own (from the run's local point)."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r.get("dataset"), r.get("model"), r.get("network"))][r["mode"]].append(r)
    out = {}
    for (ds, model, net), modes in by.items():
        if set(modes) == {"local"} and any(k[:2] == (ds, model) and set(v) - {"local"} for k, v in by.items()):
            continue  # a local-only point: shown with the presets the other modes ran on
        modes = dict(modes)
        if "local" not in modes:
            local = [r for k, v in by.items() if k[:2] == (ds, model) for r in v.get("local", [])]
            nets = {r.get("network") for r in local}
            if "local" in nets or len(nets) == 1:  # the run's one local point: the same for every preset
                modes["local"] = [r for r in local if r.get("network") == ("local" if "local" in nets else nets.pop())]
        out[(ds, model, net)] = modes
    return out


def decide(rows: list[dict], price: tuple[float, float] | None = None, presets: list[str] | None = None) -> list[dict]:
    """One decision per dataset x model x network preset (``presets`` limits which)."""
    out = []
    for (ds, model, net), modes in sorted(_groups(rows).items(), key=lambda kv: tuple(map(str, kv[0]))):
        if presets is not None and net not in presets:
            continue
        results = [mode_result(m, modes[m], price) for m in SHOWN if m in modes]
        if not results:  # rows with no deployment mode (a plain endpoint, not a sweep): nothing to decide
            continue
        pairs = {f"{a} vs {b}": paired(modes[a], modes[b]) for a, b in combinations([r["mode"] for r in results], 2)}
        objectives = [o for o, (f, _) in OBJECTIVES.items() if all(r[f] is not None for r in results)]
        decides = any(p["mcnemar_p"] < ALPHA for p in pairs.values())
        # accuracy that cannot decide does not make a mode optimal either
        front = [o for o in objectives if decides or o != "accuracy"]
        d = {"dataset": ds, "model": model, "network": net, "modes": results, "pairs": pairs,
             "accuracy_decides": decides, "objectives": objectives,
             "pareto": pareto(results, front) if front else [],
             "winners": {o: _best(results, o) for o in objectives}}
        if AUTO in modes:
            d["auto"] = versus(modes, d)
        d["sentence"] = sentence(d)
        out.append(d)
    return out


def _paired_values(a_rows: list[dict], b_rows: list[dict], field: str) -> dict:
    """mean(a - b) of ``field`` on the tasks both ran, with its paired bootstrap 95% CI."""
    a = {task_key(r): r.get(field) for r in a_rows}
    b = {task_key(r): r.get(field) for r in b_rows}
    keys = sorted((k for k in set(a) & set(b) if a[k] is not None and b[k] is not None), key=str)
    diff = paired_bootstrap_diff([float(a[k]) for k in keys], [float(b[k]) for k in keys])
    return {"pairs": len(keys), "diff": diff[0] if diff else None, "diff_ci95": [diff[1], diff[2]] if diff else None}


def versus(modes: dict[str, list[dict]], d: dict) -> dict:
    """auto against each fixed mode on the same tasks: the paired difference (auto - fixed) of
    accuracy, task wall time and device energy, each with a paired bootstrap 95% CI, and
    whether auto is on the Pareto front (and which modes dominate it when not)."""
    res = {r["mode"]: r for r in d["modes"]}
    front = [o for o in d["objectives"] if d["accuracy_decides"] or o != "accuracy"]
    fields = [OBJECTIVES[o] for o in front]
    dominated_by = [m for m, r in res.items() if m != AUTO and fields
                    and all((r[f] >= res[AUTO][f]) if s == "max" else (r[f] <= res[AUTO][f]) for f, s in fields)
                    and any((r[f] > res[AUTO][f]) if s == "max" else (r[f] < res[AUTO][f]) for f, s in fields)]
    against = {}
    for m in MODES:
        if m in modes:
            against[m] = {"accuracy": paired(modes[AUTO], modes[m]),
                          "wall_s": _paired_values(modes[AUTO], modes[m], "wall_s"),
                          "device_j": _paired_values(modes[AUTO], modes[m], "energy_j")}
    replayed = any(r.get("run_mode") == "replay" for r in modes[AUTO])
    return {"on_front": AUTO in d["pareto"], "dominated_by": dominated_by, "device_share": res[AUTO]["device_share"],
            "chosen": _chosen(modes[AUTO]), "versus": against,
            "accuracy_from": "replay: each task's recording graded under the placement auto chose" if replayed
            else "live runs: auto's own attempts, graded as they ran"}


def _chosen(rows: list[dict]) -> dict:
    """How often the policy chose each mode, over auto's model calls."""
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        for rec in _records(r):
            out[(rec.get("auto") or {}).get("chosen") or rec.get("mode")] += 1
    return dict(out)


def _diff(v: dict, unit: str = "", pct: bool = False) -> str:
    if v["diff"] is None:
        return "n/a"
    f = (lambda x: f"{x:+.0%}") if pct else (lambda x: f"{x:+.3g}{unit}")
    lo, hi = v["diff_ci95"]
    return f"{f(v['diff'])} [{f(lo)}, {f(hi)}]"


def auto_sentence(d: dict) -> str:
    a = d["auto"]
    share = "n/a" if a["device_share"] is None else f"{a['device_share']:.0%}"
    if a["on_front"]:
        head = f"auto ({share} of calls on the device) is on the Pareto front"
    elif a["dominated_by"]:
        head = f"auto ({share} of calls on the device) is not on the Pareto front: {_names(a['dominated_by'])} " \
               f"{'is' if len(a['dominated_by']) == 1 else 'are'} as good on every objective and better on one"
    else:
        head = f"auto ({share} of calls on the device): no Pareto front (too few objectives measured)"
    parts = [f"vs {m}: accuracy {_diff(v['accuracy'], pct=True)}, task wall {_diff(v['wall_s'], ' s')}, "
             f"device {_diff(v['device_j'], ' J')}" for m, v in a["versus"].items()]
    return head + (". Paired differences auto minus fixed mode [95% CI]: " + "; ".join(parts) if parts else "") + \
        f". auto's accuracy comes from {a['accuracy_from']}."


def _best(results: list[dict], objective: str) -> list[str]:
    field, sense = OBJECTIVES[objective]
    best = (max if sense == "max" else min)(r[field] for r in results)
    return [r["mode"] for r in results if math.isclose(r[field], best, rel_tol=1e-9, abs_tol=1e-12)]


def _names(modes: list[str]) -> str:
    return modes[0] if len(modes) == 1 else ", ".join(modes[:-1]) + " and " + modes[-1]


def _num(v: float) -> str:
    return f"{v:.3g}"


def sentence(d: dict) -> str:
    """The decision in plain words: the winner per objective, by how much, and what cannot decide."""
    res = {r["mode"]: r for r in d["modes"]}
    parts = []
    if len(res) < 2:
        return f"On {d['network']}, only {_names(list(res))} ran: nothing to compare."
    accs = {r["accuracy"] for r in res.values()}
    if len(accs) == 1:
        r = next(iter(res.values()))
        parts.append(f"accuracy cannot decide (every mode solved {r['solved']} of {r['tasks']} tasks)")
    elif not d["accuracy_decides"]:
        best = min(d["pairs"].values(), key=lambda p: p["mcnemar_p"])
        parts.append(f"accuracy cannot decide (differences are within chance: smallest McNemar p {_num(best['mcnemar_p'])}"
                     f" on {best['pairs']} paired tasks)")
    else:
        win = d["winners"]["accuracy"]
        w = res[win[0]]
        rest = ", ".join(f"{m} {r['accuracy']:.0%}" for m, r in res.items() if m not in win)
        parts.append(f"{_names(win)} solve{'s' if len(win) == 1 else ''} the most tasks ({w['accuracy']:.0%}; {rest})")
    if "speed" in d["winners"]:
        win = d["winners"]["speed"]
        w = res[win[0]]["wall_s_p50"]
        rest = ", ".join(f"{m} {_num(r['wall_s_p50'] - w)} s slower" for m, r in res.items() if m not in win)
        parts.append(f"{_names(win)} {'is' if len(win) == 1 else 'are'} fastest (task p50 {_num(w)} s"
                     + (f"; {rest})" if rest else ")"))
    if "device energy" in d["winners"]:
        win = d["winners"]["device energy"]
        best = res[win[0]]["device_j_per_task"]
        ratios = ", ".join(f"{r['device_j_per_task'] / best:.2g}x less than {m}" for m, r in res.items()
                           if m not in win and best)
        parts.append(f"{_names(win)} use{'s' if len(win) == 1 else ''} the least device energy per task "
                     f"({_num(best)} J" + (f"; {ratios})" if ratios else ")"))
        per_solved = {m: r["device_j_per_solved"] for m, r in res.items() if r["device_j_per_solved"] is not None}
        if d["accuracy_decides"] and per_solved:
            low = min(per_solved.values())
            frugal = [m for m, v in per_solved.items() if v == low]
            if frugal != win:  # solving more can make the costlier task the cheaper solved one
                parts.append(f"per solved task, {_names(frugal)} use{'s' if len(frugal) == 1 else ''} least "
                             f"({_num(low)} J)")
    if "cloud cost" in d["winners"]:
        win = d["winners"]["cloud cost"]
        parts.append(f"{_names(win)} cost{'s' if len(win) == 1 else ''} least (${res[win[0]]['cost_per_task']:.4g} per task)")
    text = f"On {d['network']}: " + "; ".join(parts) + "."
    if d["pareto"]:
        text += f" Pareto-optimal{'' if d['accuracy_decides'] else ' on the other objectives'}: {_names(d['pareto'])}."
    if any(r["same_host_cloud"] for r in res.values()):
        text += " Cloud timings are same-host (the cloud model ran on this machine, not in a datacenter)."
    if any(r["emulated"] for r in res.values()):
        text += " One backend stood in for both placements (placement_emulated)."
    if "auto" in d:
        text += " " + auto_sentence(d)
    return text


# --- break-even points over a grid of network conditions ---

def break_even(decisions: list[dict], grid: dict) -> list[dict]:
    """Where two modes' ranking on an objective flips as one network condition varies and the
    others stay fixed: between two neighbouring grid points whose difference changes sign,
    placed by linear interpolation of the difference. ``grid`` is replay's run.json ``grid``:
    ``{"presets": {name: {"base": ..., axis: value, ...}}, "axes": {axis: [values]}}``."""
    points = {d["network"]: d for d in decisions if d["network"] in grid["presets"]}
    axes = list(grid["axes"])
    out = []
    lines = defaultdict(list)  # (dataset, model, base, axis, other axes' values) -> [(value, decision)]
    for name, d in points.items():
        spec = grid["presets"][name]
        for axis in axes:
            fixed = tuple((a, spec[a]) for a in axes if a != axis)
            lines[(d["dataset"], d["model"], spec["base"], axis, fixed)].append((spec[axis], d))
    for (ds, model, base, axis, fixed), line in sorted(lines.items(), key=lambda kv: tuple(map(str, kv[0]))):
        line.sort(key=lambda x: x[0])
        for objective in ("speed", "device energy", "cloud cost"):
            field, sense = OBJECTIVES[objective]
            for a, b in combinations(MODES, 2):
                diffs = []
                for value, d in line:
                    res = {r["mode"]: r for r in d["modes"]}
                    if a in res and b in res and res[a][field] is not None and res[b][field] is not None:
                        diffs.append((value, res[a][field] - res[b][field],
                                      max(abs(res[a][field]), abs(res[b][field]))))
                # a difference within TIE of the values is a tie, not a ranking: seeded jitter and
                # loss move near-equal modes back and forth, and those are no break-even points
                diffs = [(x, dv) for x, dv, scale in diffs if abs(dv) > TIE * scale]
                for (x0, d0), (x1, d1) in zip(diffs, diffs[1:]):
                    if d0 * d1 < 0:
                        at = x0 + (x1 - x0) * d0 / (d0 - d1)
                        lo_better = a if (d0 > 0) == (sense == "min") else b
                        out.append({"dataset": ds, "model": model, "base": base, "objective": objective,
                                    "modes": [a, b], "axis": axis, "fixed": dict(fixed), "at": at,
                                    "between": [x0, x1], "below": b if lo_better == a else a,
                                    "above": lo_better})
    return out


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def markdown(decisions: list[dict], breaks: list[dict] | None = None) -> str:
    lines = ["## Where should it run?", "",
             "Per dataset and network preset: each mode on the same tasks. Device energy is the device's radio "
             "and compute (a cloud model's compute is not the device's); accuracy/W is task accuracy over mean "
             "device power (\"intelligence per watt\", Saad-Falcon et al. 2025). Paired: McNemar's exact test and "
             "a bootstrap 95% CI of the accuracy difference on the tasks both modes ran. * = Pareto-optimal.", ""]
    for d in decisions:
        title = f"### {d['dataset']} on {d['network']}" + (f" ({d['model']})" if d["model"] else "")
        head = ["mode", "solved", "accuracy", "wall s p50 / p90", "device J/task", "device J/solved",
                "accuracy/J", "accuracy/W", "cloud $/task", "device calls"]
        lines += [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in d["modes"]:
            name = r["mode"] + (" *" if r["mode"] in d["pareto"] else "")
            if r["mode"] == "local" and d["network"] not in r["networks"]:
                name += " (no network)"
            lines.append("| " + " | ".join([
                name, f"{r['solved']}/{r['tasks']}", _fmt(r["accuracy"]),
                f"{_fmt(r['wall_s_p50'])} / {_fmt(r['wall_s_p90'])}", _fmt(r["device_j_per_task"]),
                _fmt(r["device_j_per_solved"]), _fmt(r["accuracy_per_j"]), _fmt(r["accuracy_per_w"]),
                "n/a" if r["cost_per_task"] is None else f"{r['cost_per_task']:.4g}",
                "n/a" if r["device_share"] is None else f"{r['device_share']:.0%}"]) + " |")
        if d["pairs"]:
            lines += ["", "| paired | tasks | only first solved | only second solved | McNemar p | "
                          "accuracy difference [95% CI] |", "|---|---|---|---|---|---|"]
            for name, p in d["pairs"].items():
                ci = p["diff_ci95"]
                diff = "n/a" if p["diff"] is None else f"{p['diff']:+.3g} [{ci[0]:+.3g}, {ci[1]:+.3g}]"
                lines.append(f"| {name} | {p['pairs']} | {p['only_a']} | {p['only_b']} | {p['mcnemar_p']:.3g} | {diff} |")
        lines += ["", d["sentence"], ""]
    if breaks is not None:
        lines += [break_even_table(breaks), ""]
    lines += ["Plots: `where_should_it_run.png`" + (", `break_even.png`" if breaks is not None else "") + ".", ""]
    return "\n".join(lines)


def break_even_table(breaks: list[dict]) -> str:
    lines = ["### Break-even network conditions", ""]
    if not breaks:
        return "\n".join(lines + ["No ranking flips inside the grid: the same mode wins each objective at every "
                                  "grid point."])
    lines += ["Where the ranking of two modes flips as one condition varies (the others fixed): linear "
              f"interpolation between the two grid points around it; differences within {TIE:.0%} are ties.", "",
              "| dataset | base | objective | modes | varying | fixed | flips at | better below | better above |",
              "|---|---|---|---|---|---|---|---|---|"]
    for b in breaks:
        fixed = ", ".join(f"{k}={v:g}" for k, v in b["fixed"].items()) or "-"
        lines.append(f"| {b['dataset']} | {b['base']} | {b['objective']} | {' vs '.join(b['modes'])} | "
                     f"{b['axis']} | {fixed} | {b['at']:.3g} | {b['below']} | {b['above']} |")
    return "\n".join(lines)


def plots(decisions: list[dict], breaks: list[dict] | None, grid: dict | None, out,
          points: list[dict] | None = None) -> list:
    """``where_should_it_run.png`` for ``decisions``; with a grid, ``break_even.png`` from its ``points``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    shown = [d for d in decisions if d["modes"]][:12]
    if shown:
        cols = min(3, len(shown))
        rows = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
        colors = {"local": "tab:green", "hybrid": "tab:orange", "cloud": "tab:blue", AUTO: "tab:purple"}
        for ax, d in zip(axes.flat, shown):
            for r in d["modes"]:
                x = r["device_j_per_task"] if r["device_j_per_task"] is not None else r["wall_s_p50"]
                if x is None or r["accuracy"] is None:
                    continue
                front = r["mode"] in d["pareto"]
                ax.scatter(x, r["accuracy"], s=70, edgecolor=colors[r["mode"]] if not front else "black",
                           facecolor=colors[r["mode"]] if front else "white", linewidths=1.5, zorder=3)
                ax.annotate(f"{r['mode']}{' *' if front else ''}\np50 {_fmt(r['wall_s_p50'])} s", (x, r["accuracy"]),
                            fontsize=7, xytext=(5, 4), textcoords="offset points")
            energy = all(r["device_j_per_task"] is not None for r in d["modes"])
            ax.set_xlabel("device J per task" if energy else "task wall s p50")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.05, 1.1)
            ax.set_title(f"{d['dataset']} on {d['network']}", fontsize=9)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        fig.suptitle("Where should it run? (filled, *: Pareto-optimal)")
        fig.tight_layout()
        written.append(out / "where_should_it_run.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if breaks is not None and grid:
        written.append(_plot_grid(points or decisions, breaks, grid, out, plt))
    return written


def _plot_grid(decisions, breaks, grid, out, plt):
    """Per objective: each mode's value along the first axis (one line per value of the others),
    with the flip points marked."""
    axis = next(iter(grid["axes"]))
    pts = [(grid["presets"][d["network"]], d) for d in decisions if d["network"] in grid["presets"]]
    objectives = [o for o in ("speed", "device energy") if any(o in d["objectives"] for _, d in pts)]
    fig, axes = plt.subplots(1, max(1, len(objectives)), figsize=(6 * max(1, len(objectives)), 4), squeeze=False)
    styles = {"local": "tab:green", "hybrid": "tab:orange", "cloud": "tab:blue"}
    others = sorted({tuple((a, s[a]) for a in grid["axes"] if a != axis) for s, _ in pts})
    for ax, objective in zip(axes.flat, objectives):
        field = OBJECTIVES[objective][0]
        for j, fixed in enumerate(others):
            line = sorted(((s[axis], d) for s, d in pts if tuple((a, s[a]) for a in grid["axes"] if a != axis) == fixed),
                          key=lambda x: x[0])
            for mode in MODES:
                xs, ys = [], []
                for v, d in line:
                    r = next((r for r in d["modes"] if r["mode"] == mode), None)
                    if r is not None and r[field] is not None:
                        xs.append(v)
                        ys.append(r[field])
                if xs:  # one line per value of the other axes, lighter as they grow
                    ax.plot(xs, ys, marker="o", color=styles[mode], alpha=1 - 0.6 * j / max(1, len(others)),
                            label=mode if j == 0 else None)
        for b in breaks:
            if b["objective"] == objective and b["axis"] == axis:
                ax.axvline(b["at"], color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel({"speed": "task wall s p50", "device energy": "device J per task"}[objective])
        rest = [a for a in grid["axes"] if a != axis]
        ax.set_title(f"{objective}: dotted = ranking flips" + (f"\n(lighter: larger {', '.join(rest)})" if rest else ""),
                     fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "break_even.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
