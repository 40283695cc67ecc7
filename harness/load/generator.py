"""``python -m harness load``: load generator for any OpenAI-compatible server, Edgemeter or not.

Profiles (GuideLLM's names):
  synchronous  one request at a time
  concurrent   ``--concurrency N`` requests in flight, each slot refilled when its request ends
  throughput   as many in flight as ``--max-concurrency`` allows (default 256): saturation
  constant     ``--rate R`` requests/s, evenly spaced (open loop)
  poisson      ``--rate R`` requests/s, exponential gaps (``--burstiness`` != 1: gamma, as vllm)
  sweep        synchronous, then throughput, then ``--sweep-size`` rates evenly in between
With no ``--profile``: ``--rate`` picks constant or poisson (``--arrival``), ``--concurrency``
picks concurrent, otherwise synchronous.

Prompts are synthetic (``--input-tokens`` common words, one token each in BPE vocabularies;
the server's usage counts are what is reported) or GSM8K questions (``--dataset gsm8k``).
Output length is asked for with ``max_tokens`` plus ``ignore_eos``/``min_tokens`` when the
server accepts them (one probe request finds out). Warm-up requests (``--warmup N`` or
``--warmup 5s``) are sent but not counted; ``--max-requests``/``--duration`` bound the rest.

Reported per benchmark with vllm bench serve's names: completed, failed, request and token
throughput, goodput (``--goodput ttft:MS tpot:MS e2el:MS``, DistServe's definition: a request
is good when it meets every SLO given), and mean/median/std/percentiles of TTFT, TPOT
((e2el - ttft) / (output tokens - 1)), ITL (gap between content chunks) and E2EL, in ms.
A non-streamed request's TTFT is its E2EL (its first token arrives with its last).
``--out DIR`` writes NAME.json and NAME.csv; ``python -m harness load compare A.json B.json``
puts two runs side by side.

Shaped like GuideLLM's benchmark package: one module per profile in ``profiles/`` (its
schedule and its benchmarks), one per output format in ``outputs/``; this module sends the
requests and measures them.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.common import provenance
from harness.common.client import CallResult, OpenAIClient, add_api_key_argument
from harness.common.procs import StartedProxy, run_uvloop
from harness.common.stats import mean, percentile, std
from harness.load import profiles
from harness.load.outputs import compare, console, csv, json
from harness.load.profiles import PROFILES, Spec, arrivals, throughput

H_MODE, H_NETWORK, H_DEVICE = "X-Edgemeter-Mode", "X-Edgemeter-Network", "X-Edgemeter-Device"
# Common English words that BPE tokenizers (GPT, Llama, Qwen, SmolLM) keep as one token with their leading space.
WORDS = ("the of and to in is was for that on as with by he it at from his an were are which this be or "
         "has had first one their its new after who they have her she two been other when there all during "
         "into school time may years more most only over city some world would where later up such used many "
         "can state about national out known university united then made year since south well both under "
         "american three also team called part film would found each season between people north music "
         "group like game high series number early work name through last against while these including "
         "area back public around life history county best family war however much because several second "
         "four long home great major top still before well where day general what water small way").split()


# --- statistics ---

def describe(xs: list[float], percentiles=(90, 99)) -> dict:
    """mean, median, std (sample) and the given percentiles; None where there is no data."""
    out = {"mean": mean(xs), "median": percentile(xs, 50), "std": std(xs)}
    for q in percentiles:
        out[f"p{q:g}"] = percentile(xs, q)
    return out


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """``["ttft:200", "e2el:5000"]`` -> {"ttft": 200.0, "e2el": 5000.0} (milliseconds), as vllm's --goodput."""
    slo = {}
    for item in items or ():
        name, _, value = item.partition(":")
        if name not in ("ttft", "tpot", "e2el"):
            raise ValueError(f"--goodput: unknown metric {name!r} (use ttft, tpot, e2el)")
        try:
            slo[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput: {item!r} needs a number of milliseconds, e.g. {name}:200") from None
        if slo[name] <= 0:
            raise ValueError(f"--goodput: {item!r} must be positive")
    return slo


@dataclass
class Sample:
    """One request as the client saw it, with perf_counter send and completion times."""
    index: int
    warmup: bool
    sent: float
    done: float
    result: CallResult
    stream: bool

    @property
    def ttft(self) -> float | None:
        return self.result.ttft_s if self.stream else self.result.e2e_s

    @property
    def output_tokens(self) -> int:
        r = self.result
        return r.completion_tokens or (len(r.itl_s) + 1 if r.ttft_s is not None else 0)

    @property
    def tpot(self) -> float:
        """vllm: (e2el - ttft) / (output tokens - 1), 0 for a one-token output."""
        n, ttft = self.output_tokens, self.ttft
        return (self.result.e2e_s - ttft) / (n - 1) if n > 1 and ttft is not None else 0.0

    def good(self, slo: dict[str, float]) -> bool:
        got = {"ttft": self.ttft, "tpot": self.tpot, "e2el": self.result.e2e_s}
        return all(got[k] is not None and got[k] * 1000 <= v for k, v in slo.items())

    def row(self) -> dict:
        r = self.result
        return {"index": self.index, "warmup": self.warmup, "ok": r.ok, "error": r.error, "sent_s": self.sent,
                "ttft_ms": _ms(self.ttft), "e2el_ms": _ms(r.e2e_s), "itl_ms": [x * 1000 for x in r.itl_s],
                "input_tokens": r.prompt_tokens, "output_tokens": self.output_tokens, "edgemeter": r.edgemeter}


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def summarize(samples: list[Sample], slo: dict[str, float] | None = None, percentiles=(90, 99)) -> dict:
    """vllm bench serve's metrics over the non-warm-up requests. The window runs from the
    first such request's send to the last one's completion."""
    measured = [s for s in samples if not s.warmup]
    ok = [s for s in measured if s.result.ok]
    duration = (max(s.done for s in measured) - min(s.sent for s in measured)) if measured else 0.0

    def rate(n: float) -> float | None:
        return n / duration if duration > 0 else None
    total_in = sum(s.result.prompt_tokens for s in ok)
    total_out = sum(s.output_tokens for s in ok)
    series = {
        "ttft": [s.ttft for s in ok if s.ttft is not None],
        "tpot": [s.tpot for s in ok if s.output_tokens > 1],
        "itl": [x for s in ok for x in s.result.itl_s],
        "e2el": [s.result.e2e_s for s in ok],
    }
    errors: dict[str, int] = {}
    for s in measured:
        if not s.result.ok:
            errors[s.result.error or "error"] = errors.get(s.result.error or "error", 0) + 1
    out = {
        "completed": len(ok), "failed": len(measured) - len(ok), "duration": duration,
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": rate(len(ok)), "output_throughput": rate(total_out),
        "total_token_throughput": rate(total_in + total_out),
        "request_goodput": rate(sum(s.good(slo) for s in ok)) if slo else None,
        # the share of all counted requests (failed ones miss every SLO) that met every SLO
        "slo_attainment_pct": 100 * sum(s.good(slo) for s in ok) / len(measured) if slo and measured else None,
        **energy(ok, total_out),
    }
    for name, xs in series.items():
        for stat, v in describe(xs, percentiles).items():
            out[f"{stat}_{name}_ms"] = _ms(v)
    out["errors"] = errors
    return out


def energy(ok: list[Sample], total_out: int) -> dict:
    """Device energy from Edgemeter's per-request ``edgemeter`` record, when the server sent one:
    radio (spent by the time the request ended; a tail still running is apart, provisional)
    and compute, per request and per output token."""
    recs = [s.result.edgemeter for s in ok if s.result.edgemeter]
    if not recs:
        return {"radio_j_per_request": None, "compute_j_per_request": None, "energy_j_per_output_token": None,
                "radio_tail_provisional_j": None}
    radio = sum(float(r.get("radio_j") or 0) for r in recs)
    compute = sum(float(r.get("compute_j") or 0) for r in recs)
    out_tokens = sum(s.output_tokens for s in ok if s.result.edgemeter)
    return {"radio_j_per_request": radio / len(recs), "compute_j_per_request": compute / len(recs),
            "radio_j_per_output_token": radio / out_tokens if out_tokens else None,
            "compute_j_per_output_token": compute / out_tokens if out_tokens else None,
            "energy_j_per_output_token": (radio + compute) / out_tokens if out_tokens else None,
            "radio_tail_provisional_j": sum(float(r.get("radio_tail_provisional_j") or 0) for r in recs)}


# --- prompts ---

class Prompts:
    """Request bodies: synthetic word prompts (distinct per request, so no prefix cache helps)
    or GSM8K questions in a seeded order."""

    def __init__(self, dataset: str, input_tokens: int, seed: int, data_dir: str | None = None,
                 input_std: float = 0.0):
        self.dataset, self.input_tokens, self.seed = dataset, input_tokens, seed
        self.input_std = input_std
        self.questions: list[str] = []
        if dataset == "gsm8k":
            from harness.common.datasets import load
            self.questions = [t.prompt for t in load("gsm8k", data_dir)]
            random.Random(seed).shuffle(self.questions)
        elif dataset != "synthetic":
            raise ValueError(f"unknown dataset {dataset!r} (synthetic, gsm8k)")

    def messages(self, i: int) -> list[dict]:
        if self.questions:
            return [{"role": "user", "content": self.questions[i % len(self.questions)]}]
        rng = random.Random(f"{self.seed}:{i}")
        n = length(self.input_tokens, self.input_std, random.Random(f"{self.seed}:in:{i}"))
        return [{"role": "user", "content": " ".join(rng.choices(WORDS, k=n))}]


def length(mean_: int, std_: float, rng: random.Random) -> int:
    """A request's token count: ``mean_`` exactly, or normal with ``std_``, cut to 1..2 x mean
    (symmetric, so the mean stays), as GuideLLM's synthetic data's prompt_tokens_stdev."""
    if not std_:
        return mean_
    return int(round(min(2 * mean_, max(1, rng.gauss(mean_, std_)))))


# --- running ---

@dataclass
class Limits:
    max_requests: int | None = 100
    duration: float | None = None
    warmup_requests: int = 0
    warmup_s: float = 0.0


def parse_warmup(text: str) -> tuple[int, float]:
    """``"10"`` -> 10 requests; ``"5s"`` -> the first 5 seconds."""
    try:
        if text.endswith("s"):
            return 0, float(text[:-1])
        return int(text), 0.0
    except ValueError:
        raise ValueError(f"--warmup: {text!r} is neither a request count (10) nor seconds (5s)") from None


async def run(client: OpenAIClient, spec: Spec, body: Callable[[int], dict], limits: Limits, *,
              headers: dict | None = None, seed: int = 0,
              on_delta: Callable[[float, dict], None] | None = None, devices: int = 1,
              ramp_up_s: float = 0.0) -> list[Sample]:
    """Send requests on ``spec``'s schedule until ``limits`` end it; wait for all to finish.
    ``devices`` > 1 spreads them round-robin over that many simulated devices (the
    X-Edgemeter-Device header, ``<device>-<k>``): each has its own link and radio, so 16
    streams are 16 phones, not one phone with 16 streams. ``ramp_up_s`` ramps an open-loop
    rate linearly from 0 to full over that time."""
    headers = headers or {}
    cap = 1 if spec.profile == "synchronous" else spec.cap
    sem = asyncio.Semaphore(cap) if cap else None
    samples: list[Sample] = []
    tasks: list[asyncio.Task] = []
    measured, measure_start = 0, None

    async def one(i: int, warm: bool, b: dict) -> None:
        sent = time.perf_counter()
        try:
            h = {**headers, H_DEVICE: f"{headers.get(H_DEVICE, 'load')}-{i % devices}"} if devices > 1 else headers
            res = await client.chat(b, headers=h, on_delta=on_delta)
        finally:
            if sem:
                sem.release()
        samples.append(Sample(i, warm, sent, time.perf_counter(), res, bool(b.get("stream"))))

    t0 = time.perf_counter()
    schedule = arrivals(spec.profile, spec.rate, burstiness=spec.burstiness, seed=seed)
    if ramp_up_s and spec.rate:
        schedule = (ramped(s, ramp_up_s) for s in schedule)
    for i, offset in enumerate(schedule):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if sem:
            await sem.acquire()
        now = time.perf_counter()
        warm = i < limits.warmup_requests or now - t0 < limits.warmup_s
        if not warm:
            measure_start = measure_start or now
            if (limits.max_requests is not None and measured >= limits.max_requests) or \
                    (limits.duration is not None and now - measure_start >= limits.duration):
                if sem:
                    sem.release()
                break
            measured += 1
        tasks.append(asyncio.create_task(one(i, warm, body(i))))
    await asyncio.gather(*tasks)
    return sorted(samples, key=lambda s: s.index)


def ramped(offset: float, ramp_s: float) -> float:
    """Where a send at ``offset`` on the full-rate schedule falls when the rate rises linearly
    from 0 over ``ramp_s``: sends by time t number R t^2 / (2 T) during the ramp, so a send due
    at s = n / R (s < T / 2) moves to sqrt(2 T s), and later ones by T / 2."""
    return math.sqrt(2 * ramp_s * offset) if offset < ramp_s / 2 else offset + ramp_s / 2


async def probe_extras(client: OpenAIClient, model: str, headers: dict) -> dict:
    """``ignore_eos``/``min_tokens`` make vLLM and SGLang produce exactly max_tokens; servers
    that reject unknown fields answer 400, and then they are left out."""
    extras = {"ignore_eos": True, "min_tokens": 1}
    r = await client.chat({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                           **extras}, headers=headers)
    if r.ok:
        return extras
    if r.status == 400:
        return {}
    raise RuntimeError(f"probe request failed: {r.error}")


# --- reporting ---

def machine() -> dict:
    return {"cpu": provenance.cpu_model(), "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version()}


# --- command line ---

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness load", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="python -m harness load compare A.json B.json: two runs side by side")
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--model", help="default: the first model the server lists")
    add_api_key_argument(p)
    p.add_argument("--profile", choices=PROFILES)
    p.add_argument("--concurrency", type=int, help="requests in flight (profile concurrent)")
    p.add_argument("--rate", type=float, help="requests per second (profiles constant, poisson)")
    p.add_argument("--arrival", choices=("constant", "poisson"), default="poisson", help="for --rate and sweep")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of poisson gaps (1 = Poisson)")
    p.add_argument("--max-concurrency", type=int,
                   help="cap on requests in flight for rate profiles; throughput's level (default 256)")
    p.add_argument("--sweep-size", type=int, default=5, help="rates between synchronous and throughput")
    p.add_argument("--dataset", choices=("synthetic", "gsm8k"), default="synthetic")
    p.add_argument("--data-dir", help="holds gsm8k/test.jsonl (default: $EDGEMETER_DATA, else ~/.cache/edgemeter/data)")
    p.add_argument("--input-tokens", type=int, default=128, help="synthetic prompt length")
    p.add_argument("--output-tokens", type=int, default=128, help="max_tokens of every request")
    p.add_argument("--input-std", type=float, default=0.0,
                   help="synthetic prompt length's standard deviation (normal, cut to 1..2 x --input-tokens)")
    p.add_argument("--output-std", type=float, default=0.0,
                   help="output length's standard deviation (normal, cut to 1..2 x --output-tokens)")
    p.add_argument("--devices", type=int, default=1,
                   help="simulated devices the requests are spread over (X-Edgemeter-Device DEVICE-k)")
    p.add_argument("--ramp-up", type=float, default=0.0,
                   help="seconds over which a --rate profile's rate rises linearly from 0")
    p.add_argument("--no-ignore-eos", action="store_true", help="never send ignore_eos/min_tokens")
    p.add_argument("--no-stream", action="store_true", help="non-streamed requests (TTFT = E2EL)")
    p.add_argument("--warmup", default="0", help="requests (10) or seconds (5s) sent first and not counted")
    p.add_argument("--max-requests", type=int, help="counted requests per benchmark (default 100 without --duration)")
    p.add_argument("--duration", type=float, help="seconds of counted requests per benchmark")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--mode", help="X-Edgemeter-Mode: local | hybrid | cloud")
    p.add_argument("--network", help="X-Edgemeter-Network preset, e.g. local, wifi, 4g")
    p.add_argument("--device", help="X-Edgemeter-Device")
    p.add_argument("--start-proxy", metavar="CONFIG",
                   help="start the Edgemeter proxy on this config.yaml for the run (--base-url is then ignored); "
                        "every benchmark row gets its model load time (proxy_startup_s) and peak RSS")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra header (repeatable)")
    p.add_argument("--goodput", nargs="+", metavar="METRIC:MS", help="SLOs, e.g. ttft:200 tpot:50 e2el:5000")
    p.add_argument("--percentiles", default="90,99", help="besides the median (default 90,99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for NAME.json and NAME.csv")
    p.add_argument("--name", help="file name stem (default load-PROFILE-TIMESTAMP)")
    p.add_argument("--save-detailed", action="store_true", help="every request in the JSON too")
    return p


def specs_for(a) -> str:
    if a.profile:
        return a.profile
    if a.rate:
        return a.arrival
    return "concurrent" if a.concurrency else "synchronous"


async def _main(a, argv: list[str], profile: str, slo: dict, percentiles: tuple, started=None) -> dict:
    headers = {k: v for k, v in ((H_MODE, a.mode), (H_NETWORK, a.network), (H_DEVICE, a.device)) if v}
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep:
            raise ValueError(f"--header {h!r}: use NAME:VALUE")
        headers[name.strip()] = value.strip()
    warm_n, warm_s = parse_warmup(a.warmup)
    limits = Limits(a.max_requests if a.max_requests or a.duration else 100, a.duration, warm_n, warm_s)
    prompts = Prompts(a.dataset, a.input_tokens, a.seed, a.data_dir, a.input_std)
    conns = max(a.concurrency or 0, throughput.cap(a), 100)
    async with OpenAIClient(a.base_url, api_key=a.api_key, timeout_s=a.timeout, max_connections=conns) as client:
        model = a.model or next(iter(await client.models()), None)
        if model is None:
            raise RuntimeError(f"{a.base_url}/models lists no model; give --model")
        extras = {} if a.no_ignore_eos else await probe_extras(client, model, headers)
        if extras:
            extras["min_tokens"] = a.output_tokens  # each request's own length below

        def body(i: int) -> dict:
            n = length(a.output_tokens, a.output_std, random.Random(f"{a.seed}:out:{i}"))
            return {"model": model, "messages": prompts.messages(i), "max_tokens": n,
                    "stream": not a.no_stream, **extras, **({"min_tokens": n} if extras else {})}

        async def bench(spec: Spec) -> dict:
            print(f"-- {spec.name} ...", file=sys.stderr, flush=True)
            if started:
                started.reset_peak()
            samples = await run(client, spec, body, limits, headers=headers, seed=a.seed, devices=a.devices,
                                ramp_up_s=a.ramp_up)
            peak = _peak(samples)
            result = {"name": spec.name, "profile": spec.profile, "request_rate": spec.rate,
                      "max_concurrency": spec.cap, "burstiness": spec.burstiness, "max_concurrent_requests": peak,
                      **summarize(samples, slo, percentiles)}
            if started:  # the proxy this command started: its model load time, its memory under this load
                result.update(proxy_startup_s=started.startup_s, proxy_peak_rss_bytes=started.peak_rss())
            if a.save_detailed:
                result["requests"] = [s.row() for s in samples]
            return result

        results = await profiles.profile(profile).benchmarks(a, bench)
        prov = await provenance.collect(client)
    return {"kind": "edgemeter-load", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["python -m harness load", *argv]),
            "machine": machine(),
            "config": {"base_url": a.base_url, "model": model, "dataset": a.dataset,
                       "input_tokens": a.input_tokens if a.dataset == "synthetic" else None,
                       "output_tokens": a.output_tokens, "input_std": a.input_std, "output_std": a.output_std,
                       "devices": a.devices, "ramp_up_s": a.ramp_up, "stream": not a.no_stream, "extras": extras,
                       "headers": headers, "warmup": a.warmup, "max_requests": limits.max_requests,
                       "duration": limits.duration, "goodput": slo, "seed": a.seed},
            "provenance": prov, "benchmarks": results}


def _peak(samples: list[Sample]) -> int:
    """Most requests in flight at once, from the send and completion times."""
    events = sorted([(s.sent, 1) for s in samples] + [(s.done, -1) for s in samples])
    return max(itertools.accumulate(d for _, d in events), default=0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        return compare.main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        slo = parse_goodput(a.goodput)
        percentiles = tuple(float(x) for x in a.percentiles.split(",") if x.strip())
        started = None
        if a.start_proxy:
            started = StartedProxy(a.start_proxy)
            a.base_url = f"{started.root}/v1"
        try:
            doc = run_uvloop(_main(a, argv, specs_for(a), slo, percentiles, started))
        finally:
            if started:
                started.close()
    except (ValueError, RuntimeError, TimeoutError) as e:
        print(f"load: {e}", file=sys.stderr)
        return 2
    print(console.render(doc["benchmarks"], percentiles))
    if a.out:
        name = a.name or f"load-{specs_for(a)}-{time.strftime('%Y%m%d-%H%M%S')}"
        for fmt in (json, csv):
            print(f"wrote {fmt.write(Path(a.out), name, doc)}")
    return 0
