"""Deployment modes end to end: the simulated network shows up in what the client sees, only where it should."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from prometheus_client import REGISTRY

from tests.fake_upstream import make_app

# 4G without jitter or loss: every delay is exact, so the assertions below are bounds, not timings.
NETWORKS = {"fixed4g": {"base": "4g", "jitter_ms": 0, "loss": 0.0},
            "slow_up": {"up_mbps": 1}}  # no RTT, radio or loss: only the uplink's rate
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def proxy(aiohttp_server, proxy_client):
    up = await aiohttp_server(make_app())
    models = {"echo": {"backend": "upstream", "base_url": str(up.make_url("/v1")), "model": "echo"}}
    return await proxy_client(models, networks=NETWORKS)


async def call(client, mode, headers=None, stream=True, **body):
    t0 = time.perf_counter()
    r = await client.post("/v1/chat/completions", data=orjson.dumps(
        {"model": "echo", "messages": MSG, "stream": stream, "stream_options": {"include_usage": True}, **body}),
        headers={"Content-Type": "application/json", "X-Edgemeter-Mode": mode, "X-Edgemeter-Network": "fixed4g",
                 **(headers or {})})
    assert r.status == 200
    if not stream:
        body = await r.json()
        return time.perf_counter() - t0, body["edgemeter"]
    first = None
    record = None
    async for line in r.content:
        if line.startswith(b"data: {") and first is None:
            first = time.perf_counter() - t0
        if line.startswith(b"data: {") and b'"edgemeter"' in line:
            record = orjson.loads(line[6:])["edgemeter"]
    return first, record


async def test_local_mode_has_no_network(proxy):
    ttft, rec = await call(proxy, "local", {"X-Edgemeter-Device": "phone-local"})
    assert rec["net_delay_s"]["total"] == 0 and rec["radio_j"] == 0 and rec["mode"] == "local"


async def test_hybrid_network_shows_in_client_ttft(proxy):
    ttft, rec = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-hybrid"})
    d = rec["net_delay_s"]
    # first call from an idle LTE radio: 0.26 s promotion + 40 ms up + 40 ms down at least
    assert d["promotion"] == pytest.approx(0.26) and d["propagation"] >= 0.08 - 1e-9
    assert ttft >= 0.26 + 0.08 and rec["ttft_s"] >= 0.34 and rec["radio_j"] > 0
    ttft_local, _ = await call(proxy, "local", {"X-Edgemeter-Device": "phone-hybrid"})
    assert ttft_local < ttft - 0.3
    # the radio is connected now: no second promotion
    _, rec2 = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-hybrid"})
    assert rec2["net_delay_s"]["promotion"] == 0


async def test_hybrid_non_streamed(proxy):
    e2e, rec = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-ns"}, stream=False)
    assert e2e >= 0.34 and rec["net_delay_s"]["total"] >= 0.34 and rec["bytes_down"] > 0


async def test_cloud_mode_crosses_the_link_only_at_task_start_and_end(proxy):
    h = {"X-Edgemeter-Device": "phone-cloud", "X-Edgemeter-Session": "task-1"}
    _, first = await call(proxy, "cloud", h)
    _, second = await call(proxy, "cloud", h)
    _, third = await call(proxy, "cloud", h)
    assert first["net_delay_s"]["total"] >= 0.26 + 0.04  # promotion + the task going up
    assert first["net_delay_s"]["propagation"] == pytest.approx(0.04)  # up only: no per-chunk downlink
    assert second["net_delay_s"]["total"] == 0 and third["net_delay_s"]["total"] == 0
    t0 = time.perf_counter()
    r = await proxy.post("/edgemeter/v1/sessions/task-1/end", json={"final_answer": "42"})
    took = time.perf_counter() - t0
    s = await r.json()
    assert r.status == 200 and s["calls"] == 3 and s["final_answer_delay_s"] >= 0.04 and took >= 0.04
    assert s["completion_tokens"] == 15 and s["radio_j"] > first["radio_j"] > 0
    r = await proxy.post("/edgemeter/v1/sessions/task-1/end", json={"final_answer": "42"})
    assert r.status == 404 and (await r.json())["error"]["code"] == "session_not_found"


async def test_radio_metrics_export_this_devices_promotion_and_energy(proxy):
    promotions = ("edgemeter_radio_promotions_total", {"network": "fixed4g", "radio": "lte"})
    joules = ("edgemeter_request_radio_energy_joules_total",
              {"model": "echo", "backend": "upstream", "mode": "hybrid", "network": "fixed4g"})
    await proxy.get("/metrics")  # export what earlier tests' radios spent, so the deltas below are this call's
    before = [REGISTRY.get_sample_value(*s) or 0.0 for s in (promotions, joules)]
    _, rec = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-m"})
    await proxy.get("/metrics")
    after = [REGISTRY.get_sample_value(*s) or 0.0 for s in (promotions, joules)]
    # a fresh device's idle radio is promoted once; the request's joules are exactly its record's
    assert after[0] - before[0] == 1
    assert after[1] - before[1] == pytest.approx(rec["radio_j"], rel=1e-9)
    assert rec["radio_j"] > 0


@pytest.mark.parametrize("devices", [("one", "one"), ("one", "two")], ids=["shared", "separate"])
async def test_one_device_shares_its_link_two_devices_do_not(proxy, devices):
    """Two 10 kB uploads at once over 1 Mb/s (no RTT: no window, handshake or path delay): on one
    device the second waits behind the first's serialization, on two devices neither waits."""
    body = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    (_, a), (_, b) = await asyncio.gather(*(call(proxy, "hybrid", {"X-Edgemeter-Device": f"link-{d}",
                                                                   "X-Edgemeter-Network": "slow_up"}, **body)
                                            for d in devices))
    nbytes = a["bytes_up"]
    serialization = (nbytes + -(-nbytes // 1448) * 52) * 8 / 1e6  # TCP/IP framing at the wire rate, by hand
    first, second = sorted((a, b), key=lambda r: r["net_delay_s"]["queueing"])
    for r in (a, b):
        assert r["net_delay_s"]["serialization"] == pytest.approx(serialization, abs=1e-5)  # + 10 Gb/s down
    assert first["net_delay_s"]["queueing"] == pytest.approx(0, abs=1e-5)  # frames down at 10 Gb/s: under 1 us
    if devices[0] == devices[1]:  # behind the other's bytes, less the few ms between the two offers
        assert second["net_delay_s"]["queueing"] == pytest.approx(serialization, abs=0.02)
        assert second["e2e_s"] - first["e2e_s"] == pytest.approx(serialization, abs=0.02)
    else:
        assert second["net_delay_s"]["queueing"] == pytest.approx(0, abs=1e-5)
