"""Deployment modes end to end: the simulated network shows up in what the client sees, only where it should."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.radio import LTE, RADIO_PROFILES
from tests.fake_upstream import make_app

# 4G without jitter or loss: every delay is exact, so the assertions below are bounds, not timings.
NETWORKS = {"fixed4g": {"base": "4g", "jitter_ms": 0, "loss": 0.0}}
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


async def test_devices_share_a_link_and_radio_metrics_export(proxy):
    await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-m"})
    text = await (await proxy.get("/metrics")).text()
    lines = [x for x in text.splitlines() if x.startswith("edgemeter_radio_")]
    assert any(x.startswith('edgemeter_radio_promotions_total{network="fixed4g",radio="lte"}') for x in lines)
    assert any(x.startswith("edgemeter_radio_energy_joules_total") and 'state="active"' in x for x in lines)
    assert any(x.startswith("edgemeter_radio_devices{") for x in lines)
    assert 'direction="up",mode="hybrid"' in text or 'component="propagation"' in text


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
