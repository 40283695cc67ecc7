"""Speed next to quality across a quantization ladder, and the speed-quality Pareto frontier.

    python -m harness bench quality --ladder models/ladder/ladder.json --out results/quality

Each rung runs in a fresh process, so its peak RSS is that model's alone. Speed first:
for each prompt length, one warmup generation is discarded, then ``--runs`` timed ones
(greedy, exactly ``--gen-tokens`` tokens, no early stop) give TTFT, prompt tok/s and
decode tok/s as mean ± std; peak RSS is read right after. Then perplexity on the first
``--ppl-max-tokens`` tokens of the text (``backends.quality.perplexity``, same windows for every
rung). Writes results.json, results.md (Markdown tables) and pareto.png to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np

from backends.quality import perplexity as ppl_mod
from harness import data

DEFAULT_PROMPT_LENGTHS = (32, 128, 512)


# ---------------------------------------------------------------- Pareto (pure)

def pareto_front(points: Sequence[tuple[str, float, float]]) -> tuple[list[str], dict[str, str]]:
    """Points are (name, speed, ppl): more speed is better, less perplexity is better.
    Returns the frontier's names, fastest first, and for each dominated point the fastest
    point that dominates it (at least as fast and as good, strictly better in one)."""
    front, dominated = [], {}
    for name, speed, ppl in points:
        better = [(s, n) for n, s, p in points if s >= speed and p <= ppl and (s > speed or p < ppl)]
        if better:
            dominated[name] = max(better)[1]
        else:
            front.append((speed, name))
    return [n for _, n in sorted(front, reverse=True)], dominated


# ---------------------------------------------------------------- timing, in the rung's process

class LlamaRunner:
    def __init__(self, path: str, n_ctx: int, n_threads: int | None):
        self.llm = ppl_mod.open_llama(path, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=n_threads,
                                      n_threads_batch=n_threads)
        self.bos = ppl_mod.llama_bos(self.llm)

    def tokenize(self, text: str) -> list[int]:
        return ppl_mod.llama_tokens(self.llm, text)

    def stream(self, prompt: list[int], n: int):
        self.llm.reset()  # no KV reuse between runs: every run pays for its whole prompt
        tokens = self.llm.generate(prompt, temp=0.0)
        for _ in range(n):
            yield next(tokens)
        tokens.close()


class MLXRunner:
    def __init__(self, path: str):
        from mlx_lm import load
        self.model, self.tokenizer = load(path)
        self.bos = ppl_mod.mlx_bos(self.tokenizer)

    def tokenize(self, text: str) -> list[int]:
        return ppl_mod.mlx_tokens(self.tokenizer, text)

    def stream(self, prompt: list[int], n: int):
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        for token, _ in generate_step(mx.array(prompt), self.model, max_tokens=n):
            yield token


def time_generation(runner, prompt: list[int], gen_tokens: int) -> tuple[float, float, float]:
    """(TTFT s, prompt tok/s, decode tok/s) of one greedy generation of ``gen_tokens`` tokens.
    TTFT covers prompt processing and the first token; decode rate is over the rest."""
    start = time.perf_counter()
    stream = runner.stream(prompt, gen_tokens)
    next(stream)
    first = time.perf_counter()
    n = 1 + sum(1 for _ in stream)
    end = time.perf_counter()
    return first - start, len(prompt) / (first - start), (n - 1) / (end - first)


def _mean_std(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def measure_rung(rung: dict, cfg: dict) -> dict:
    """Everything about one rung. Runs in its own process (see ``run``)."""
    text = Path(cfg["text"]).read_text(encoding="utf-8")
    lengths, gen = cfg["prompt_lengths"], cfg["gen_tokens"]
    if rung["engine"] == "mlx":
        runner = MLXRunner(rung["path"])
    else:
        runner = LlamaRunner(rung["path"], max(lengths) + gen + 16, cfg["threads"])
    # Prompts come from the text's second half, away from the perplexity slice at its head.
    body = runner.tokenize(text[len(text) // 2:][: max(lengths) * 16])
    prefix = [] if runner.bos is None else [runner.bos]
    speed = {}
    for length in lengths:
        prompt = prefix + body[: length - len(prefix)]
        samples = [time_generation(runner, prompt, gen) for _ in range(cfg["warmup"] + cfg["runs"])]
        ttft, prompt_tps, decode_tps = zip(*samples[cfg["warmup"]:], strict=True)
        speed[str(length)] = {"ttft_ms": _mean_std([t * 1000 for t in ttft]),
                              "prompt_tps": _mean_std(prompt_tps), "decode_tps": _mean_std(decode_tps)}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    del runner

    scorer = ppl_mod.open_scorer(Path(rung["path"]), rung["engine"], cfg["ctx"], cfg["threads"])
    try:
        tokens = ppl_mod.corpus_tokens(scorer, text, cfg["ppl_max_tokens"])
        sums, counts = ppl_mod.evaluate(scorer, tokens, cfg["ctx"], cfg["stride"])
    finally:
        scorer.close()
    ppl, ci, std = ppl_mod.summarize(sums, counts)
    return {**rung, "peak_rss": peak_rss, "speed": speed,
            "ppl": {"value": ppl, "ci95": ci, "window_std": std, "tokens": int(counts.sum()),
                    "windows": len(counts), "window_nll": sums.tolist(), "window_tokens": counts.tolist()}}


def run(rungs: list[dict], cfg: dict, log=print) -> list[dict]:
    results = []
    for rung in rungs:
        log(f"measuring {rung['name']} ({rung['engine']})")
        # One process per rung and no reuse: peak RSS and allocator state start clean.
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            results.append(pool.submit(measure_rung, rung, cfg).result())
    return results


# ---------------------------------------------------------------- reports

def _pm(stat: dict, digits: int = 1) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def frontier(results: list[dict], at: str) -> tuple[list[str], dict[str, str]]:
    return pareto_front([(r["name"], r["speed"][at]["decode_tps"]["mean"], r["ppl"]["value"]) for r in results])


def paired(result: dict, ref: dict | None) -> tuple[float, tuple[float, float]] | None:
    """PPL relative to the reference rung, paired over the same windows; None when not comparable."""
    if ref is None or result["ppl"]["window_tokens"] != ref["ppl"]["window_tokens"]:
        return None
    return ppl_mod.paired_ratio(ref["ppl"]["window_nll"], result["ppl"]["window_nll"], result["ppl"]["window_tokens"])


def reference(results: list[dict], meta: dict) -> dict | None:
    return next((r for r in results if r["name"] == meta["reference"]), None)


def vs_reference(result: dict, ref: dict | None) -> str:
    if (p := paired(result, ref)) is None:
        return "-"
    ratio, (lo, hi) = p
    return f"{ratio:.3f} ({lo:.3f}–{hi:.3f})"


def markdown(results: list[dict], meta: dict) -> str:
    at = meta["pareto_at"]
    front, dominated = frontier(results, at)
    ref = reference(results, meta)
    lines = [f"Perplexity: first {meta['ppl_tokens']} tokens of `{Path(meta['text']).name}`, ctx {meta['ctx']}, "
             f"stride {meta['stride']}. Speed: {meta['runs']} runs after {meta['warmup']} warmup, "
             f"{meta['gen_tokens']} generated tokens, {meta['threads']} threads. Base: {meta['base']}.", "",
             f"| rung | engine | size MiB | bpw | peak RSS MiB | PPL (95% CI) "
             f"| PPL ÷ {meta['reference']} (paired 95% CI) "
             f"| decode tok/s @{at} | Pareto |",
             "|---|---|---:|---:|---:|---|---|---:|---|"]
    for r in results:
        p = r["ppl"]
        mark = "frontier" if r["name"] in front else f"dominated by {dominated[r['name']]}"
        bpw = f"{r['bpw']:.2f}" if r.get("bpw") else "-"
        lines.append(f"| {r['name']} | {r['engine']} | {r['bytes'] / 2**20:.0f} | {bpw} | "
                     f"{r['peak_rss'] / 2**20:.0f} | "
                     f"{p['value']:.2f} ({p['ci95'][0]:.2f}–{p['ci95'][1]:.2f}) | {vs_reference(r, ref)} | "
                     f"{_pm(r['speed'][at]['decode_tps'])} | {mark} |")
    lines += ["", "| rung | prompt tokens | TTFT ms | prompt tok/s | decode tok/s |", "|---|---:|---:|---:|---:|"]
    for r in results:
        for length, s in r["speed"].items():
            lines.append(f"| {r['name']} | {length} | {_pm(s['ttft_ms'])} | {_pm(s['prompt_tps'], 0)} | "
                         f"{_pm(s['decode_tps'])} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], meta: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = meta["pareto_at"]
    front, _ = frontier(results, at)
    ref = reference(results, meta)
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    by_speed = sorted(results, key=lambda r: r["speed"][at]["decode_tps"]["mean"])
    for i, r in enumerate(by_speed):
        x, xerr = r["speed"][at]["decode_tps"]["mean"], r["speed"][at]["decode_tps"]["std"]
        y = r["ppl"]["value"]
        # Paired bars (same windows as the reference) show what the quantization changed;
        # the absolute CI mostly shows how hard the text is.
        p = paired(r, ref)
        lo, hi = (ref["ppl"]["value"] * p[1][0], ref["ppl"]["value"] * p[1][1]) if p else r["ppl"]["ci95"]
        on = r["name"] in front
        ax.errorbar(x, y, xerr=xerr, yerr=[[max(y - lo, 0)], [max(hi - y, 0)]],
                    fmt="s" if r["engine"] == "mlx" else "o", color="tab:blue" if on else "0.6",
                    ecolor="0.75", capsize=2, ms=7 if on else 5, zorder=3)
        dy = (6, -13, 17, -24)[i % 4]  # stagger labels: quants of similar speed sit close together
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, dy), fontsize=8,
                    color="black" if on else "0.45")
    pts = sorted((r["speed"][at]["decode_tps"]["mean"], r["ppl"]["value"]) for r in results if r["name"] in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:blue", lw=1.2, alpha=0.7,
            label="Pareto frontier")
    ax.plot([], [], "o", color="0.6", label="dominated (o llama.cpp, s MLX)")
    ax.set_xlabel(f"decode tok/s (prompt {at} tokens; mean ± std of {meta['runs']} runs)")
    bars = f"paired 95% CI vs {meta['reference']}" if ref else "95% CI"
    ax.set_ylabel(f"WikiText-2 perplexity ({meta['ppl_tokens']} tokens; {bars})")
    ax.set_title("Speed vs quality across the quantization ladder", fontsize=11)
    fig.text(0.5, 0.005, f"base: {meta['base']}", ha="center", fontsize=7, color="0.35", wrap=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(x=0.08, y=0.1)  # room for the staggered labels
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ladder", type=Path, help="ladder.json written by python -m backends.quality.ladder")
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md, pareto.png")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw results.md and pareto.png from --out's results.json")
    ap.add_argument("--only", help="comma-separated rung names to run (default: all)")
    ap.add_argument("--text", type=Path, default=None,
                    help="perplexity text and prompt source (default WikiText-2's test.txt from the data folder: "
                         "$EDGEMETER_DATA, else ~/.cache/edgemeter/data)")
    ap.add_argument("--ppl-max-tokens", type=int, default=4096, help="tokens scored for perplexity (default 4096)")
    ap.add_argument("--ctx", type=int, default=512, help="perplexity window (default 512)")
    ap.add_argument("--stride", type=int, default=256, help="perplexity stride (default 256)")
    ap.add_argument("--prompt-lengths", default=",".join(map(str, DEFAULT_PROMPT_LENGTHS)),
                    help="prompt lengths in tokens (default 32,128,512)")
    ap.add_argument("--pareto-at", type=int,
                    help="prompt length whose decode tok/s the frontier uses (default: the middle one)")
    ap.add_argument("--reference", default="F16", help="rung the PPL ratios are paired against (default F16)")
    ap.add_argument("--gen-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per prompt length (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="discarded runs first (default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="llama.cpp threads (default: all cores; 1 when other jobs share the cores, "
                         "since llama.cpp's thread barriers stall when a worker is descheduled)")
    args = ap.parse_args(argv)
    if args.replot:
        saved = json.loads((args.out / "results.json").read_text())
        return report(saved["results"], saved["meta"], args.out)
    if args.ladder is None:
        ap.error("--ladder is required unless --replot")

    manifest = json.loads(args.ladder.read_text())
    rungs = manifest["rungs"]
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        rungs = [r for r in rungs if r["name"] in wanted]
        if missing := wanted - {r["name"] for r in rungs}:
            ap.error(f"--only: no rung named {', '.join(sorted(missing))}")
    lengths = sorted(int(x) for x in args.prompt_lengths.split(","))
    at = args.pareto_at or lengths[len(lengths) // 2]
    if at not in lengths or args.runs < 2 or args.gen_tokens < 2:
        ap.error("--pareto-at must be one of --prompt-lengths; --runs and --gen-tokens at least 2")
    text = args.text or data.resolve("wikitext-2").path
    cfg = {"text": str(text), "prompt_lengths": lengths, "gen_tokens": args.gen_tokens, "runs": args.runs,
           "warmup": args.warmup, "threads": args.threads, "ctx": args.ctx, "stride": args.stride,
           "ppl_max_tokens": args.ppl_max_tokens}
    load_before = os.getloadavg()[0]
    results = run(rungs, cfg)
    meta = {**cfg, "pareto_at": str(at), "ppl_tokens": args.ppl_max_tokens, "base": manifest["base"],
            "reference": args.reference,
            "ladder": str(args.ladder), "loadavg_1m": [load_before, os.getloadavg()[0]]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return report(results, meta, args.out)


def report(results: list[dict], meta: dict, out: Path) -> int:
    text = markdown(results, meta)
    (out / "results.md").write_text(text)
    plot(results, meta, out / "pareto.png")
    print(text)
    print(f"wrote {out / 'results.json'}, results.md, pareto.png")
    return 0
