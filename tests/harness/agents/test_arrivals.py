"""--task-gap and --cold-radio against a live proxy: radio promotions as predicted.

The proxy's clock is real, so the radios here are test profiles whose tails are short (the
session run waits out each 0.4 s tail) or long enough that nothing a loaded machine does can
outlast them (30 s, cut only by the reset endpoint): the predictions are exact counts."""
from __future__ import annotations

import json

import orjson
import pytest

from harness.agents import run
from harness.agents.results import read_rows
from proxy import radio as radio_mod
from proxy.app import create_app
from proxy.radio import RadioProfile, RadioState
from tests.conftest import make_config, wait_ready
from tests.fake_upstream import make_app
from tests.harness.agents.test_agent import serve
from tests.harness_fixtures import data_dir

# a radio that promotes from idle (0.1 s at 1 W) and then holds a tail at 0.5 W
LONG = RadioProfile("test_long_tail", base_w=1.0, tail=(RadioState("tail", 0.5, 30.0),),
                    idle=RadioState("idle", 0.0, promotion_s=0.1, promotion_w=1.0))
SHORT = RadioProfile("test_short_tail", base_w=1.0, tail=(RadioState("tail", 0.5, 0.4),),
                     idle=RadioState("idle", 0.0, promotion_s=0.05, promotion_w=1.0))


@pytest.fixture
def radios(monkeypatch):
    for p in (LONG, SHORT):
        monkeypatch.setitem(radio_mod.RADIO_PROFILES, p.name, p)


async def promotions(client, network: str) -> float:
    text = await (await client.get("/metrics")).text()  # a scrape brings every radio's counters up to date
    for line in text.splitlines():
        if line.startswith("edgemeter_radio_promotions_total{") and f'network="{network}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_reset_endpoint_makes_each_request_promote_the_radio(radios, aiohttp_server, aiohttp_client):
    up = await aiohttp_server(make_app())
    client = await aiohttp_client(create_app(make_config(
        {"echo": {"backend": "upstream", "base_url": str(up.make_url("/v1"))}},
        networks={"longtail": {"base": "4g", "rtt_ms": 0, "jitter_ms": 0, "loss": 0, "radio": LONG.name}})))
    await wait_ready(client.server)
    headers = {"X-Edgemeter-Mode": "hybrid", "X-Edgemeter-Network": "longtail", "X-Edgemeter-Device": "phone-1",
               "Content-Type": "application/json"}
    body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}], "n_tokens": 2})

    async def call():
        r = await client.post("/v1/chat/completions", data=body, headers=headers)
        assert r.status == 200
        return (await r.json())["edgemeter"]

    for _ in range(3):  # back to back inside one 30 s tail: one promotion
        await call()
    r = await client.post("/edgemeter/v1/devices/phone-1/reset")  # before any scrape has advanced the radio
    out = await r.json()
    assert out["links"] == ["longtail"]
    assert out["tail_settled_j"] == pytest.approx(LONG.tail_j)  # the whole 30 s x 0.5 W tail, charged at once
    assert await promotions(client, "longtail") == 1
    from proxy.app import ROUTER
    devices = client.server.app[ROUTER].devices.devices
    assert ("phone-1", "longtail") not in devices  # dropped: the next request gets a new link
    for _ in range(3):  # reset after each: every request finds an idle radio
        rec = await call()
        assert rec["radio_promotion_j"] == pytest.approx(0.1 * 1.0)
        assert (await (await client.post("/edgemeter/v1/devices/phone-1/reset")).json())["links"] == ["longtail"]
    assert await promotions(client, "longtail") == 1 + 3
    nothing = await (await client.post("/edgemeter/v1/devices/never-seen/reset")).json()
    assert nothing == {"device": "never-seen", "links": [], "tail_settled_j": 0.0}


@pytest.mark.parametrize("extra,gaps", [([], [0.0, 0.0, 0.0]), (["--task-gap", "0.2"], [0.0, 0.2, 0.2]),
                                        (["--cold-radio"], [0.0, 0.0, 0.0])])
async def test_live_run_promotes_once_per_task_whatever_the_pacing(radios, aiohttp_server, tmp_path, extra, gaps):
    """The proxy's session end waits out the last tail, so in a live run every task already starts
    from an idle radio: back to back, with think time, or with --cold-radio, 3 tasks of one call
    each promote exactly 3 times."""
    _, upstream = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 18"}])
    net = f"shorttail{len(extra)}{gaps[1]:g}".replace(".", "")
    proxy = await aiohttp_server(create_app(make_config(
        {"scripted": {"backend": "upstream", "base_url": upstream}},
        networks={net: {"base": "4g", "rtt_ms": 0, "jitter_ms": 0, "loss": 0, "radio": SHORT.name}})))
    await wait_ready(proxy)
    argv = ["--base-url", str(proxy.make_url("/v1")), "--dataset", "gsm8k", "--data-dir", str(data_dir()),
            "--ids", "0,1,2", "--repeats", "1", "--warmup", "0", "--modes", "hybrid", "--networks", net,
            "--out", str(tmp_path), "--no-progress", "--no-report", *extra]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    assert [r["gap_before_s"] for r in rows] == gaps
    assert [r["session_record"]["radio_promotion_j"] for r in rows] == pytest.approx([0.05 * 1.0] * 3)
    assert all(("device_reset" in r) == ("--cold-radio" in extra) for r in rows)
    for a, b in zip(rows, rows[1:]):  # the think time is really spent (a lower bound; 5 ms for two clocks)
        busy = a["wall_s"] + a["session_record"]["radio_settle_wait_s"]
        assert b["started_at"] - a["started_at"] >= busy + b["gap_before_s"] - 0.005
    from aiohttp.test_utils import TestClient
    async with TestClient(proxy) as c:
        assert await promotions(c, net) == 3
    arrivals = json.loads((tmp_path / "run.json").read_text())["arrivals"]
    assert arrivals["cold_radio"] == ("--cold-radio" in extra)


def test_exponential_gaps_are_seeded_per_device():
    a, b = run.Gaps(("exp", 2.0), 7), run.Gaps(("exp", 2.0), 7)
    xs = [a.next("d0") for _ in range(2000)]
    assert xs[:5] == [b.next("d0") for _ in range(5)] and xs[:5] != [b.next("d1") for _ in range(5)]
    assert sum(xs) / len(xs) == pytest.approx(2.0, rel=0.1)  # 2000 draws: the mean's sd is 2/sqrt(2000) = 2.2 %
    assert run.task_gap("exp:2.5") == ("exp", 2.5) and run.task_gap("3") == ("fixed", 3.0)
    with pytest.raises(Exception):
        run.task_gap("poisson:2")
