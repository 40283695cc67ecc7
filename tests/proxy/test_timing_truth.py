"""Timing values against injected truth: the record and the histograms say what happened.

A scripted upstream (tests/fake_upstream.py, same process and clock as the proxy) sends
its first token 300 ms after the request and one every 20 ms after that, and logs when it
wrote each chunk. A custom network preset has an exact delay: 100 ms RTT, no jitter, no
loss, 10 Gb/s (serialization under 1 us), and a fresh connection's two handshake round
trips. The expected values come from that log and from the preset's parameters, never
from the record's own delay split.

Tolerances, stated once: one event's time within TOL_S (20 ms: on a 2-core machine at load
average 7 a wake-up or a hop between client, proxy and upstream ran up to 15 ms late); a mean over the N - 1 gaps
within 2 TOL_S / (N - 1), both ends of the span off by at most TOL_S. The script's own
gaps run late by each sleep's wake-up (about 1 ms here): its mean gap is within TOL_GAP_S
of 20 ms, and the proxy's values are compared with the gaps it logged.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import pytest
from prometheus_client import REGISTRY

from backends.base import Backend, Scheduled
from proxy.app import ROUTER
from tests.conftest import request_series
from tests.fake_upstream import SENT, make_app

FIRST_S, GAP_S, N = 0.300, 0.020, 40
TOL_S = 0.020
TOL_MEAN_S = 2 * TOL_S / (N - 1)
TOL_GAP_S = 0.005

# The preset, and what it must cost, by hand from its parameters (proxy/link.py's model):
RTT_S, HANDSHAKE_RTTS = 0.100, 2
NETWORKS = {"truth": {"rtt_ms": RTT_S * 1000, "jitter_ms": 0, "loss": 0.0, "up_mbps": 10_000,
                      "down_mbps": 10_000, "handshake_rtts": HANDSHAKE_RTTS}}
UP_S = HANDSHAKE_RTTS * RTT_S + RTT_S / 2  # a new connection: TCP + TLS round trips, then one way
DOWN_S = RTT_S / 2                         # every frame: one way, on the connection the request opened
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(make_app())


@pytest.fixture
async def proxy(upstream, proxy_client):
    base = str(upstream.make_url("/v1"))
    # model names of their own: the histogram series these tests read hold only their requests
    models = {name: {"backend": "upstream", "base_url": base, "model": "slow_first"}
              for name in ("truth-stream", "truth-whole", "truth-queue")}
    return await proxy_client(models, networks=NETWORKS)


def sample(name: str, labels: dict) -> float:
    """One exact labelled series' value in the process registry (0 before its first observation)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


HISTOGRAMS = ("time_to_first_token", "backend_time_to_first_token", "request_time_per_output_token",
              "e2e_request_latency", "inter_token_latency", "request_queue_time", "network_delay")


def snapshot(labels: dict) -> dict:
    return {(h, part): sample(f"edgemeter_{h}_seconds_{part}", labels) for h in HISTOGRAMS for part in ("sum", "count")}


def delta(before: dict, labels: dict) -> dict:
    after = snapshot(labels)
    return {k: after[k] - before[k] for k in after}


async def call(client, model: str, mode: str, device: str, stream: bool, n: int = N) -> tuple[float, dict]:
    """Send one request; return when it was sent (perf_counter) and its record."""
    body = {"model": model, "messages": MSG, "stream": stream, "delay": FIRST_S, "gap": GAP_S, "n_tokens": n,
            "stream_options": {"include_usage": True}}
    headers = {"Content-Type": "application/json", "X-Edgemeter-Mode": mode, "X-Edgemeter-Network": "truth",
               "X-Edgemeter-Device": device}
    t_sent = time.perf_counter()
    r = await client.post("/v1/chat/completions", data=orjson.dumps(body), headers=headers)
    assert r.status == 200, await r.text()
    if not stream:
        return t_sent, (await r.json())["edgemeter"]
    record = None
    async for line in r.content:
        if line.startswith(b"data: {") and b'"edgemeter"' in line:
            record = orjson.loads(line[6:])["edgemeter"]
    return t_sent, record


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "non-streamed"])
@pytest.mark.parametrize("mode", ["local", "hybrid", "cloud"])
async def test_timings_match_the_upstream_log_and_the_preset(proxy, upstream, mode, stream):
    """cloud without a session header is a one-call session: request up, response down, like hybrid."""
    model = "truth-stream" if stream else "truth-whole"
    labels = request_series(model, "upstream", mode, "truth")
    before = snapshot(labels)
    t_sent, rec = await call(proxy, model, mode, f"truth-{mode}-{stream}", stream)
    sent = upstream.app[SENT][-1]
    up, down = (0.0, 0.0) if mode == "local" else (UP_S, DOWN_S)

    # the script did what it was told, and the request reached it after the uplink
    assert sent.tokens[0] - sent.received == pytest.approx(FIRST_S, abs=TOL_S)
    assert (sent.tokens[-1] - sent.tokens[0]) / (N - 1) == pytest.approx(GAP_S, abs=TOL_GAP_S)
    assert sent.received - t_sent == pytest.approx(up, abs=TOL_S)

    assert rec["completion_tokens"] == N and rec["usage_source"] == "chunks"
    # backend TTFT: handed to the backend (after the uplink) to first token produced
    assert rec["backend_ttft_s"] == pytest.approx(FIRST_S, abs=TOL_S)
    assert rec["backend_ttft_s"] == pytest.approx(sent.tokens[0] - sent.received, abs=TOL_S)
    # TTFT from the request's receipt: streamed, the first token's arrival after the downlink;
    # non-streamed, when the first token was made (the body waits for the last one)
    ttft_true = sent.tokens[0] - t_sent + (down if stream else 0.0)
    assert rec["ttft_s"] == pytest.approx(ttft_true, abs=TOL_S)
    assert rec["ttft_s"] == pytest.approx(up + FIRST_S + (down if stream else 0.0), abs=TOL_S)
    e2e_true = sent.finish + down - t_sent  # the finish chunk's (or the body's) arrival
    assert rec["e2e_s"] == pytest.approx(e2e_true, abs=TOL_S)
    # TPOT: first token to the last frame, over N - 1 gaps; non-streamed the body's downlink is in it
    tpot_true = (sent.finish - sent.tokens[0] + (0.0 if stream else down)) / (N - 1)
    assert rec["tpot_s"] == pytest.approx(tpot_true, abs=TOL_MEAN_S)
    # ...exactly (end-to-end - TTFT) / (N - 1): a divisor off by one misses by a whole gap (20 ms), which
    # the mean's tolerance alone would not see; the last frame and the record are event-loop turns apart
    assert rec["tpot_s"] * (N - 1) == pytest.approx(rec["e2e_s"] - rec["ttft_s"], abs=TOL_S / 4)
    assert rec["queue_s"] is None  # an upstream says nothing about its queue
    assert rec["net_delay_s"]["total"] == pytest.approx(up + down, abs=1e-5)
    assert rec["net_delay_s"]["handshake"] == pytest.approx(HANDSHAKE_RTTS * RTT_S if up else 0.0, abs=1e-9)

    d = delta(before, labels)
    for h, value, tol in (("time_to_first_token", ttft_true, TOL_S), ("backend_time_to_first_token", FIRST_S, TOL_S),
                          ("e2e_request_latency", e2e_true, TOL_S), ("request_time_per_output_token", tpot_true,
                                                                      TOL_MEAN_S),
                          ("network_delay", up + down, 1e-5)):
        assert d[h, "count"] == 1, h
        assert d[h, "sum"] == pytest.approx(value, abs=tol), h
    assert d["request_queue_time", "count"] == 0
    if stream:  # one observation per token after the first, their sum the first-to-last token span
        assert d["inter_token_latency", "count"] == N - 1
        assert d["inter_token_latency", "sum"] / (N - 1) == pytest.approx(
            (sent.tokens[-1] - sent.tokens[0]) / (N - 1), abs=TOL_MEAN_S)
    else:  # the client sees no gaps between tokens of one body
        assert d["inter_token_latency", "count"] == 0


class OneSlot(Backend):
    """Wraps a backend so one generation runs at a time, as llama.cpp with ``slots: 1``: the
    next request waits for the slot and is ``Scheduled`` when it gets it."""
    kind = "one-slot"

    def __init__(self, inner: Backend):
        super().__init__(inner.name)
        self.inner, self.slot, self.ready = inner, asyncio.Lock(), True

    async def generate(self, req):
        async with self.slot:
            yield Scheduled()
            async for ev in self.inner.generate(req):
                yield ev


@pytest.mark.parametrize("mode", ["local", "hybrid"])
async def test_queue_time_is_the_wait_for_the_slot(proxy, upstream, mode):
    """Two requests at once on one slot: the second waits exactly as long as the first holds it,
    counted from when it reached the backend (after its own uplink), not from its receipt."""
    placements = proxy.server.app[ROUTER].models["truth-queue"]
    one_slot = OneSlot(placements["device"].backend)  # a stand-in: the same backend for both placements
    for p, served in placements.items():
        placements[p] = dataclasses.replace(served, backend=one_slot)
    labels = request_series("truth-queue", "one-slot", mode, "truth")
    before = snapshot(labels)
    n = 10
    (t_a, rec_a), (t_b, rec_b) = await asyncio.gather(
        *(call(proxy, "truth-queue", mode, f"queue-{mode}-{i}", True, n) for i in range(2)))
    first, second = upstream.app[SENT][-2:]
    up = 0.0 if mode == "local" else UP_S
    # the first-served request's slot opens when its stream ends: one finish chunk and [DONE] after its last write
    held_until = first.finish
    records = sorted((rec_a, rec_b), key=lambda r: r["queue_s"])
    reached_backend = min(t_a, t_b) + up
    assert records[0]["queue_s"] == pytest.approx(0.0, abs=TOL_S)
    assert records[1]["queue_s"] == pytest.approx(held_until - reached_backend, abs=TOL_S)
    assert records[1]["queue_s"] == pytest.approx(FIRST_S + n * GAP_S, abs=2 * TOL_S)  # the injected hold
    assert second.received >= held_until
    # backend TTFT counts from the hand-over to the backend, so it holds the wait for the slot
    assert records[1]["backend_ttft_s"] == pytest.approx(records[1]["queue_s"] + FIRST_S, abs=TOL_S)
    d = delta(before, labels)
    assert d["request_queue_time", "count"] == 2
    assert d["request_queue_time", "sum"] == pytest.approx(held_until - reached_backend, abs=2 * TOL_S)
