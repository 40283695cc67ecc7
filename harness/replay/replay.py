"""``python -m harness replay TRACES --modes ... --networks ...``: what recorded agent sessions
would have cost under other deployment modes, network presets and radios, without generating
a token again.

The model's output and its timing do not depend on the simulated network, so one recording
(say in ``local`` mode) holds everything a sweep regenerates: each call's request size and
frame timeline, the tool time between calls, the final answer's size (see harness.replay.trace).
Replay feeds that timeline through the proxy's own ``proxy.device.Device`` (link stages and
radio) on a virtual clock, exactly as the proxy's handlers do:

  hybrid  each call's request goes up the link when sent; the model starts when it arrives;
          frame i is produced at that start + its recorded offset and comes down the link;
          the call ends its recorded tail after the last frame lands.
  cloud   the first call's request (the task) goes up; the others and their frames stay in
          the datacenter; the final answer comes down when the session ends.
  local   nothing crosses the link; compute energy is the recording's (or an estimate from
          its CPU-seconds when it was recorded on another mode). With ``--device-profile``
          the model runs on that device instead: each call's prefill and decode take the
          profile's token rates (throttled after its sustained-compute limit, counted over
          the session's generation), and its generation energy is the profile's power.

auto    a policy (``--config``'s ``auto:`` section, or ``--auto-table`` from ``harness auto fit``)
        picks a mode per session, as the proxy does with ``auto.scope: session``. Replay re-costs
        time and energy but cannot re-grade a task under another placement, so with auto in
        ``--modes`` every mode replays, per task, a recording graded under its own placement
        (local: a local recording; hybrid and cloud: a hybrid or cloud one, preferring one recorded
        in that mode, then on that network), and auto takes the recording of the placement it
        chose, outcome included. Tasks without recordings of both
        placements are left out of every mode and listed in run.json. Each session runs on a
        fresh link and idle radio here (no tail carried over from the previous task).

Every session gets the proxy's device-energy ledger (proxy.profiles.device_energy):
baseline power x wall time + on-device generation + on-device tools + settled radio.

The next call is sent the recorded client and tool time after the previous one returned.
Sessions of one device run one after another with their recorded gaps, so the radio's tail
carries over as it did live; each mode x network combination starts with fresh links and
idle radios, seeded like the proxy (``--seed`` = ``server.seed``). Rows in ``results.jsonl``
have the shape ``python -m harness run`` writes, so ``harness.agents.report`` summarises them.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from proxy import policy as auto_policy
from proxy.config import AUTO, MODE_PLACEMENT, MODES, PLACEMENTS, ConfigError
from proxy.config import load as load_config
from proxy.device import Device
from proxy.energy import ComputeEnergy
from proxy.link import DELAY_PARTS, pocket_agent, presets_from_config
from proxy.meter import NetTally, radio_fields
from proxy.radio import RADIO_PROFILES
from proxy.profiles import PROFILES, DeviceProfile, device_energy, generation_j
from proxy.router import Session as ProxySession

from harness.replay import trace as tr
from harness.agents import report, where
from harness.agents.run import Gaps, arrivals, task_gap, task_totals
from harness.common.stats import mean, percentile


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


class Replayer:
    """Replays sessions under one mode and network preset."""

    def __init__(self, mode: str, preset, seed: int | str, energy: ComputeEnergy, gaps: Gaps | None = None,
                 cold_radio: bool = False):
        self.mode, self.preset, self.seed, self.energy = mode, preset, seed, energy
        # as harness run's --task-gap and --cold-radio: drawn think time instead of the recorded
        # gap, and each session on a fresh link and idle radio (the proxy's device reset)
        self.gaps, self.cold_radio = gaps, cold_radio
        self.network = preset.name
        self.profile = energy.profile
        # the model on a modelled device: its timing comes from the profile, not the recording
        self.rescale = mode == "local" and self.profile.name != "host"

    def device_rows(self, device: str, sessions: list[tr.Session]) -> list[dict]:
        """One device's sessions, in recorded order, on one link and radio."""
        dev = None if self.mode == "local" else Device(self.network, self.preset, f"{self.seed}:{device}")
        rows = []
        t, base, prev = 0.0, sessions[0].started_at, None
        for s in sessions:
            if prev is not None and self.gaps is not None and self.gaps.spec is not None:
                t += self.gaps.next(device)
            elif prev is not None:
                t += max(0.0, s.started_at - prev.recorded_end)  # grading, setup: the recorded gap
            if prev is not None and self.cold_radio and dev is not None:
                dev = Device(self.network, self.preset, f"{self.seed}:{device}")  # as the proxy rebuilds it
            row, t = self.session(s, dev, t, base)
            rows.append(row)
            prev = s
        return rows

    def session(self, s: tr.Session, dev: Device | None, t0: float, base: float):
        radio = dev.link.radio if dev is not None else None
        promotions0 = radio.promotions if radio else 0
        psession = ProxySession(s.id, self.mode, self.network, dev)
        t = t0 + s.lead_s
        llm_calls, error = [], None
        generated_s = 0.0  # the session's generation so far, for the profile's throttling
        for i, c in enumerate(s.calls):
            if self.rescale:
                c, gen_s = on_device(c, self.profile, generated_s)
                generated_s += gen_s
            if dev is None:
                up = down = None
            elif self.mode == "hybrid" or s.one_call:
                up = down = dev
            else:  # cloud: only the task goes up, with the first call
                up, down = (dev if i == 0 else None), None
            record, client = self.call(c, s, t, up, down, base, i)
            psession.add(record, record.pop("_charge"), up or down)
            llm_calls.append(client)
            if s.timeout_s is not None and client["e2e_s"] > s.timeout_s and error is None:
                error = (f"replayed call {i + 1} takes {client['e2e_s']:.1f} s, past the client's "
                         f"{s.timeout_s:g} s timeout")
            t += client["e2e_s"] + c.gap_s
        out = {"session": s.id, "mode": self.mode, "network": self.network, "calls": psession.calls,
               **psession.totals}
        if self.mode == "cloud" and dev is not None and not s.one_call:  # as the proxy's session end
            tally = NetTally()
            nbytes = s.final_answer_bytes or 0
            t = dev.send("down", t, nbytes, tally)
            psession.charges.append((dev, tally.charge))
            out["bytes_down"] += nbytes
            out["net_delay_s"] += tally.added_s
            out["final_answer_delay_s"] = tally.added_s
        # As the proxy's session end: wait for the last tail, so radio_j is what was spent
        # (proxy.device.settle); the wait delays the next session, not this one's wall time.
        wait = 0.0
        if radio is not None and any(ch.pending for _, ch in psession.charges):
            wait = max(0.0, radio.quiet_at - t)
            radio.advance(t + wait)
        out["radio_settle_wait_s"] = wait
        out.update(psession.radio())
        t += s.end_s
        tool_cpu = s.tool_cpu_s if s.tool_cpu_s is not None else (s.tool_s or 0.0)  # unrecorded: wall as a bound
        out.update(wall_s=t - t0, tool_cpu_s=tool_cpu, tool_cpu_recorded=s.tool_cpu_s is not None,
                   **device_energy(self.profile, self.mode, t - t0, out["compute_j"], tool_cpu, out["radio_j"],
                                   self.energy.tool_core_w))
        task = s.task
        row = {
            "dataset": task.get("dataset"), "task_id": task.get("task_id"), "sample": task.get("sample"),
            "repeat": task.get("repeat"), "mode": self.mode, "network": self.network, "model": s.model,
            "device": s.device, "session": s.id, "run_mode": "replay", "protocol": task.get("protocol"),
            "started_at": base + t0, "wall_s": t - t0,
            "passed": bool(task.get("passed")) and error is None, "extracted": task.get("extracted"),
            "grade_detail": task.get("grade_detail"), "answer": task.get("answer"),
            "answer_source": task.get("answer_source"), "stop_reason": task.get("stop_reason"),
            "error": error or task.get("error"), "turns": task.get("turns", len(s.calls)),
            "n_llm_calls": len(s.calls), "n_tool_calls": task.get("n_tool_calls"),
            "llm_wall_s": sum(c["e2e_s"] for c in llm_calls), "tool_wall_s": s.tool_s,
            **task_totals(llm_calls, out),
            "radio": self.preset.radio if dev is not None else None,  # local mode keeps the radio idle
            "promotions": (radio.promotions - promotions0) if radio else 0,
            "llm_calls": llm_calls, "tool_calls": task.get("tool_calls") or [], "session_record": out,
            "replay": {"recorded_mode": s.mode, "recorded_network": s.network, "recorded_wall_s": s.wall_s,
                       "source": s.source, "seed": self.seed, "flags": s.flags},
        }
        return row, t + wait

    def call(self, c: tr.Call, s: tr.Session, t: float, up: Device | None, down: Device | None,
             base: float, i: int) -> tuple[dict, dict]:
        """One call sent at ``t``: the proxy's record and the client's, as a live run keeps them."""
        radio = (up or down).link.radio if (up or down) else None
        promotions0 = radio.promotions if radio else 0
        tally = NetTally()
        ready = up.send("up", t, c.bytes_up, tally) if up else t
        if down is not None:
            send = down.send
            deliveries = [send("down", ready + off, n, tally) for off, n, _ in c.frames]
        else:
            deliveries = [ready + f[0] for f in c.frames]
        end = deliveries[-1] + c.tail_s
        if c.stream:
            ttft = deliveries[0] - t
        else:  # non-streamed: the proxy times the first token where it was made
            ttft = ready + (c.first_token_s or 0.0) - t
        tpot = None
        if c.completion_tokens > 1 and c.stream:
            tpot = (deliveries[-1] - deliveries[0]) / (c.completion_tokens - 1)
        compute_j, method = 0.0, None
        if self.rescale:
            compute_j, method = generation_j(self.profile, c.cpu_s), f"profile:{self.profile.name}"
        elif self.mode == "local" and c.in_process:
            if c.compute_method is not None and c.compute_j is not None:
                compute_j, method = c.compute_j, c.compute_method
            elif c.cpu_s:
                compute_j, method = self.energy.estimate_j(c.cpu_s), "estimate"
        e2e = end - t
        record = {
            "request_id": f"replay-{s.id}-{i + 1}", "model": s.model, "backend": c.backend,
            # the recorded generation stands in for the other placement's when the mode moves the model
            "placement": MODE_PLACEMENT[self.mode],
            "placement_emulated": MODE_PLACEMENT[self.mode] != MODE_PLACEMENT.get(s.mode, MODE_PLACEMENT[self.mode]),
            "mode": self.mode,
            "network": self.network, "device": s.device, "session": s.id, "status": c.status, "error": c.error,
            "finish_reason": c.finish_reason, "ttft_s": ttft, "backend_ttft_s": c.first_token_s, "e2e_s": e2e,
            "tpot_s": tpot, "queue_s": c.queue_s, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "usage_source": c.usage_source, "chunks": len(c.frames),
            "bytes_up": c.bytes_up, "bytes_down": sum(f[1] for f in c.frames),
            "net_delay_s": {"total": tally.added_s,
                            **{p: getattr(tally.up, p) + getattr(tally.down, p) for p in DELAY_PARTS}},
            **radio_fields(tally.charge), "compute_j": compute_j, "compute_energy_method": method, "cpu_s": c.cpu_s,
            "energy_per_token_j": ((tally.radio_j + compute_j) / c.completion_tokens
                                   if c.completion_tokens and (tally.radio_j or compute_j) else None),
            **self.energy.cloud_cost(s.model, self.mode, c.prompt_tokens, c.completion_tokens),
            "promotions": (radio.promotions - promotions0) if radio else 0, "replayed": True,
            "_charge": tally.charge,
        }
        # the client's view: content-bearing frames (all but a trailing finish frame) and its overheads
        content = deliveries[:-1] if c.stream and c.finish_reason and len(deliveries) > 1 else deliveries
        itl = [b - a for a, b in zip(content, content[1:])]
        client = {
            "ok": c.status == 200 and not c.error, "status": c.status, "error": c.error,
            "finish_reason": c.finish_reason,
            "started_at": base + t, "ttft_s": (ttft + c.client_ttft_s) if c.stream else None,
            "e2e_s": e2e + c.client_e2e_s, "itl_mean_s": mean(itl), "itl_p50_s": percentile(itl, 50),
            "itl_p95_s": percentile(itl, 95), **c.client, "edgemeter": record,
        }
        return record, client


def on_device(c: tr.Call, p: DeviceProfile, generated_s: float) -> tuple[tr.Call, float]:
    """The call generated on device ``p``: prefill at its prefill rate, then each token at its
    decode rate, which drops to ``p.throttled`` of itself once the session has generated for
    ``p.throttle_after_s``. Frames keep their bytes and tokens; their times are the profile's.
    Returns the call (its ``cpu_s`` now holds the generation seconds) and those seconds."""
    t = c.prompt_tokens / p.prefill_tok_s
    frames = []
    for _, nbytes, tokens in c.frames:
        for _ in range(tokens):
            throttled = generated_s + t >= p.throttle_after_s
            t += 1.0 / (p.decode_tok_s * (p.throttled if throttled else 1.0))
        frames.append([t, nbytes, tokens])
    first = next((f[0] for f in frames if f[2]), None)
    return dataclasses.replace(c, frames=frames, first_token_s=first, queue_s=0.0, cpu_s=t,
                               compute_j=None, compute_method=None), t


def group_by_device(sessions: list[tr.Session]) -> dict[str, list[tr.Session]]:
    groups: dict[str, list[tr.Session]] = defaultdict(list)
    for s in sorted(sessions, key=lambda s: s.started_at):
        groups[s.device].append(s)
    return groups


def sweep(sessions: list[tr.Session], modes: list[str], presets: list, seed: int | str,
          energy: ComputeEnergy, task_gap: tuple[str, float] | None = None, cold_radio: bool = False) -> list[dict]:
    """Every session under every mode x preset."""
    groups = group_by_device(sessions)
    rows = []
    for mode in modes:
        for preset in presets:
            # every mode x preset draws the same think times: their comparison is paired
            r = Replayer(mode, preset, seed, energy, Gaps(task_gap, seed), cold_radio)
            for device, group in groups.items():
                rows += r.device_rows(device, group)
    return rows


def _task(s: tr.Session) -> tuple:
    return tuple(s.task.get(k) for k in ("dataset", "task_id", "sample", "repeat"))


def own_placement_sweep(sessions: list[tr.Session], modes: list[str], presets: list, seed: int | str,
                        energy: ComputeEnergy, pol: auto_policy.Policy | None) -> tuple[list[dict], dict]:
    """Every task with recordings of both placements, each mode (auto included) replayed from the
    recording graded under the placement it needs (see the module's doc). Returns rows and what
    run.json says about it."""
    by_task: dict[tuple, list[tr.Session]] = defaultdict(list)
    for s in sorted(sessions, key=lambda s: s.started_at):
        by_task[_task(s)].append(s)

    def placements(recs: list[tr.Session]) -> set[str]:
        return {MODE_PLACEMENT.get(s.mode, s.mode) for s in recs}

    def recording(recs: list[tr.Session], mode: str, network: str) -> tr.Session:
        """The recording graded under the mode's placement, closest to what is replayed: recorded in
        that mode, then on that network, then the earliest."""
        own = [s for s in recs if MODE_PLACEMENT.get(s.mode, s.mode) == MODE_PLACEMENT[mode]]
        return min(own, key=lambda s: (s.mode != mode, s.network != network, s.started_at))
    complete = {k: v for k, v in by_task.items() if set(PLACEMENTS) <= placements(v)}
    rows, chosen = [], Counter()
    for preset in presets:
        cache: dict[tuple, dict] = {}

        def replayed(mode: str, s: tr.Session) -> dict:
            if (mode, s.id) not in cache:
                row = Replayer(mode, preset, seed, energy).device_rows(s.device, [s])[0]
                row["replay"]["own_placement"] = True  # pairs with other modes by task, not by recording
                cache[(mode, s.id)] = row
            return cache[(mode, s.id)]
        for recs in complete.values():
            rows += [replayed(m, recording(recs, m, preset.name)) for m in modes if m != AUTO]
            if AUTO in modes:
                # what the policy sees: the task's first call (the same request in every recording)
                first = recs[0]
                f = auto_policy.Features(first.calls[0].prompt_tokens, None, first.task.get("protocol") == "native",
                                         first.task.get("dataset"))
                d = auto_policy.DeviceState(preset.rtt_ms, preset.up_mbps, preset.down_mbps, preset.loss,
                                            preset.radio == "none", pol.battery_pct, preset.name)
                decision = pol.decide(f, d).served("session")
                rec = recording(recs, decision.chosen, preset.name)
                info = {**decision.record(), "scope": "session", "prompt_tokens_source": "recorded",
                        "recording": rec.id, "recorded_mode": rec.mode}
                row = replayed(decision.chosen, rec)
                chosen[decision.chosen] += 1
                rows.append({**row, "mode": AUTO, "auto": info,
                             "llm_calls": [{**c, "edgemeter": {**c["edgemeter"], "auto": info}}
                                           for c in row["llm_calls"]]})
    info = {"policy": pol.kind if pol else None, "tasks": len(complete), "chosen": dict(chosen),
            "missing_a_placement": [{"task": list(k), "recorded": sorted(placements(v))} for k, v in by_task.items()
                                    if k not in complete],
            "accuracy_from": "each mode's own placement's recording of the task; auto's from the placement it chose"}
    return rows, info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness replay", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("traces", nargs="+", help="trace files, harness run directories or results.jsonl, proxy request logs")
    a("--out", required=True, help="directory for results.jsonl, run.json and the report")
    a("--modes", default=",".join(MODES), help="comma-separated deployment modes (default: the fixed ones); "
      "auto needs a policy (--config's auto: section or --auto-table) and recordings of both placements")
    a("--auto-table", help="auto's policy: a table from python -m harness auto fit (default: --config's auto:)")
    a("--networks", help="comma-separated network presets (default: every preset known; with --grid: 4g)")
    a("--grid", nargs="+", metavar="KEY=SPEC", help="also replay a grid of custom presets around each network: "
      "KEY is one of " + ", ".join(GRID_KEYS) + "; SPEC is LO..HI (5 log-spaced values), LO..HI:N, or V1,V2,...; "
      "the report gives the break-even points where two modes' ranking flips")
    a("--recorded-modes", help="replay only sessions recorded in these modes (e.g. local: the device's "
                               "recordings, whose measured compute energy local mode keeps)")
    a("--radio", choices=sorted(RADIO_PROFILES), help="radio profile for every preset (default: each preset's own)")
    a("--compat", choices=["pocket-agent"], help="replay under the agent-placement study's network and radio model "
                                                 "(per-call Gaussian RTT, its radio figures) to set results beside it")
    a("--device-profile", choices=sorted(PROFILES),
      help="device whose energy (and, in local mode, generation speed) to use (default: --config's energy.device)")
    a("--seed", default="0", help="seeds the simulated network as the proxy's server.seed does (default 0)")
    a("--config", help="config.yaml whose networks: and energy: sections to use")
    a("--keep-flagged", action="store_true", help="replay sessions that violate replay's assumptions too "
                                                  "(their rows carry the reasons); default: skip them")
    a("--save-traces", help="also write the loaded sessions as a trace file (harness.replay.trace format)")
    a("--task-gap", type=task_gap, default=None, metavar="SECONDS|exp:MEAN",
      help="think time between a device's sessions instead of the recorded gap (as harness run's)")
    a("--cold-radio", action="store_true", help="each session on a fresh link and idle radio (as harness run's)")
    a("--live", metavar="BASE_URL", help="send the sessions to this live server at their recorded pacing, as "
                                          "load (harness.replay.live), instead of costing them on the simulator")
    a("--api-key", help="with --live")
    a("--model", help="with --live: the model to ask (default: the server's first)")
    a("--no-report", action="store_true")
    report.add_price_arg(p)
    a("--no-plots", action="store_true")
    return p


GRID_KEYS = ("rtt_ms", "jitter_ms", "loss", "up_mbps", "down_mbps")
GRID_POINTS = 5


def grid_axis(text: str) -> tuple[str, list[float]]:
    """``rtt_ms=10..500`` -> ("rtt_ms", [10, 26.6, 70.7, 188, 500]): log-spaced (network conditions
    matter by ratio), linear when LO is 0; ``:N`` sets the count; ``a,b,c`` lists them."""
    key, _, spec = text.partition("=")
    if key not in GRID_KEYS:
        raise ValueError(f"--grid {text}: unknown key {key!r} (known: {', '.join(GRID_KEYS)})")
    try:
        if ".." in spec:
            span, _, n = spec.partition(":")
            lo, hi = (float(x) for x in span.split(".."))
            n = int(n) if n else GRID_POINTS
            if n < 2 or lo >= hi or lo < 0:
                raise ValueError
            if lo > 0:
                values = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
            else:
                values = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
            values = [float(f"{v:.3g}") for v in values]  # readable preset names
        else:
            values = sorted(float(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--grid {text}: give {key}=LO..HI, {key}=LO..HI:N (N >= 2, 0 <= LO < HI) "
                         f"or {key}=V1,V2,...") from None
    return key, values


def grid_presets(bases: list, axes: dict[str, list[float]]) -> tuple[list, dict]:
    """A custom preset per base x grid point, named ``4g~rtt_ms=50,down_mbps=5``; the base's other
    settings (jitter, loss, radio) stay."""
    presets, spec = [], {}
    for base in bases:
        for values in itertools.product(*axes.values()):
            over = dict(zip(axes, values))
            name = base.name + "~" + ",".join(f"{k}={v:g}" for k, v in over.items())
            presets.append(dataclasses.replace(base, name=name, **over))
            spec[name] = {"base": base.name, **over}
    return presets, {"axes": axes, "presets": spec}


def _source_info(paths: list[str]) -> dict:
    """The recorded run's settings (for the report header), from the first run.json found."""
    for p in paths:
        d = Path(p) if Path(p).is_dir() else Path(p).parent
        if (d / "run.json").exists():
            return json.loads((d / "run.json").read_text())
    return {}


def _live(args, argv: list[str]) -> int:
    import asyncio

    from harness.common import provenance
    from harness.common.client import OpenAIClient
    from harness.replay.live import replay_live
    sessions = [s for path in args.traces for s in tr.load(path)]
    if not sessions:
        raise SystemExit("replay: no sessions in the traces")

    async def go():
        result = await replay_live(sessions, args.live, api_key=args.api_key, model=args.model, seed=args.seed)
        async with OpenAIClient(args.live, api_key=args.api_key) as c:
            return result, await provenance.collect(c)
    result, prov = asyncio.run(go())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "live.json").write_text(json.dumps({"kind": "edgemeter-live-replay", "command": argv,
                                               "provenance": prov, "benchmarks": [result]}, indent=2, default=str))
    print(f"{result['sessions']} sessions, {result['turns']} turns: {result['completed']} completed, "
          f"{result['failed']} failed; sent at most {result['late_s_max'] * 1000:.1f} ms after their recorded "
          f"pacing; wrote {out / 'live.json'}")
    return 0 if not result["failed"] else 1


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    try:
        config = load_config(args.config) if args.config else None
        presets = presets_from_config(config.networks if config else None)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"replay: {e}") from None
    modes = _csv(args.modes)
    for m in modes:
        if m not in MODES + (AUTO,):
            raise SystemExit(f"replay: unknown mode {m!r} (known: {', '.join(MODES + (AUTO,))})")
    pol = config.auto if config else None
    if args.auto_table:
        try:
            pol = auto_policy.Policy("table", "hybrid", "session", 100.0, table=auto_policy.load_table(args.auto_table))
        except ValueError as e:
            raise SystemExit(f"replay: --auto-table: {e}") from None
    if AUTO in modes and pol is None:
        raise SystemExit("replay: mode auto needs a policy: --auto-table FILE or a --config with an auto: section")
    names = _csv(args.networks) or (["4g"] if args.grid else list(presets))
    for n in names:
        if n not in presets:
            raise SystemExit(f"replay: unknown network preset {n!r} (known: {', '.join(presets)})")
    chosen = [pocket_agent(presets[n]) if args.compat else presets[n] for n in names]
    if args.radio:
        chosen = [dataclasses.replace(p, radio=args.radio) for p in chosen]
    grid = None
    if args.grid:
        try:
            extra, grid = grid_presets(chosen, dict(grid_axis(g) for g in args.grid))
        except ValueError as e:
            raise SystemExit(f"replay: {e}") from None
        chosen += extra
    seed = int(args.seed) if args.seed.lstrip("-").isdigit() else args.seed
    device = {"device": args.device_profile} if args.device_profile else {}
    energy = ComputeEnergy.from_config({**(config.energy if config else {}), "method": "estimate", **device})

    if args.live:
        return _live(args, argv)
    sessions = []
    for path in args.traces:
        try:
            sessions += tr.load(path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"replay: {e}") from None
    if args.recorded_modes:
        sessions = [s for s in sessions if s.mode in _csv(args.recorded_modes)]
    tr.validate(sessions)
    if args.save_traces:
        tr.save(args.save_traces, sessions)
    flagged = [s for s in sessions if s.flags]
    usable = [s for s in sessions if not s.flags or (args.keep_flagged and tr.replayable(s))]
    t_loaded = time.perf_counter()
    auto_info = None
    if AUTO in modes:
        if args.task_gap or args.cold_radio:
            print("auto: each task is replayed from its own recording on a fresh link with an idle radio; "
                  "--task-gap and --cold-radio do not apply", file=sys.stderr)
        rows, auto_info = own_placement_sweep(usable, modes, chosen, seed, energy, pol)
        if auto_info["missing_a_placement"]:
            print(f"auto: {len(auto_info['missing_a_placement'])} task(s) lack a recording of both placements "
                  f"(device and cloud) and are left out of every mode", file=sys.stderr)
    else:
        rows = sweep(usable, modes, chosen, seed, energy, args.task_gap, args.cold_radio)
    t_replayed = time.perf_counter()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Recomputed whole, never resumed: one write, not a live run's fsync per attempt.
    tmp = out / "results.jsonl.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row, separators=(",", ":"), default=str) + "\n" for row in rows)
    os.replace(tmp, out / "results.jsonl")
    info = _source_info(args.traces)
    seen = {k: ",".join(sorted({str(s.task.get(k)) for s in usable})) for k in ("dataset", "protocol")}
    info_args = {**seen, **(info.get("args") or {}), "base_url": "replay of " + ", ".join(args.traces)}
    kept = {id(s) for s in usable}
    skipped = [{"session": s.id, "device": s.device, "source": s.source, "reasons": s.flags}
               for s in flagged if id(s) not in kept]
    run_info = {"args": info_args, "run_mode": "replay", "k": info.get("k") or [1],
                "sandbox_isolation": info.get("sandbox_isolation") or [],
                "arrivals": arrivals(args, seed) if args.task_gap or args.cold_radio else
                {"task_gap": None, "cold_radio": False, "described": "the recorded gaps between sessions"},
                "replay": {"argv": argv, "seed": seed, "modes": modes, "networks": names, "radio": args.radio,
                           "compat": args.compat,
                           "sessions": len(sessions), "replayed": len(usable), "skipped": skipped,
                           "flagged": len(flagged), "replay_s": t_replayed - t_loaded, "grid": grid,
                           "auto": auto_info},
                "written_at": time.time()}
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(run_info, indent=2))
    os.replace(tmp, out / "run.json")
    if not args.no_report:
        report.write_report(out, with_plots=not args.no_plots, price=args.cloud_price)

    reasons = Counter(f.split(":", 1)[0] for s in flagged for f in s.flags)
    print(f"{len(usable)} of {len(sessions)} sessions x {len(modes)} modes x {len(chosen)} networks = {len(rows)} "
          f"replayed task runs in {t_replayed - t_loaded:.2f} s ({time.perf_counter() - t_start:.2f} s in all); "
          f"they would take {sum(r['wall_s'] for r in rows) / 3600:.2f} h live, one at a time", file=sys.stderr)
    if flagged:
        print(f"{len(flagged)} sessions flagged, {len(skipped)} skipped: "
              + ", ".join(f"{k} x{n}" for k, n in reasons.most_common()), file=sys.stderr)
        for s in flagged[:10]:
            print(f"  {s.id} ({s.device}): {'; '.join(s.flags)}", file=sys.stderr)
    if "cloud" in modes and any(s.final_answer_bytes is None and not s.one_call for s in usable):
        print("note: some sessions do not say how big their final answer was (a proxy log); cloud mode sends "
              "them down as an empty answer", file=sys.stderr)
    print(table(rows))
    if grid:
        print("\n" + where.break_even_table(where.break_even(where.decide(rows, args.cloud_price), grid)))
    if not args.no_report:
        print(f"report: {out / 'report.md'}", file=sys.stderr)
    return 0 if rows or not sessions else 1


def table(rows: list[dict]) -> str:
    """Per mode x network: the medians a deployment decision needs."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["mode"], r["network"])].append(r)
    head = ["mode / network", "radio", "tasks", "wall s p50", "TTFT s p50", "net share", "radio J p50",
            "compute J p50", "device J p50", "cloud $ p50", "datacenter J p50", "promotions/task"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, net), g in groups.items():
        ttft = [c["edgemeter"]["ttft_s"] for r in g for c in r["llm_calls"] if c["edgemeter"]["ttft_s"] is not None]
        wall = [r["wall_s"] for r in g]
        netd = sum(r["net_delay_s"] or 0.0 for r in g)
        cells = [f"{mode} / {net}", g[0]["radio"] or "-", str(len(g)), f"{percentile(wall, 50):.3f}",
                 f"{percentile(ttft, 50):.3f}" if ttft else "n/a", f"{netd / sum(wall):.3f}" if sum(wall) else "n/a",
                 f"{percentile([r['radio_j'] or 0.0 for r in g], 50):.3f}",
                 f"{percentile([r['compute_j'] or 0.0 for r in g], 50):.3f}",
                 f"{percentile([r['energy_j'] or 0.0 for r in g], 50):.3f}",  # the device axis ...
                 f"{percentile([r['cloud_usd'] or 0.0 for r in g], 50):.6f}",  # ... and the cloud's, never summed
                 f"{percentile([r['cloud_j'] or 0.0 for r in g], 50):.3f}",
                 f"{mean([r['promotions'] for r in g]):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
