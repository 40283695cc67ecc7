"""Faults from both sides and hostile input: each leaves the proxy healthy, its in-flight gauge
at zero, the failure counted by cause, and nothing leaked (connections, file descriptors,
memory). The upstream faults tests/test_proxy_api.py already covers one by one are run here
only for the books they must balance."""
from __future__ import annotations

import asyncio
import logging
import os

import aiohttp
import orjson
import pytest
from aiohttp import web

import backends
from backends.base import Backend, TextDelta
from tests.conftest import free_port
from tests.fake_upstream import chunk
from tests.fake_upstream import make_app as fake_app

MSG = [{"role": "user", "content": "hi"}]
HYBRID = {"X-Edgemeter-Mode": "hybrid", "X-Edgemeter-Network": "local"}
ENDLESS_CAP = 256 << 20  # the endless script stops by itself after this many bytes
# SSE events that are valid JSON but the wrong shape for an OpenAI chunk.
SHAPES = {
    "choices_not_list": b'data: {"choices": 5}\n\n',
    "choice_not_object": b'data: {"choices": ["x"]}\n\n',
    "delta_not_object": b'data: {"choices": [{"delta": "x"}]}\n\n',
    "content_not_string": b'data: {"choices": [{"delta": {"content": 5}}]}\n\n',
    "finish_not_string": b'data: {"choices": [{"delta": {}, "finish_reason": 5}]}\n\n',
    "tool_call_not_object": b'data: {"choices": [{"delta": {"tool_calls": ["x"]}}]}\n\n',
    "tool_index_not_int": b'data: {"choices": [{"delta": {"tool_calls": [{"index": "a"}]}}]}\n\n',
    "usage_not_object": b'data: {"choices": [], "usage": 5}\n\n',
    "usage_not_int": b'data: {"choices": [], "usage": {"prompt_tokens": "many"}}\n\n',
    "usage_negative": b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": -3}}\n\n',
}


class Upstream:
    """Scripts tests/fake_upstream.py lacks: a stall after the first token, endless output,
    tokens at a slow pace, events of the wrong shape. It records what reached it and whether
    its client (the proxy) went away mid-response."""

    def __init__(self):
        self.written = 0  # bytes the endless script got out (each write returned)
        self.closed = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        script = body["model"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            if script == "stall_mid":
                await resp.write(chunk({"content": "Hi"}))
                await asyncio.sleep(30)
            elif script == "endless":
                piece = chunk({"content": "x" * 1000})
                while self.written < ENDLESS_CAP:
                    await resp.write(piece)
                    self.written += len(piece)
            elif script == "slow":
                for i in range(1000):
                    await resp.write(chunk({"content": f"t{i} "}))
                    await asyncio.sleep(0.01)
            elif script in SHAPES:
                if body.get("after_token"):
                    await resp.write(chunk({"content": "Hi"}))
                await resp.write(SHAPES[script])
            await resp.write(chunk(finish="stop"))
            await resp.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.closed.set()
            raise
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app


@pytest.fixture
async def upstream(aiohttp_server):
    up = Upstream()
    up.server = await aiohttp_server(up.app())  # test servers cancel a handler whose client left
    return up


@pytest.fixture
async def fake(aiohttp_server):
    return await aiohttp_server(fake_app())


def models(upstream, fake, **extra) -> dict:
    ours = ["stall_mid", "endless", "slow", *SHAPES]
    theirs = ["echo", "reset", "malformed", "stream_error", "nodone", "500", "503json", "400json", "notjson",
              "stall"]
    out = {n: {"backend": "upstream", "base_url": str(upstream.server.make_url("/v1")), "model": n} for n in ours}
    out |= {n: {"backend": "upstream", "base_url": str(fake.make_url("/v1")), "model": n} for n in theirs}
    out["refused"] = {"backend": "upstream", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    for block in out.values():
        block.update({"read_timeout": 0.5, **extra})
    return out


@pytest.fixture
async def proxy(upstream, fake, proxy_client):
    return await proxy_client(models(upstream, fake))


async def post(client, body: dict, headers=None):
    return await client.post("/v1/chat/completions", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json", **(headers or {})})


def sse(raw: bytes) -> list:
    payloads = [b[6:] for b in raw.split(b"\n\n") if b.startswith(b"data: ")]
    return ["[DONE]" if p == b"[DONE]" else orjson.loads(p) for p in payloads]


async def metric(client, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (a line scan: the registry
    holds every earlier test's series, too many for prometheus_client's parser to be quick)."""
    text = await (await client.get("/metrics")).text()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


async def in_flight(client) -> float:
    return await metric(client, "edgemeter_num_requests_running")


async def eventually(check, what: str, timeout: float = 5.0) -> None:
    """Poll an async or plain predicate: cleanup after a fault happens on the server's own time."""
    for _ in range(int(timeout / 0.02)):
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {what} within {timeout} s")


# --- faults from the backend side ---

# (script, stream, status, cause): every upstream failure mode, streamed and not.
FAULTS = [
    ("refused", False, 502, "upstream_unreachable"),
    ("500", True, 502, "upstream_5xx"),
    ("notjson", False, 502, "upstream_5xx"),
    ("400json", True, 400, "upstream_400"),
    ("stall", True, 504, "upstream_timeout"),
    ("reset", True, 200, "upstream_reset"),
    ("reset", False, 502, "upstream_reset"),
    ("malformed", True, 200, "upstream_malformed"),
    ("stream_error", False, 502, "upstream_stream_error"),
    ("nodone", True, 200, "upstream_incomplete"),
    ("stall_mid", True, 200, "upstream_timeout"),
    ("stall_mid", False, 504, "upstream_timeout"),
]


@pytest.mark.parametrize("script,stream,status,cause", FAULTS)
async def test_each_upstream_fault_balances_the_books(proxy, script, stream, status, cause):
    before = await metric(proxy, "edgemeter_request_errors_total", model=script, cause=cause)
    r = await post(proxy, {"model": script, "messages": MSG, "stream": stream})
    assert r.status == status
    if status == 200:  # failed after the first token: the stream ends with an OpenAI error event
        events = sse(await r.read())
        assert events[0]["choices"][0]["delta"]["content"] == "Hi" and "[DONE]" not in events
        assert set(events[-1]["error"]) == {"message", "type", "param", "code"}
        assert events[-1]["edgemeter"]["error"] == cause
    else:
        assert set((await r.json())["error"]) == {"message", "type", "param", "code"}
    assert await metric(proxy, "edgemeter_request_errors_total", model=script, cause=cause) == before + 1
    assert await in_flight(proxy) == 0
    r = await post(proxy, {"model": "echo", "messages": MSG, "stream": stream})
    assert r.status == 200 and b"t4" in await r.read()


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("after_token", [False, True])
async def test_upstream_events_of_the_wrong_shape_are_502_not_a_crash(proxy, shape, after_token, caplog):
    r = await post(proxy, {"model": shape, "messages": MSG, "stream": True, "after_token": after_token})
    if after_token:
        assert r.status == 200
        err = sse(await r.read())[-1]
        assert err["edgemeter"]["error"] == "upstream_malformed" and err["error"]["type"] == "upstream_error"
    else:
        assert r.status == 502 and "wrong shape" in (await r.json())["error"]["message"]
    r = await post(proxy, {"model": shape, "messages": MSG, "after_token": after_token})
    assert r.status == 502
    assert await in_flight(proxy) == 0
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


class Buggy(Backend):
    """A backend with a bug: it fails with an exception the proxy does not know."""
    kind = "buggy"

    def __init__(self, name, settings):
        super().__init__(name)
        self.after_token = settings.get("after_token", False)

    async def generate(self, req):
        if not self.after_token:
            raise KeyError("a bug")
        yield TextDelta("Hi")
        raise KeyError("a bug")


@pytest.mark.parametrize("after_token", [False, True])
async def test_a_backend_bug_is_an_openai_500_and_closes_the_books(proxy_client, monkeypatch, after_token, caplog):
    monkeypatch.setitem(backends.KINDS, "buggy", f"{__name__}:Buggy")
    client = await proxy_client({"bug": {"backend": "buggy", "after_token": after_token}})
    before = await metric(client, "edgemeter_request_errors_total", model="bug", cause="internal_error")
    r = await post(client, {"model": "bug", "messages": MSG, "stream": True})
    if after_token:  # headers were sent: the error arrives as the stream's last event
        assert r.status == 200
        events = sse(await r.read())
        assert events[0]["choices"][0]["delta"]["content"] == "Hi"
        err = events[-1]
    else:
        assert r.status == 500
        err = await r.json()
    assert err["error"]["code"] == "internal_error" and err["error"]["type"] == "server_error"
    assert await in_flight(client) == 0
    assert await metric(client, "edgemeter_request_errors_total", model="bug", cause="internal_error") == before + 1
    assert "a bug" in caplog.text  # the traceback is logged for the operator, not sent to the client
    assert "KeyError" not in str(err)
