"""Agent-shaped load: many devices, length spreads, ramp-up, SLO attainment and device energy."""
from __future__ import annotations

import statistics

import pytest
from aiohttp import web

from harness.common.client import CallResult, OpenAIClient
from harness.load.generator import Limits, Prompts, Sample, length, ramped, run, summarize
from harness.load.profiles import Spec, arrivals


def sample(i, ttft, e2e, tokens, edgemeter=None, ok=True):
    r = CallResult(ok=ok, error=None if ok else "HTTP 500: boom", ttft_s=ttft, e2e_s=e2e,
                   usage={"prompt_tokens": 10, "completion_tokens": tokens} if ok else None, edgemeter=edgemeter)
    return Sample(i, False, float(i), float(i) + e2e, r, True)


def test_slo_attainment_counts_failed_requests_as_missed_and_energy_comes_per_request_and_token():
    rec = {"radio_j": 0.3, "compute_j": 0.1, "radio_tail_provisional_j": 2.0}
    samples = [sample(0, 0.1, 1.0, 10, rec), sample(1, 0.5, 1.0, 10, rec), sample(2, 0.1, 1.0, 20, rec),
               sample(3, None, 0.2, 0, ok=False)]
    s = summarize(samples, {"ttft": 200})
    assert s["slo_attainment_pct"] == pytest.approx(100 * 2 / 4)  # #0 and #2 meet ttft; #1 late; #3 failed
    assert s["radio_j_per_request"] == pytest.approx(0.3) and s["compute_j_per_request"] == pytest.approx(0.1)
    assert s["energy_j_per_output_token"] == pytest.approx(3 * 0.4 / 40)
    assert s["radio_j_per_output_token"] == pytest.approx(0.9 / 40)
    assert s["radio_tail_provisional_j"] == pytest.approx(6.0)
    bare = summarize([sample(0, 0.1, 1.0, 10)])  # a server that is not Edgemeter: no energy, no SLO
    assert bare["radio_j_per_request"] is None and bare["slo_attainment_pct"] is None


def test_ramp_up_sends_as_a_linearly_rising_rate():
    rate, ramp = 10.0, 2.0
    sends = [ramped(t, ramp) for t in itertools_take(arrivals("constant", rate), 40)]
    for t in (0.5, 1.0, 1.5, 2.0):  # during the ramp: R t^2 / (2 T) sends by time t
        assert sum(x <= t + 1e-9 for x in sends) == pytest.approx(rate * t * t / (2 * ramp) + 1, abs=1)
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert gaps[-1] == pytest.approx(1 / rate) and gaps[1] > gaps[-1]  # full rate after the ramp


def itertools_take(it, n):
    return [x for _, x in zip(range(n), it)]


def test_lengths_spread_with_the_asked_std_and_keep_the_mean():
    import random
    xs = [length(100, 20, random.Random(i)) for i in range(4000)]
    assert statistics.mean(xs) == pytest.approx(100, abs=1.5)  # sd of the mean 20/sqrt(4000) = 0.3
    assert statistics.stdev(xs) == pytest.approx(20, rel=0.05) and 1 <= min(xs) and max(xs) <= 200
    assert length(100, 0, random.Random(0)) == 100
    words = [len(Prompts("synthetic", 50, 1, input_std=10).messages(i)[0]["content"].split()) for i in range(200)]
    assert len(set(words)) > 10 and statistics.mean(words) == pytest.approx(50, abs=3)


async def test_devices_spread_streams_round_robin(aiohttp_server):
    seen = []

    async def chat(request):
        seen.append((request.headers.get("X-Edgemeter-Device"), (await request.json())["max_tokens"]))
        return web.json_response({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    async with OpenAIClient(str(server.make_url("/v1"))) as c:
        await run(c, Spec("synchronous"), lambda i: {"model": "m", "messages": [], "max_tokens": i}, Limits(8),
                  headers={"X-Edgemeter-Device": "phone"}, devices=3)
    assert [d for d, _ in sorted(seen, key=lambda x: x[1])] == [f"phone-{i % 3}" for i in range(8)]
