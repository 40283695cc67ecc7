"""Deployment modes end to end: the simulated network shows up in what the client sees, only where it should."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from proxy.link import PRESETS
from proxy.radio import LTE, RADIO_PROFILES
from tests.conftest import request_series
from tests.fake_upstream import SENT, make_app

# 4G without jitter or loss: every simulated delay is exact, so the record's delay split is
# asserted exactly, from the preset (proxy/link.py's PRESETS["4g"]) and the bytes sent.
NETWORKS = {"fixed4g": {"base": "4g", "jitter_ms": 0, "loss": 0.0},
            "slow_up": {"up_mbps": 1}}  # no RTT, radio or loss: only the uplink's rate
G4 = PRESETS["4g"]
ONE_WAY_S = G4.rtt_ms / 2000                             # 40 ms each way
HANDSHAKE_S = G4.handshake_rtts * G4.rtt_ms / 1000      # a new connection: TCP + TLS round trips
PROMOTION_S, PROMOTION_J = LTE.idle.promotion_s, LTE.idle.promotion_s * LTE.idle.promotion_w
# Times the proxy measures on its own clock hold the upstream's real time and event-loop hops
# besides the simulated delays: those are compared within TOL_S (tests/proxy/test_timing_truth.py's
# tolerance, from wake-ups up to 15 ms late on a loaded 2-core machine).
TOL_S = 0.020
MSG = [{"role": "user", "content": "hi"}]


def serialization(nbytes: int, mbps: float) -> float:
    """Seconds to put ``nbytes`` on the wire at ``mbps``, TCP/IP framing included, by hand."""
    return (nbytes + -(-nbytes // 1448) * 52) * 8 / (mbps * 1e6)


def radio_bytes_j(up: int, down: int) -> float:
    """LTE's per-bit energy for the bytes moved (Huang et al.'s alpha terms, proxy/radio.py)."""
    return (LTE.alpha_up_w * up + LTE.alpha_down_w * down) * 8e-6


@pytest.fixture
async def upstream(aiohttp_server):
    return await aiohttp_server(make_app())


@pytest.fixture
async def proxy(upstream, proxy_client):
    models = {"echo": {"backend": "upstream", "base_url": str(upstream.make_url("/v1")), "model": "echo"}}
    return await proxy_client(models, networks=NETWORKS)


async def call(client, mode, headers=None, stream=True, seen=None, **body):
    """One call; returns (client-side TTFT, or end to end when not streamed, and the record).
    ``seen`` (a list) gets each SSE data line, or the non-streamed body."""
    t0 = time.perf_counter()
    r = await client.post("/v1/chat/completions", data=orjson.dumps(
        {"model": "echo", "messages": MSG, "stream": stream, "stream_options": {"include_usage": True}, **body}),
        headers={"Content-Type": "application/json", "X-Edgemeter-Mode": mode, "X-Edgemeter-Network": "fixed4g",
                 **(headers or {})})
    assert r.status == 200
    if not stream:
        body = await r.json()
        if seen is not None:
            seen.append(body)
        return time.perf_counter() - t0, body["edgemeter"]
    first = None
    record = None
    async for line in r.content:
        if line.startswith(b"data: {") and first is None:
            first = time.perf_counter() - t0
        if line.startswith(b"data: {") and b'"edgemeter"' in line:
            record = orjson.loads(line[6:])["edgemeter"]
        elif line.startswith(b"data: {") and seen is not None:
            seen.append(line)
    return first, record


async def test_local_mode_has_no_network(proxy):
    ttft, rec = await call(proxy, "local", {"X-Edgemeter-Device": "phone-local"})
    assert rec["net_delay_s"]["total"] == 0 and rec["radio_j"] == 0 and rec["mode"] == "local"


def assert_first_call_net_delay(rec: dict, last_frame: int) -> None:
    """A fresh device's first hybrid call: the split is the preset's, part by part. The request
    waits for the idle radio's promotion and a new connection's handshake, then crosses 40 ms up;
    the client still waits for the last frame's 40 ms down (earlier frames overlap generation)."""
    d = rec["net_delay_s"]
    assert d["promotion"] == pytest.approx(PROMOTION_S, abs=1e-9)
    assert d["handshake"] == pytest.approx(HANDSHAKE_S, abs=1e-9)
    assert d["propagation"] == pytest.approx(2 * ONE_WAY_S, abs=1e-9)
    assert d["serialization"] == pytest.approx(serialization(rec["bytes_up"], G4.up_mbps)
                                               + serialization(last_frame, G4.down_mbps), abs=1e-9)
    # the last frame can only wait behind the frames before it, if they were offered at once
    assert 0 <= d["queueing"] <= serialization(rec["bytes_down"] - last_frame, G4.down_mbps) + 1e-9
    assert d["retransmission"] == d["slow_start"] == d["paging"] == 0  # no loss, small bytes, radio awake
    assert d["total"] == pytest.approx(sum(v for k, v in d.items() if k != "total"), abs=1e-12)


def assert_first_call_radio(rec: dict) -> None:
    """Its radio energy: the promotion, then beta from the promotion's end to the last byte's
    arrival (the gaps between frames are cut-short CR tails, also at beta) plus the bytes' alpha
    terms. The last arrival is the end of e2e_s within TOL_S; the tail is still pending."""
    assert rec["radio_promotion_j"] == pytest.approx(PROMOTION_J, abs=1e-12)
    assert rec["radio_active_j"] + rec["radio_tail_j"] == pytest.approx(
        LTE.base_w * (rec["e2e_s"] - PROMOTION_S) + radio_bytes_j(rec["bytes_up"], rec["bytes_down"]),
        abs=LTE.base_w * TOL_S)
    assert rec["radio_j"] == pytest.approx(rec["radio_promotion_j"] + rec["radio_active_j"] + rec["radio_tail_j"],
                                           abs=1e-12)
    assert not rec["radio_settled"] and rec["radio_tail_provisional_j"] == pytest.approx(LTE.tail_j, abs=1e-12)


async def test_hybrid_network_shows_in_client_ttft(proxy, upstream):
    lines = []
    ttft, rec = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-hybrid"}, seen=lines)
    sent = upstream.app[SENT][-1]
    finish = next(x for x in lines if b'"finish_reason":"stop"' in x)
    assert sum(len(x) + 1 for x in lines) == rec["bytes_down"]  # each frame: its line and the blank one
    assert_first_call_net_delay(rec, len(finish) + 1)
    assert_first_call_radio(rec)
    # TTFT: the uplink, the upstream's own time to its first token (its log), the first frame's 40 ms
    # down; the client, whose clock started first, sees at least that
    up_s = PROMOTION_S + HANDSHAKE_S + ONE_WAY_S + serialization(rec["bytes_up"], G4.up_mbps)
    assert rec["ttft_s"] == pytest.approx(up_s + (sent.tokens[0] - sent.received) + ONE_WAY_S, abs=TOL_S)
    assert ttft >= rec["ttft_s"]
    ttft_local, _ = await call(proxy, "local", {"X-Edgemeter-Device": "phone-hybrid"})
    assert ttft_local < ttft - 0.3
    # the radio is connected now: no second promotion
    _, rec2 = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-hybrid"})
    assert rec2["net_delay_s"]["promotion"] == 0 and rec2["net_delay_s"]["handshake"] == 0  # kept alive


async def test_hybrid_non_streamed(proxy, upstream):
    seen = []
    e2e, rec = await call(proxy, "hybrid", {"X-Edgemeter-Device": "phone-ns"}, stream=False, seen=seen)
    sent = upstream.app[SENT][-1]
    # the body as the proxy sent it, before the record was added to it, is what went down
    assert rec["bytes_down"] == len(orjson.dumps({k: v for k, v in seen[0].items() if k != "edgemeter"}))
    assert_first_call_net_delay(rec, rec["bytes_down"])  # one body: the last frame is all of it
    assert rec["net_delay_s"]["queueing"] == 0
    assert_first_call_radio(rec)
    # end to end: the uplink, the upstream's whole answer (its log), the body's way down
    net_s = rec["net_delay_s"]["total"]
    assert rec["e2e_s"] == pytest.approx(net_s + (sent.finish - sent.received), abs=TOL_S)
    assert e2e >= rec["e2e_s"]


async def test_cloud_mode_crosses_the_link_only_at_task_start_and_end(proxy):
    h = {"X-Edgemeter-Device": "phone-cloud", "X-Edgemeter-Session": "task-1"}
    t_first = time.perf_counter()
    _, first = await call(proxy, "cloud", h)
    _, second = await call(proxy, "cloud", h)
    _, third = await call(proxy, "cloud", h)
    # the task going up: promotion, handshake, 40 ms one way; up only, no per-chunk downlink
    up_s = PROMOTION_S + HANDSHAKE_S + ONE_WAY_S + serialization(first["bytes_up"], G4.up_mbps)
    assert first["net_delay_s"]["total"] == pytest.approx(up_s, abs=1e-9)
    assert first["net_delay_s"]["propagation"] == pytest.approx(ONE_WAY_S, abs=1e-9)
    assert second["net_delay_s"]["total"] == 0 and third["net_delay_s"]["total"] == 0
    # its radio: the promotion, then beta over the uplink's handshake, bytes and flight; the tail pending
    up_active_j = LTE.base_w * (up_s - PROMOTION_S) + radio_bytes_j(first["bytes_up"], 0)
    assert first["radio_promotion_j"] == pytest.approx(PROMOTION_J, abs=1e-12) and first["radio_tail_j"] == 0
    assert first["radio_active_j"] == pytest.approx(up_active_j, abs=1e-9)
    assert first["radio_j"] == pytest.approx(PROMOTION_J + up_active_j, abs=1e-9)
    t0 = time.perf_counter()
    r = await proxy.post("/edgemeter/v1/sessions/task-1/end", json={"final_answer": "42"})
    took = time.perf_counter() - t0
    s = await r.json()
    # the answer's 2 bytes come down on an awake radio (its tail) and an open connection: one way only
    answer_s = ONE_WAY_S + serialization(2, G4.down_mbps)
    assert r.status == 200 and s["calls"] == 3 and s["final_answer_delay_s"] == pytest.approx(answer_s, abs=1e-9)
    # the reply waited for the answer, then for the radio's whole tail after it to run out
    assert s["radio_settle_wait_s"] == pytest.approx(LTE.tail_s, abs=TOL_S)
    assert took >= s["final_answer_delay_s"] + s["radio_settle_wait_s"]
    assert s["completion_tokens"] == 15
    # session radio: one promotion; active the uplink and the answer's flight; tails the gap the answer
    # cut (at most beta over the calls' wall time) and the last tail, run out in full
    assert s["radio_promotion_j"] == pytest.approx(PROMOTION_J, abs=1e-12)
    assert s["radio_active_j"] == pytest.approx(up_active_j + LTE.base_w * answer_s + radio_bytes_j(0, 2), abs=1e-9)
    assert LTE.tail_j <= s["radio_tail_j"] <= LTE.tail_j + LTE.base_w * (t0 - t_first)
    assert s["radio_j"] == pytest.approx(s["radio_promotion_j"] + s["radio_active_j"] + s["radio_tail_j"], abs=1e-12)
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
    assert_first_call_radio(rec)  # its value: so the counter's delta is not a match of two zeros


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
