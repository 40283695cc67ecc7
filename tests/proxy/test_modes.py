"""Deployment modes end to end: the simulated network shows up in what the client sees, only where it should."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from proxy.radio import LTE, RADIO_PROFILES
from tests.conftest import request_series
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
    joules = ("edgemeter_request_radio_energy_joules_total", request_series("echo", "upstream", "hybrid", "fixed4g"))
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


# LTE with its tail timers scaled down 40x (0.25 s in all), so a test can wait a tail out.
SHORT_LTE = dataclasses.replace(LTE, name="short_lte", tail=tuple(
    dataclasses.replace(s, duration_s=s.duration_s / 40) for s in LTE.tail))


def radio_counters(text: str, network: str) -> tuple[float, float]:
    """(device radio's non-idle joules, request-attributed joules) for one network, from /metrics."""
    spent = attributed = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("network") != network or not s.name.endswith("_total"):
                continue
            if s.name == "edgemeter_radio_energy_joules_total" and s.labels["state"] != SHORT_LTE.idle.name:
                spent += s.value
            elif s.name == "edgemeter_request_radio_energy_joules_total":
                attributed += s.value
    return spent, attributed


async def test_hybrid_session_radio_energy_is_what_the_radio_spent(aiohttp_server, proxy_client, monkeypatch):
    """Five streamed calls 0.1 s apart (each cuts the last one's tail): the session's settled
    radio energy matches the device radio's non-idle energy on /metrics once the tail is
    over (5 % allowed, asserted far tighter in practice), and the provisional sum does not."""
    monkeypatch.setitem(RADIO_PROFILES, SHORT_LTE.name, SHORT_LTE)
    up = await aiohttp_server(make_app())
    models = {"echo": {"backend": "upstream", "base_url": str(up.make_url("/v1")), "model": "echo"}}
    proxy = await proxy_client(models, networks={"short": {"base": "4g", "jitter_ms": 0, "loss": 0.0,
                                                           "radio": SHORT_LTE.name}})
    before = radio_counters(await (await proxy.get("/metrics")).text(), "short")
    h = {"X-Edgemeter-Device": "phone-ledger", "X-Edgemeter-Session": "ledger", "X-Edgemeter-Network": "short"}
    records = []
    for _ in range(5):
        records.append((await call(proxy, "hybrid", h))[1])
        await asyncio.sleep(0.1)
    s = await (await proxy.post("/edgemeter/v1/sessions/ledger/end", json={"final_answer": "42"})).json()
    assert s["radio_tail_provisional_j"] == 0 and s["radio_settle_wait_s"] < 0.5
    spent, attributed = (a - b for a, b in zip(radio_counters(await (await proxy.get("/metrics")).text(), "short"),
                                               before))
    assert s["radio_j"] == pytest.approx(spent, rel=0.05)
    assert attributed == pytest.approx(s["radio_j"], rel=1e-9)  # the counter holds settled energy only
    assert s["radio_j"] == pytest.approx(s["radio_promotion_j"] + s["radio_active_j"] + s["radio_tail_j"])
    provisional = sum(r["radio_j"] + r["radio_tail_provisional_j"] for r in records)
    assert provisional > s["radio_j"] + SHORT_LTE.tail_j  # four full tails counted, each cut after ~0.1 s
