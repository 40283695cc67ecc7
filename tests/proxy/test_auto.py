"""auto mode end to end: a rule policy sends a short prompt to the model's device backend and a long
one to its cloud backend; the records, each backend's own request count and /metrics agree."""
from __future__ import annotations

import orjson
import pytest

from proxy.link import PRESETS
from proxy.radio import LTE
from tests.fake_upstream import SEEN, make_app
from tests.proxy.test_placement import sample

AUTO = {"policy": "rules", "default": "hybrid", "rules": [
    {"name": "short_prompt", "when": {"prompt_tokens": "<= 50"}, "mode": "local"}]}


@pytest.fixture
async def split(aiohttp_server, proxy_client, tmp_path):
    """One model, two scripted builds: server ``device`` as the device's, ``cloud`` as the cloud's."""
    device, cloud = await aiohttp_server(make_app()), await aiohttp_server(make_app())
    log = tmp_path / "requests.jsonl"
    models = {"m": {"device": {"backend": "upstream", "base_url": str(device.make_url("/v1")), "model": "echo"},
                    "cloud": {"backend": "upstream", "base_url": str(cloud.make_url("/v1")), "model": "echo"}}}
    client = await proxy_client(models, auto=AUTO, server={"request_log": str(log)})
    return client, device.app[SEEN], cloud.app[SEEN], log


async def ask(client, text: str, **headers) -> tuple[int, dict]:
    r = await client.post("/v1/chat/completions", data=orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8}),
        headers={"Content-Type": "application/json", "X-Edgemeter-Mode": "auto", "X-Edgemeter-Network": "4g",
                 **headers})
    body = await r.json()
    return r.status, body.get("edgemeter", body)


async def test_rule_routes_short_prompt_to_device_and_long_to_cloud(split):
    client, device_seen, cloud_seen, log = split
    status, short = await ask(client, "x" * 200)    # 50 estimated tokens: the rule's bound, inclusive
    assert status == 200
    assert (short["mode"], short["placement"], short["served_by"]) == ("local", "device", "m.device")
    assert short["auto"] == {"chosen": "local", "policy": "rules", "reason": "short_prompt", "scope": "call",
                             "prompt_tokens": 50, "prompt_tokens_source": "chars/4"}
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 200}], "max_tokens": 8}
    assert short["bytes_up"] == len(orjson.dumps(body))
    assert short["net_delay_s"]["total"] == 0 and short["radio_j"] == 0  # local: nothing crossed the 4G link
    assert (len(device_seen), len(cloud_seen)) == (1, 0)

    status, long = await ask(client, "x" * 204)     # 51 estimated tokens
    assert status == 200
    assert (long["mode"], long["placement"], long["served_by"]) == ("hybrid", "cloud", "m.cloud")
    assert long["auto"]["chosen"] == "hybrid" and long["auto"]["reason"] == "default"
    assert long["auto"]["prompt_tokens"] == 51
    # hybrid: the request went up the simulated 4G link, this device's first use of it: the idle LTE
    # radio's promotion and a new connection's two round trips are exact; 4G's path delay is jittered
    d = long["net_delay_s"]
    assert d["promotion"] == pytest.approx(LTE.idle.promotion_s, abs=1e-9)
    assert d["handshake"] == pytest.approx(PRESETS["4g"].handshake_rtts * PRESETS["4g"].rtt_ms / 1000, abs=1e-9)
    assert d["total"] == pytest.approx(sum(v for k, v in d.items() if k != "total"), abs=1e-12)
    assert (len(device_seen), len(cloud_seen)) == (1, 1)

    logged = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    assert [(x["served_by"], x["auto"]["chosen"]) for x in logged] == [("m.device", "local"), ("m.cloud", "hybrid")]
    text = await (await client.get("/metrics")).text()
    for chosen, reason in (("local", "short_prompt"), ("hybrid", "default")):
        assert sample(text, "edgemeter_auto_decisions_total", model="m", network="4g", policy="rules",
                      chosen=chosen, reason=reason) == 1


async def test_session_scope_follows_the_first_decision(split):
    client, device_seen, cloud_seen, _ = split
    headers = {"X-Edgemeter-Session": "s1", "X-Edgemeter-Auto-Scope": "session"}
    _, first = await ask(client, "short", **headers)
    _, second = await ask(client, "x" * 4000, **headers)  # long, but the session decided already
    assert [r["served_by"] for r in (first, second)] == ["m.device", "m.device"]
    assert second["auto"]["scope"] == "session" and second["auto"]["reason"] == "short_prompt"
    assert (len(device_seen), len(cloud_seen)) == (2, 0)
    per_call = {"X-Edgemeter-Session": "s2"}  # the configured scope: call, each call decided afresh
    _, a = await ask(client, "short", **per_call)
    _, b = await ask(client, "x" * 4000, **per_call)
    assert [r["served_by"] for r in (a, b)] == ["m.device", "m.cloud"]
    r = await client.post("/edgemeter/v1/sessions/s2/end", data=b"{}", headers={"Content-Type": "application/json"})
    ended = await r.json()
    assert (ended["mode"], ended["calls"]) == ("auto", 2)


async def test_auto_without_a_policy_is_a_400(aiohttp_server, proxy_client):
    up = str((await aiohttp_server(make_app())).make_url("/v1"))
    client = await proxy_client({"m": {"backend": "upstream", "base_url": up, "model": "echo"}})
    status, err = await ask(client, "hi")
    assert status == 400 and err["error"]["code"] == "auto_not_configured"
    assert err["error"]["param"] == "X-Edgemeter-Mode"
    status, err = await ask(client, "hi", **{"X-Edgemeter-Auto-Scope": "task"})
    assert status == 400
