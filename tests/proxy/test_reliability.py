"""Faults from both sides and hostile input: each leaves the proxy healthy, its in-flight gauge
at zero, the failure counted by cause, and nothing leaked (connections, file descriptors,
memory). The upstream faults tests/proxy/test_app.py already covers one by one are run here
only for the books they must balance."""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

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
        self.keys = []  # Authorization headers received
        self.stalling = asyncio.Event()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        script = body["model"]
        self.keys.append(request.headers.get("Authorization"))
        if script == "echo_key":  # some servers quote the key they refused
            return web.json_response({"error": {"message": f"bad key {request.headers['Authorization']}",
                                                "type": "invalid_request_error"}}, status=401)
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
            elif script == "burst_then_stall":  # enough to fill every buffer to the client, then nothing
                piece = chunk({"content": "x" * 1000})
                for _ in range(20000):
                    await resp.write(piece)
                self.stalling.set()
                await asyncio.sleep(30)
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
    ours = ["stall_mid", "endless", "slow", "burst_then_stall", "echo_key", *SHAPES]
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


@pytest.fixture
async def closing(aiohttp_server, proxy_client):
    """Proxy, scripted upstreams that close every connection after their response (so pooled
    keep-alive connections do not blur the count: any connection left open is one the proxy
    failed to close)."""
    async def close_after(_, resp):
        resp.force_close()
    up = Upstream()
    apps = [up.app(), fake_app()]
    for app in apps:
        app.on_response_prepare.append(close_after)
    up.server, fake = [await aiohttp_server(app) for app in apps]
    client = await proxy_client(models(up, fake))
    return client, up.server, fake


async def test_a_burst_of_failing_requests_leaks_no_connection_or_descriptor(closing):
    proxy, *upstreams = closing
    assert (await post(proxy, {"model": "echo", "messages": MSG})).status == 200
    fds = len(os.listdir("/proc/self/fd"))
    scripts = ["stall_mid", "reset", "malformed", "nodone", "stream_error", "500", "refused", "choice_not_object"]
    url = proxy.make_url("/v1/chat/completions")

    async def one(session, i):
        body = {"model": scripts[i % len(scripts)], "messages": MSG, "stream": i // len(scripts) % 2 == 0}
        async with session.post(url, json=body) as r:
            await r.read()
            return r.status
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as s:
        statuses = await asyncio.gather(*(one(s, i) for i in range(160)))
    assert set(statuses) <= {200, 502, 504} and 200 in statuses and 504 in statuses

    async def released():
        return (await in_flight(proxy) == 0 and len(os.listdir("/proc/self/fd")) <= fds
                and not any(u.runner.server.connections for u in upstreams))
    await eventually(released, "every connection closed and the in-flight gauge at zero")
    r = await post(proxy, {"model": "echo", "messages": MSG, "stream": True})
    assert r.status == 200 and sse(await r.read())[-1] == "[DONE]"


# --- faults from the client side ---

def request_bytes(body: bytes | dict, headers: dict | None = None, length: int | None = None) -> bytes:
    """A raw HTTP/1.1 request, so a test can send less than it announces."""
    if isinstance(body, dict):
        body = orjson.dumps(body)
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             f"Content-Length: {len(body) if length is None else length}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def raw(server, data: bytes):
    """Open a connection to a test server (or a test client's server) and send ``data``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", getattr(server, "server", server).port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def response(reader) -> tuple[int, dict]:
    """Status and JSON body of one raw HTTP response (read by its Content-Length, not to EOF)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    length = next(int(line.split(":")[1]) for line in head.split("\r\n") if line.lower().startswith("content-length:"))
    return int(head.split()[1]), orjson.loads(await reader.readexactly(length))


def link_pumps() -> list[asyncio.Task]:
    """The proxy's downlink pump tasks still alive (proxy.app.paced starts one per hybrid stream)."""
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "paced.<locals>.pump"]


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("headers", [{}, HYBRID], ids=["local", "hybrid"])
async def test_client_disconnect_mid_stream_cancels_the_upstream_request(upstream, proxy, headers, caplog):
    before = await metric(proxy, "edgemeter_request_errors_total", model="slow", cause="client_disconnected")
    reader, writer = await raw(proxy, request_bytes({"model": "slow", "messages": MSG, "stream": True}, headers))
    await asyncio.wait_for(reader.readuntil(b"t1 "), 5)  # tokens are flowing
    writer.close()
    await asyncio.wait_for(upstream.closed.wait(), 5)  # the upstream saw its request end, 10 s early

    async def idle():
        return await in_flight(proxy) == 0
    await eventually(idle, "in-flight back to zero")
    assert await metric(proxy, "edgemeter_request_errors_total", model="slow",
                        cause="client_disconnected") == before + 1
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]  # a client leaving is no error


@pytest.mark.parametrize("headers", [{}, HYBRID], ids=["local", "hybrid"])
async def test_a_reader_that_stops_reading_pauses_the_upstream(upstream, proxy, headers, caplog):
    """Backpressure: the endless upstream can only get as far ahead as the socket buffers and
    the proxy's bounded stream buffer allow; it never fills the proxy's memory."""
    rss0 = rss()
    reader, writer = await raw(proxy, request_bytes({"model": "endless", "messages": MSG, "stream": True}, headers))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # headers; then the client reads nothing
    seen = -1
    for _ in range(100):  # until the upstream's writes stop returning
        if upstream.written == seen:
            break
        seen = upstream.written
        await asyncio.sleep(0.3)
    assert upstream.written == seen and upstream.written < 64 << 20, upstream.written
    assert rss() - rss0 < 64 << 20
    assert await reader.readexactly(1 << 20)  # still streaming once the client reads again
    writer.close()
    await asyncio.wait_for(upstream.closed.wait(), 5)

    async def idle():
        return await in_flight(proxy) == 0
    await eventually(idle, "in-flight back to zero")
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not link_pumps()  # nothing holds the frames buffered for the reader that left


async def test_a_client_leaving_while_the_link_pump_reads_the_upstream(upstream, fake, proxy_client, caplog):
    """Hybrid mode: the client stops reading (the proxy blocks writing to it) while the link's
    pump task waits inside the backend for the next token; then the client leaves. The pump
    must be stopped before the backend stream is closed (closing a generator another task is
    running raises), and the request booked as a disconnect."""
    client = await proxy_client(models(upstream, fake, read_timeout=10.0), server={"max_stream_buffer": 100000})
    lan = {**HYBRID, "X-Edgemeter-Network": "lan"}  # a downlink with delay: frames wait in the pump's queue
    before = await metric(client, "edgemeter_request_errors_total", model="burst_then_stall",
                          cause="client_disconnected")
    reader, writer = await raw(client, request_bytes({"model": "burst_then_stall", "messages": MSG, "stream": True},
                                                     lan))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(upstream.stalling.wait(), 10)
    await asyncio.sleep(0.2)  # the pump has taken everything the upstream sent and waits for more
    writer.close()
    await asyncio.wait_for(upstream.closed.wait(), 5)

    async def idle():
        return await in_flight(client) == 0
    await eventually(idle, "in-flight back to zero")
    assert await metric(client, "edgemeter_request_errors_total", model="burst_then_stall",
                        cause="client_disconnected") == before + 1
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not link_pumps()


async def test_a_body_cut_short_by_a_closed_connection_leaves_the_proxy_healthy(proxy, caplog):
    _, writer = await raw(proxy, request_bytes(b'{"model": "echo", "mess', length=1000))
    writer.close()
    _, writer = await raw(proxy, request_bytes(b"", length=1000))  # headers only
    writer.close()
    r = await post(proxy, {"model": "echo", "messages": MSG})
    assert r.status == 200 and await in_flight(proxy) == 0
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_a_stalled_body_gets_408_instead_of_holding_a_handler_forever(upstream, fake, proxy_client):
    client = await proxy_client(models(upstream, fake), server={"body_timeout_s": 0.2})
    reader, writer = await raw(client, request_bytes(b'{"model": "echo", "mess', length=1000))
    status, body = await response(reader)
    writer.close()
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert (await post(client, {"model": "echo", "messages": MSG})).status == 200


async def test_a_client_that_never_finishes_its_headers_is_dropped(upstream, fake, aiohttp_server):
    """aiohttp closes a connection that has not sent a whole request within keepalive_timeout
    (75 s under ``python -m proxy``, run_app's default); nothing of the proxy runs before that."""
    from proxy.app import create_app
    from tests.conftest import make_config
    server = await aiohttp_server(create_app(make_config(models(upstream, fake))), keepalive_timeout=0.2)
    reader, writer = await raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, without a response
    writer.close()


async def test_a_decompression_bomb_is_cut_at_the_body_limit(proxy):
    """aiohttp inflates gzip request bodies; the size limit applies to the inflated bytes."""
    import zlib
    z = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: gzip framing
    mib = b"a" * (1 << 20)
    bomb = z.compress(b'{"model": "echo", "messages": [{"role": "user", "content": "') + \
        b"".join(z.compress(mib) for _ in range(256)) + z.compress(b'"}]}') + z.flush()
    rss0 = rss()
    r = await proxy.post("/v1/chat/completions", data=bomb,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert len(bomb) < 2 << 20 and r.status == 413  # 1 MiB on the wire, 256 MiB inflated
    assert rss() - rss0 < 128 << 20
    r = await proxy.post("/v1/chat/completions", data=b"not gzip at all",
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_body"


# --- hostile input the contract tests do not already send ---

BODY = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize("raw_body,code,param", [
    (b"", "invalid_json", None),
    (b"null", "invalid_type", None),
    (b"[]", "invalid_type", None),
    (b'"text"', "invalid_type", None),
    (BODY + b', "temperature": NaN}', "invalid_json", None),
    (BODY + b', "temperature": Infinity}', "invalid_json", None),
    (BODY + b', "temperature": "0.5"}', "invalid_type", "temperature"),
    (BODY + b', "max_tokens": "16"}', "invalid_type", "max_tokens"),
    (BODY + b', "max_tokens": 16.5}', "invalid_type", "max_tokens"),
    (BODY + b', "stream": 1}', "invalid_type", "stream"),
    (BODY + b', "seed": 100000000000000000000000}', "invalid_type", "seed"),
    (BODY + b', "stop": ' + orjson.dumps(["x"] * 10000) + b"}", "invalid_type", "stop"),
    (BODY + b', "stop": ["x", ""]}', "invalid_type", "stop"),
    (BODY + b', "stream_options": {"include_usage": "yes"}}', "invalid_type", "stream_options"),
    (BODY + b', "tools": {"python": 1}}', "invalid_type", "tools"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json", None),
    (b'{"model": "echo", "messages": [{"role": "user", "content": 5}]}', "invalid_type", "messages[0].content"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": [1, 2]}]}', "invalid_type",
     "messages[0].content[0]"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": [{"text": "no type"}]}]}', "invalid_type",
     "messages[0].content[0]"),
    (b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
     "invalid_type", "messages[0].content[0]"),
    (b'{"model": "echo", "messages": [{"role": {"user": 1}, "content": "hi"}]}', "invalid_value",
     "messages[0].role"),
    (b'{"model": "echo", "messages": [{"role": ["user"], "content": "hi"}]}', "invalid_value",
     "messages[0].role"),
    (b'{"model": 5, "messages": []}', "invalid_type", "model"),
    (b'{"model": "", "messages": []}', "invalid_type", "model"),
])
async def test_hostile_bodies_get_400_naming_the_problem(proxy, raw_body, code, param):
    r = await proxy.post("/v1/chat/completions", data=raw_body, headers={"Content-Type": "application/json"})
    err = (await r.json())["error"]
    assert r.status == 400 and (err["code"], err["param"]) == (code, param)
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"


async def test_text_content_parts_are_accepted(proxy):
    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}]
    r = await post(proxy, {"model": "echo", "messages": [{"role": "user", "content": parts}]})
    assert r.status == 200


async def test_duplicate_keys_take_the_last_value_like_json_parse(proxy):
    r = await proxy.post("/v1/chat/completions", data=b'{"model": "echo", "model": "nope", "messages": []}',
                         headers={"Content-Type": "application/json"})
    assert r.status == 400 and (await r.json())["error"]["param"] == "messages"  # "nope" was never looked up
    r = await proxy.post("/v1/chat/completions", data=b'{"model": "nope", "model": "echo", "messages": '
                         b'[{"role": "user", "content": "hi"}]}', headers={"Content-Type": "application/json"})
    assert r.status == 200


@pytest.mark.parametrize("method,path", [("GET", "/v1/chat/completions"), ("GET", "/v1/completions"),
                                         ("PUT", "/v1/models"), ("DELETE", "/metrics"),
                                         ("GET", "/edgemeter/v1/sessions/s/end")])
async def test_wrong_method_is_an_openai_405(proxy, method, path):
    r = await proxy.request(method, path)
    err = (await r.json())["error"]
    assert r.status == 405 and set(err) == {"message", "type", "param", "code"}
    assert method not in r.headers["Allow"] and r.headers["Allow"]


@pytest.mark.parametrize("header,value", [("X-Edgemeter-Device", "dev\xa0ice"), ("X-Edgemeter-Session", "s" * 200),
                                          ("X-Edgemeter-Mode", "")])
async def test_bad_edgemeter_headers_are_400(proxy, header, value):
    r = await post(proxy, {"model": "echo", "messages": MSG}, {header: value})
    assert r.status == 400 and (await r.json())["error"]["param"] == header


# --- access ---

KEY = "client-key-123"


@pytest.fixture
async def keyed(upstream, fake, proxy_client):
    return await proxy_client(models(upstream, fake), server={"api_key": KEY, "metrics_auth": True})


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": KEY}, {"Authorization": f"bearer {KEY}"}, {"Authorization": f"Bearer  {KEY}"},
    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Bearer {KEY[:-1]}"}, {"Authorization": "Bearer "},
    {"Authorization": f"Basic {KEY}"}, {"X-Api-Key": KEY}, {"Api-Key": KEY}, {"OpenAI-Api-Key": KEY},
])
async def test_the_api_key_counts_only_as_a_bearer_token(keyed, headers):
    for path in ("/v1/models", "/metrics"):
        r = await keyed.get(path, headers=headers)
        assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
    r = await keyed.get("/v1/models", params={"api_key": KEY}, headers=headers)
    assert r.status == 401
    assert (await keyed.get("/healthz", headers=headers)).status == 200  # probes need no key


@pytest.mark.parametrize("path", ["/v1/../metrics", "/%6detrics", "//metrics", "/METRICS", "/metrics/",
                                  "/%761/models", "/v1//models", "/./v1/models", "/healthz/../v1/models",
                                  "/%2e%2e/v1/models", "/v1/models%00", "/edgemeter/v1/sessions/x/end"])
async def test_no_spelling_of_a_path_gets_past_the_key(keyed, path):
    reader, writer = await raw(keyed, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status, body = await response(reader)
    writer.close()
    assert status in (401, 404, 405) and set(body["error"]) == {"message", "type", "param", "code"}


async def test_a_non_utf8_authorization_header_is_401_not_500(keyed):
    for value in (b"Bearer \xff", KEY.encode() + b"\xff", b"Bearer " + KEY.encode() + b"\xff"):
        head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value + b"\r\n\r\n"
        reader, writer = await raw(keyed, head)
        status, body = await response(reader)
        writer.close()
        assert status == 401 and body["error"]["type"] == "authentication_error"


async def test_the_key_is_compared_in_constant_time(keyed, monkeypatch):
    import hmac
    from types import SimpleNamespace

    import proxy.app
    seen = []

    def spy(a, b):
        seen.append((a, b))
        return hmac.compare_digest(a, b)
    monkeypatch.setattr(proxy.app, "hmac", SimpleNamespace(compare_digest=spy))
    assert (await keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status == 200
    assert (await keyed.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).status == 200
    assert (await keyed.get("/metrics", headers={"Authorization": "Bearer guess"})).status == 401
    right = f"Bearer {KEY}".encode()
    assert seen == [(right, right), (right, right), (b"Bearer guess", right)]


async def test_metrics_stay_open_unless_metrics_auth(upstream, fake, proxy_client):
    client = await proxy_client(models(upstream, fake), server={"api_key": KEY})
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/v1/models")).status == 401


async def test_the_upstream_key_never_reaches_logs_records_metrics_or_errors(upstream, fake, proxy_client,
                                                                               tmp_path, caplog):
    secret = "sk-upstream-secret-42"
    log = tmp_path / "requests.jsonl"
    client = await proxy_client(models(upstream, fake, api_key=secret), server={"request_log": str(log)})
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's client included
    seen = []
    for script in ("echo", "echo_key", "500", "400json", "notjson", "reset", "malformed", "stall_mid",
                   "choice_not_object", "refused"):
        for stream in (False, True):
            r = await post(client, {"model": script, "messages": MSG, "stream": stream})
            seen.append(await r.text() + str(r.headers))
    seen.append(await (await client.get("/metrics")).text())
    seen += [log.read_text(), caplog.text]
    assert not [text[:300] for text in seen if secret in text]
    assert f"Bearer {secret}" in upstream.keys  # it did go upstream
    assert "bad key Bearer ***" in "".join(seen)  # an upstream that quotes it is redacted


# --- load ---

def test_a_short_soak_loses_nothing(tmp_path):
    """The README's soak (256 clients x 60 s) in small: 64 streaming clients for 3 s through a
    real proxy process and harness.load.fast_upstream, every check of ``python -m harness soak``."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "harness", "soak", "--clients", "64", "--duration", "3",
                           "--warmup", "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["requests"] >= 64 and result["errors"] == 0 and all(result["checks"].values())
    assert result["metrics_generation_tokens"] == result["tokens_received"] == 64 * result["requests"]


# --- the harness: hostile model-written code fails its task, never the run ---

def hostile_programs(tmp_path, port: int, secret: str, marker: str) -> dict[str, str]:
    """What a model might write, by the escape it attempts."""
    return {
        "infinite_loop": "while True:\n    pass",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "memory_bomb": "blob = bytearray(8 << 30)",
        "write_outside": f"open({str(tmp_path / 'escaped.txt')!r}, 'w').write('x')",
        "read_home": f"print(open({secret!r}).read())",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        # a detached grandchild that outlives the code unless the sandbox kills it; its
        # command line is the marker the test looks for afterwards
        "background_process": "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                              "        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
                              f"'{marker}'])\n    os._exit(0)\ntime.sleep(0.2)\nprint('spawned')",
    }


def processes_with(arg: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if arg.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


async def test_hostile_code_fails_its_task_and_the_run_goes_on(aiohttp_server, tmp_path, monkeypatch):
    """Each task's model runs an escape attempt as a tool call and then submits it as its
    answer: every attempt is contained, every task graded failed, every task recorded."""
    import socket
    import tempfile
    import uuid
    from dataclasses import replace

    from harness.agents import run
    from harness.agents.results import read_rows
    from harness.agents.sandbox import Sandbox
    from tests.harness_fixtures import data_dir

    real_run = Sandbox.run

    def quick(self, code, *, limits=None, **kw):  # the grader's 15 s wall limit, cut to keep this test short
        lim = limits or self.limits
        return real_run(self, code, limits=replace(lim, wall_s=min(lim.wall_s, 2.0), cpu_s=min(lim.cpu_s, 1.0)),
                        **kw)
    monkeypatch.setattr(Sandbox, "run", quick)
    marker = f"edgemeter-escapee-{uuid.uuid4().hex}"
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            tempfile.NamedTemporaryFile("w", dir=os.path.expanduser("~"), prefix=".edgemeter-secret-") as secret:
        secret.write("TOPSECRET")
        secret.flush()
        programs = hostile_programs(tmp_path, listener.getsockname()[1], secret.name, marker)
        order = list(programs.values())
        replies = []

        async def chat(request):
            body = await request.json()
            code = order[len(replies) // 2]  # two calls per task: run the code, then answer with it
            text = (f"```python\n{code}\n```" if len(replies) % 2 == 0
                    else f"FINAL ANSWER:\n```python\n{code}\n```")
            replies.append(body["model"])
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": text},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 10}})
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        server = await aiohttp_server(app)
        out = tmp_path / "run"
        argv = ["--base-url", str(server.make_url("/v1")), "--dataset", "mbpp", "--data-dir", str(data_dir("mbpp")),
                "--limit", str(len(programs)), "--models", "scripted", "--out", str(out), "--warmup", "0", "--repeats", "1",
                "--no-stream", "--no-progress", "--no-report", "--transcripts"]
        assert await run._run(run.build_parser().parse_args(argv)) == 0
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == len(programs) and len(replies) == 2 * len(programs)
    for name, row in zip(programs, rows, strict=True):
        assert row["passed"] is False and row["error"] is None, name
        assert row["tool_calls"][0]["name"] == "python" and row["grade_detail"], name
        observation = row["messages"][3]["content"]
        assert "TOPSECRET" not in observation, name
        if name == "background_process":
            assert "spawned" in observation and "Error" not in observation and row["tool_calls"][0]["ok"]
        else:
            assert not row["tool_calls"][0]["ok"], (name, observation)
    assert not (tmp_path / "escaped.txt").exists()
    assert not processes_with(marker)


def listening_addresses(pid: int) -> set[str]:
    """Local addresses of a process's listening TCP sockets, from /proc."""
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
              if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            f = row.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                out.add(f[1])
    return out


@pytest.fixture
def fake_upstream_process():
    """tests/fake_upstream.py in a process of its own, for a proxy process to reach."""
    import subprocess
    import sys

    from tests.conftest import ROOT, wait_http
    port = free_port()
    code = ("from aiohttp import web\nfrom tests.fake_upstream import make_app\n"
            "async def ping(request):\n    return web.Response(text='ok')\n"
            "app = make_app()\napp.router.add_get('/ping', ping)\n"
            f"web.run_app(app, host='127.0.0.1', port={port}, print=None)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_python_m_proxy_binds_loopback_and_logs_no_secret(fake_upstream_process, tmp_path):
    """The shipped defaults end to end: no --host binds 127.0.0.1 only; at DEBUG, across
    failures and successes, the process logs neither the upstream key nor the client key."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    from tests.conftest import ROOT, wait_http
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(orjson.dumps({
        "server": {"port": port, "api_key": "env:EM_CLIENT_KEY"},
        "models": {name: {"backend": "upstream", "base_url": f"{fake_upstream_process}/v1", "model": name,
                          "api_key": "env:EM_UPSTREAM_KEY"} for name in ("echo", "500", "reset")}}).decode())
    env = {**os.environ, "EM_CLIENT_KEY": "client-secret-77", "EM_UPSTREAM_KEY": "upstream-secret-88"}
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg), "--log-level", "DEBUG"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        assert listening_addresses(proc.pid) == {f"0100007F:{port:04X}"}  # 127.0.0.1, nothing else
        for model in ("echo", "500", "reset"):
            for key in ("client-secret-77", "wrong"):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                    data=orjson.dumps({"model": model, "messages": MSG, "stream": True}),
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
                try:
                    urllib.request.urlopen(req, timeout=10).read()
                except urllib.error.HTTPError as e:
                    e.read()
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert "serving on http://127.0.0.1" in text
    assert "upstream-secret-88" not in text and "client-secret-77" not in text



# --- the in-process llama.cpp backend and chat content it cannot template ---

def test_llama_backend_joins_text_parts_and_refuses_others():
    from backends.base import BackendError
    from backends.llama import _text_messages
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    msgs = [{"role": "system", "content": None}, {"role": "user", "name": "u", "content": parts}]
    assert _text_messages(msgs) == [{"role": "system", "content": ""}, {"role": "user", "name": "u", "content": "ab"}]
    with pytest.raises(BackendError) as e:
        _text_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert (e.value.status, e.value.param) == (400, "messages[0].content")


def test_llama_backend_template_refusal_is_a_400():
    import jinja2

    from backends.base import BackendError, GenRequest
    from backends.llama import LlamaBackend
    backend = LlamaBackend("m", {"source": "unused.gguf"})

    def refuse(messages):
        raise jinja2.TemplateError("Conversation roles must alternate user/assistant/user/assistant")
    backend.formatter = refuse
    with pytest.raises(BackendError) as e:
        backend._prompt_tokens(GenRequest("chat", "m", {"messages": MSG}))
    assert e.value.status == 400 and "alternate" in e.value.message and e.value.code == "invalid_messages"
