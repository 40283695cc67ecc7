"""``python -m harness bench replay``: does replay give what a live run measures, and how much
faster is a sweep?

1. Live: each sweep point (local, hybrid/wifi, hybrid/4g, cloud/4g) runs the same GSM8K tasks
   through ``harness run`` on its own proxy (config.yaml's model, in-process, with
   ``server.record_traces``), so each point has its own links and radios, as replay assumes.
   Runs are interleaved: task 1 on every point, then task 2, ..., the order rotating, so load
   from other processes on the machine falls on every point alike (paired measurements). A
   second local point records the same tasks again: two live runs of the same thing, whose
   difference is the generation noise any live comparison carries. One local call warms each
   proxy's model; harness warm-ups are off, so every session is recorded.
2. Replay the ``local`` recording under every point (the proxy's seed and the same device id:
   the same random network draws whenever the model emits the same frames), and each live
   run's own recording under its own point ("self"): replay's error without generation noise.
3. Medians per metric, live against replay. Live runs regenerate every token, so their
   difference also holds generation-time noise; the table shows how far generation drifted.
4. Speed: ``--sweep-tasks`` sessions made from the local recording (repeated under new ids,
   back to back on one device) replayed over 7 presets x 3 modes by ``python -m harness replay``
   as a subprocess, against what the same task runs would take live.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from proxy.energy import ComputeEnergy
from proxy.link import presets_from_config

from harness.common import datasets
from harness.replay import replay
from harness.agents import run
from harness.replay import trace as tr
from harness.common.procs import free_port, stop, wait_http
from harness.agents.results import read_rows
from harness.common.stats import percentile

# local-local is the recording; local-local-rerun records the same again: the noise floor.
POINTS = [("local", "local", "local-local"), ("hybrid", "wifi", "hybrid-wifi"), ("hybrid", "4g", "hybrid-4g"),
          ("cloud", "4g", "cloud-4g"), ("local", "local", "local-local-rerun")]
SWEEP_NETWORKS = ["local", "lan", "wifi", "5g", "4g", "poor_cellular", "edge_case"]
METRICS = ("wall_s", "radio_j", "net_delay_s", "energy_j", "call_ttft_s", "call_e2e_s", "wall_minus_gen_s")
TARGET = {"wall_s": 5.0, "radio_j": 5.0}  # % at the median


def _post(url: str, body: dict, headers: dict | None = None) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()


@contextlib.contextmanager
def proxy(cfg: dict, out: Path):
    """A proxy on ``cfg`` with its model warmed up; yields its base URL."""
    port = free_port()
    cfg_path = out / "proxy.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    with open(out / "proxy.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg_path), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=120)
            _post(f"http://127.0.0.1:{port}/v1/chat/completions",
                  {"model": next(iter(cfg["models"])), "messages": [{"role": "user", "content": "Hi"}],
                   "max_tokens": 8}, {"X-Edgemeter-Mode": "local", "X-Edgemeter-Device": "warm-up"})
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop(proc, 15)


def live_runs(cfg: dict, task_ids: list[str], out: Path, run_args: list[str]) -> dict[str, float]:
    """Every task on every point, interleaved; returns each point's harness time in seconds."""
    took_path = out / "live" / "took_s.json"
    took = json.loads(took_path.read_text()) if took_path.exists() else {name: 0.0 for *_, name in POINTS}
    done = {name: {r["task_id"] for r in read_rows(out / "live" / name / "results.jsonl")} for *_, name in POINTS}
    if all(set(task_ids) <= ids for ids in done.values()):  # a rerun of the bench keeps the live runs it has
        return took
    with contextlib.ExitStack() as stack:
        urls = {}
        for *_, name in POINTS:
            (out / "live" / name).mkdir(parents=True, exist_ok=True)
            urls[name] = stack.enter_context(proxy(cfg, out / "live" / name))
        for i, task_id in enumerate(task_ids):
            k = i % len(POINTS)
            for mode, network, name in POINTS[k:] + POINTS[:k]:
                if task_id in done[name]:
                    continue
                t0 = time.perf_counter()
                code = run.main(["--base-url", urls[name], "--out", str(out / "live" / name), "--modes", mode,
                                 "--networks", network, "--device", "bench", "--warmup", "0", "--no-progress",
                                 "--ids", task_id, *run_args])
                if code:
                    raise SystemExit(f"harness run failed for task {task_id} on {name} (exit {code})")
                took[name] += time.perf_counter() - t0
                took_path.write_text(json.dumps(took))
    return took


def _medians(rows: list[dict], sessions: list[tr.Session]) -> dict:
    """Per-task and per-call medians; ``wall_minus_gen_s`` is the task's time beyond its model's
    generation (the sessions' recorded timelines): network, tools, client, proxy."""
    calls = [c["edgemeter"] for r in rows for c in r["llm_calls"] if c.get("edgemeter")]
    m = {k: percentile([float(r[k] or 0.0) for r in rows], 50) for k in ("wall_s", "radio_j", "net_delay_s",
                                                                           "energy_j")}
    m["call_ttft_s"] = percentile([c["ttft_s"] for c in calls if c.get("ttft_s") is not None], 50)
    m["call_e2e_s"] = percentile([c["e2e_s"] for c in calls], 50)
    gen = {s.id: sum(_generation_s([s])) for s in sessions}
    m["wall_minus_gen_s"] = percentile([r["wall_s"] - gen[r["session"]] for r in rows if r["session"] in gen], 50)
    return m


def _generation_s(sessions: list[tr.Session]) -> list[float]:
    """Per call: the model's time from the request's arrival to its last frame."""
    return [c.frames[-1][0] for s in sessions for c in s.calls if c.frames]


def _same_output(a: list[tr.Session], b: list[tr.Session]) -> int:
    """Tasks whose calls sent and received the same bytes frame by frame in both recordings."""
    key = {s.task.get("task_id"): [(c.bytes_up, [f[1] for f in c.frames or []]) for c in s.calls] for s in a}
    return sum(key.get(s.task.get("task_id")) == [(c.bytes_up, [f[1] for f in c.frames or []]) for c in s.calls]
               for s in b)


def _pct(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    if a == 0:
        return "0.0" if b == 0 else "n/a"
    return f"{(b - a) / a * 100:+.1f}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def synthesize(sessions: list[tr.Session], n: int) -> list[tr.Session]:
    """``n`` sessions cycling through the recorded ones under new ids, back to back on one device
    with the recorded gap between sessions."""
    ordered = sorted(sessions, key=lambda s: s.started_at)
    gaps = [b.started_at - a.recorded_end for a, b in zip(ordered, ordered[1:])] or [0.0]
    gap = max(0.0, percentile(gaps, 50))
    out, t = [], ordered[0].started_at
    for i in range(n):
        src = ordered[i % len(ordered)]
        s = tr.Session.from_json(json.loads(json.dumps(src.to_json())))
        s.id, s.started_at = f"{src.id}-{i}", t
        s.task = {**s.task, "task_id": f"{s.task.get('task_id')}#{i // len(ordered)}"}
        out.append(s)
        t = s.recorded_end + gap
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness bench replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config.yaml", help="proxy config (its first model is benchmarked)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="gsm8k")
    p.add_argument("--tasks", type=int, default=5, help="tasks run live per sweep point")
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--max-tokens-per-call", type=int, default=192)
    p.add_argument("--sweep-tasks", type=int, default=100, help="sessions in the speed sweep")
    p.add_argument("--out", default=None, help="default runs/replay-bench-<time>")
    args = p.parse_args(argv)
    out = Path(args.out or f"runs/replay-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(Path(args.config).read_text())
    cfg.setdefault("server", {})["record_traces"] = True
    cfg["server"]["request_log"] = None
    seed = cfg["server"].get("seed", 0)
    run_args = ["--dataset", args.dataset, "--max-turns", str(args.max_turns), "--max-tokens", str(args.max_tokens),
                "--max-tokens-per-call", str(args.max_tokens_per_call), "--no-report"]
    run_args += ["--data-dir", args.data_dir] if args.data_dir else []
    task_ids = [t.id for t in datasets.select(datasets.load(args.dataset, args.data_dir), limit=args.tasks)]

    took = live_runs(cfg, task_ids, out, run_args)
    live: dict[str, dict] = {}
    for *_, name in POINTS:
        d = out / "live" / name
        live[name] = {"rows": read_rows(d / "results.jsonl"), "sessions": tr.validate(tr.load(d)),
                      "took_s": took[name]}

    presets = presets_from_config(cfg.get("networks"))
    energy = ComputeEnergy.from_config({**(cfg.get("energy") or {}), "method": "estimate"})
    recording = live["local-local"]["sessions"]
    usable = [s for s in recording if not s.flags]
    lines = ["# Replay against live runs", "",
             (f"{len(usable)} of {len(recording)} {args.dataset} sessions recorded in local mode "
              f"(flagged: {sum(bool(s.flags) for s in recording)}); model {next(iter(cfg['models']))}; "
              f"seed {seed}; medians over tasks (calls for call_*). Δ % = (replay - live) / live."), "",
             "| live run | metric | live | replay of local | Δ % | self-replay | Δ % |", "|" + "---|" * 7]
    drift = ["", ("Generation: the model's time per call from request arrival to last frame (median), in each live "
                  "run against the recording; and the tasks whose every call sent and received the same frames."), "",
             "| live run | generation s/call | recorded s/call | drift % | same output |", "|---|---|---|---|---|"]
    verdict, self_err, noise = {}, 0.0, {}
    t_replay = 0.0
    gen_rec = percentile(_generation_s(usable), 50)
    for mode, network, name in POINTS:
        point = live[name]
        t0 = time.perf_counter()
        cross = replay.sweep(usable, [mode], [presets[network]], seed, energy)
        t_replay += time.perf_counter() - t0
        own = [s for s in point["sessions"] if not s.flags]
        self_rows = replay.sweep(own, [mode], [presets[network]], seed, energy)
        ml, mc, ms = _medians(point["rows"], own), _medians(cross, usable), _medians(self_rows, own)
        for k in METRICS:
            lines.append(f"| {name} | {k} | {_fmt(ml[k])} | {_fmt(mc[k])} | {_pct(ml[k], mc[k])} | "
                         f"{_fmt(ms[k])} | {_pct(ml[k], ms[k])} |")
        gen_live = percentile(_generation_s(point["sessions"]), 50)
        drift.append(f"| {name} | {_fmt(gen_live)} | {_fmt(gen_rec)} | {_pct(gen_rec, gen_live)} | "
                     f"{_same_output(usable, point['sessions'])}/{len(point['sessions'])} |")
        self_err = max([self_err] + [abs(ms[k] - ml[k]) / ml[k] * 100 for k in METRICS if ml[k]])
        for k, limit in TARGET.items():
            if not ml[k] or mode == "local":  # the recording against itself, or against its rerun
                continue
            ok = abs(mc[k] - ml[k]) / ml[k] * 100 <= limit
            verdict[f"{name} {k}"] = f"{_pct(ml[k], mc[k])} % {'ok' if ok else 'MISSED'}"
        if name == "local-local-rerun":
            noise = {k: _pct(ml[k], mc[k]) for k in ("wall_s", "call_ttft_s", "energy_j")}
    live_s = sum(live[name]["took_s"] for _, _, name in POINTS[:4])
    lines += [*drift, "", (f"Live: the 4 sweep points took {live_s:.1f} s; replaying the local recording under them "
                           f"took {t_replay * 1000:.1f} ms."), "",
              ("Targets (|Δ| ≤ 5 % at the median, replay of local vs live): "
               + ", ".join(f"{k} {v}" for k, v in verdict.items())),
              (f"Noise floor, the recording against a live rerun of itself: wall {noise.get('wall_s')} %, TTFT "
               f"{noise.get('call_ttft_s')} %, energy {noise.get('energy_j')} %. Self-replay: every metric within "
               f"{self_err:.2f} % of its live run."), ""]

    synth = synthesize(usable, args.sweep_tasks)
    tr.save(out / "sweep-traces.jsonl", synth)
    cmd = [sys.executable, "-m", "harness", "replay", str(out / "sweep-traces.jsonl"), "--modes", "local,hybrid,cloud",
           "--networks", ",".join(SWEEP_NETWORKS), "--out", str(out / "sweep"), "--seed", str(seed)]
    with tempfile.TemporaryFile() as sink:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=sink, stderr=sink)
        took = time.perf_counter() - t0
    rows = read_rows(out / "sweep" / "results.jsonl")
    live_equiv = sum(r["wall_s"] for r in rows)
    lines += ["## Sweep speed", "",
              f"`{' '.join(['python', *cmd[1:]])}`", "",
              (f"- {args.sweep_tasks} sessions ({len(usable)} recorded, repeated under new ids) x "
               f"{len(SWEEP_NETWORKS)} presets x 3 modes = {len(rows)} task runs replayed in {took:.1f} s wall, "
               "report and plots included"),
              # No live run of these task runs is made: the comparison is with the time the replay predicts.
              (f"- the task time the replay predicts for those runs live, one at a time: {live_equiv:.0f} s "
               f"({live_equiv / 3600:.2f} h), {live_equiv / took:,.0f}x the replay's own wall time"), ""]
    text = "\n".join(lines)
    (out / "validation.md").write_text(text)
    print(text)
    return 0
