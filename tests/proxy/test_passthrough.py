"""The relayed stream against the parsed one: on the same upstream script, a proxy that forwards
the upstream's SSE bytes (server.passthrough, the default) and one that parses and re-encodes
every event must keep the same per-request record and the same Prometheus series, and the
relayed client must get the upstream's frames byte for byte.

Each script is a list of raw SSE frames, written one by one with a short gap so that most
reads hold one frame and some hold several (both cases the relay path must count alike).
Times differ between runs, so records are compared without their time fields and
histograms by observation count.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from backends.upstream import _plain
from proxy.app import ROUTER
from tests.fake_upstream import chunk

MSG = [{"role": "user", "content": "hi"}]
USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
DONE = b"data: [DONE]\n\n"
ROLE = chunk({"role": "assistant", "content": ""})  # nothing to count: relayed with the next frame
TEXT = [chunk({"content": w}) for w in ("The", " answer", " is", " 42")]
TOOLS = [chunk(d) for d in (
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "python", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\"code\": "}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "\"print(1)\"}"}}]})]
SCRIPTS = {
    "usage": [ROLE, chunk({"reasoning_content": "Hm."}), *TEXT, chunk(finish="stop"),
              chunk(usage=USAGE, choices=False), DONE],
    "tools": [ROLE, TEXT[0], *TOOLS, chunk(finish="tool_calls"), chunk(usage=USAGE, choices=False), DONE],
    "error": [ROLE, *TEXT[:2], b'data: {"error": {"message": "engine crashed", "type": "server_error"}}\n\n'],
    # SGLang: usage on the finish chunk and again on a chunk with empty choices
    "sglang": [*TEXT[:3], chunk({"content": " 42"}, finish="stop", usage=USAGE), chunk(usage=USAGE, choices=False),
               DONE],
    # llama.cpp's server: no usage, the last token and the finish in one frame, a keep-alive comment
    "nousage": [ROLE, b": ping\n\n", *TEXT[:3], chunk({"content": " 42"}, finish="length"), DONE],
}

def text_chunk(text: str, finish=None) -> bytes:
    return b"data: " + orjson.dumps({"id": "up-1", "object": "text_completion", "created": 1, "model": "x", "choices": [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}) + b"\n\n"


SCRIPTS["completion"] = [*(text_chunk(w) for w in ("The", " answer", " is", " 42")), text_chunk("", "length"),
                         chunk(usage=USAGE, choices=False, obj="text_completion"), DONE]
TIMES = ("ttft_s", "ttfat_s", "backend_ttft_s", "e2e_s", "tpot_s", "queue_s")


class Scripted:
    """Plays SCRIPTS by the upstream model name; keeps the bytes it sent per request."""

    def __init__(self):
        self.sent: list[bytes] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        frames = SCRIPTS[(await request.json())["model"]]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.sent.append(b"")
        for i, frame in enumerate(frames):
            await resp.write(frame)
            self.sent[-1] += frame
            if i % 3 == 0:  # two frames in one read now and then
                await asyncio.sleep(0.002)
        return resp


@pytest.fixture
async def scripted(aiohttp_server):
    up = Scripted()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    app.router.add_post("/v1/completions", up.chat)
    up.server = await aiohttp_server(app)
    return up


@pytest.fixture
async def pair(scripted, proxy_client):
    """(relaying proxy, parsing proxy): models r-NAME and p-NAME play script NAME."""
    base = str(scripted.server.make_url("/v1"))

    async def make(prefix: str, passthrough: bool):
        models = {f"{prefix}-{n}": {"backend": "upstream", "base_url": base, "model": n} for n in SCRIPTS}
        return await proxy_client(models, server={"passthrough": passthrough})
    return await make("r", True), await make("p", False)


async def stream(client, model: str, include_usage: bool = True) -> bytes:
    chat = not model.endswith("completion")
    body = {"model": model, "stream": True, **({"messages": MSG} if chat else {"prompt": "hi"})}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r = await client.post("/v1/chat/completions" if chat else "/v1/completions", data=orjson.dumps(body),
                          headers={"Content-Type": "application/json"})
    assert r.status == 200
    return await r.read()


def events(raw: bytes) -> list:
    return [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]


def record(raw: bytes) -> dict:
    rec = dict(next(e["edgemeter"] for e in events(raw) if "edgemeter" in e))
    for key in (*TIMES, "request_id", "model", "served_by", "bytes_down"):
        rec.pop(key)
    return rec


async def series(client, model: str) -> dict:
    """The model's Prometheus samples without time-valued sums and buckets: counters whole,
    histograms by observation count."""
    text = await (await client.get("/metrics")).text()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or f'model="{model}"' not in line:
            continue
        name, value = line.rsplit(" ", 1)
        metric = name.split("{", 1)[0]
        if metric.endswith(("_bucket", "_sum", "_created")) or metric.startswith("edgemeter_bytes_total"):
            continue  # times, and bytes (relayed frames are the upstream's, not the proxy's encoding)
        out[name.replace(f'"{model}"', '"m"')] = float(value)  # the model, and the backend serving it
    return out


def relayable(frames: list[bytes]) -> bytes:
    """The upstream's leading frames a relaying proxy forwards as they are: all up to the first
    that carries usage (the proxy's to send once), [DONE] or an error (both the proxy's too)."""
    out = []
    for f in frames:
        if f == DONE or b'"usage"' in f or b'"error"' in f:
            break
        out.append(f)
    return b"".join(out)


@pytest.mark.parametrize("script", ["usage", "tools", "sglang", "nousage", "error", "completion"])
async def test_relayed_stream_keeps_the_parsed_streams_record_and_metrics(pair, script):
    relay, parse = pair
    raw_r, raw_p = await stream(relay, f"r-{script}"), await stream(parse, f"p-{script}")
    assert record(raw_r) == record(raw_p)
    rec = record(raw_r)
    expected = {"usage": (7, 4, 1 + 4 + 1, "stop"), "tools": (7, 4, 1 + 3 + 1, "tool_calls"),
                "sglang": (7, 4, 3 + 1 + 1, "stop"), "nousage": (ceil4("hi"), 4, 3 + 1 + 1, "length"),
                "error": (0, 0, 2, None), "completion": (7, 4, 4 + 1, "length")}[script]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["chunks"], rec["finish_reason"]) == expected
    assert rec["status"] == (502 if script == "error" else 200)
    assert await series(relay, f"r-{script}") == await series(parse, f"p-{script}")


def ceil4(text: str) -> int:
    return -(-len(text) // 4)  # the upstream backend's prompt estimate without usage or tokenizer


@pytest.mark.parametrize("script", ["usage", "tools", "sglang", "nousage", "error", "completion"])
async def test_relayed_bytes_are_the_upstreams(pair, scripted, script):
    relay, _ = pair
    for include_usage in (True, False):
        raw = await stream(relay, f"r-{script}", include_usage)
        sent = SCRIPTS[script]
        assert raw.startswith(relayable(sent)) and scripted.sent[-1].startswith(relayable(sent))
        tail = events(raw[len(relayable(sent)):])
        # What follows is the proxy's own: a frame it re-encoded (SGLang's usage-carrying finish),
        # the usage with the record, or the error event; one completion id throughout.
        assert {e["id"] for e in events(raw) if "id" in e} == {"up-1"}
        assert sum(1 for e in events(raw) if e.get("usage")) == (script != "error" and include_usage)
        if script == "error":
            assert tail[-1]["error"]["message"].endswith("engine crashed")
        else:
            assert raw.endswith(DONE) and raw.count(DONE) == 1
        if include_usage and script != "error":
            assert tail[-1]["choices"] == [] and tail[-1]["usage"]["completion_tokens"] == 4


async def test_relayed_bytes_down_counts_what_the_client_got(pair):
    relay, parse = pair
    for client, model in ((relay, "r-usage"), (parse, "p-usage")):
        raw = await stream(client, model)
        final = raw[raw.rindex(b"data: {"):-len(DONE)]  # the usage chunk, with the record: not counted
        rec = next(e["edgemeter"] for e in events(raw) if "edgemeter" in e)
        assert rec["bytes_down"] == len(raw) - len(final) - len(DONE)


class CharTokenizer:
    """One token per character: any text lost or reordered changes the count."""

    def count(self, text: str, special: bool = False) -> int:
        return len(text)

    def render_chat(self, messages: list) -> str:
        return "".join(m["content"] for m in messages)


async def test_a_tokenizer_counts_relayed_text_as_it_counts_parsed_text(pair):
    relay, parse = pair
    for client, model in ((relay, "r-nousage"), (parse, "p-nousage")):
        placements = client.server.app[ROUTER].models[model]
        for served in placements.values():
            served.backend.tokenizer = CharTokenizer()
    rec_r, rec_p = record(await stream(relay, "r-nousage")), record(await stream(parse, "p-nousage"))
    assert rec_r == rec_p
    assert (rec_r["completion_tokens"], rec_r["prompt_tokens"], rec_r["usage_source"]) == \
        (len("The answer is 42"), len("hi"), "tokenizer")


def test_only_plain_content_deltas_skip_the_parse():
    """The byte scan's verdict on every scripted frame: the content deltas are counted unparsed;
    a role-only chunk, reasoning, tool calls, finishes, usage, errors and comments are parsed."""
    plain = {f for f in (*TEXT, *(text_chunk(w) for w in ("The", " answer", " is", " 42")))}
    for frames in SCRIPTS.values():
        for f in frames:
            frame = f.removesuffix(b"\n\n")
            chat = b"text_completion" not in f
            assert _plain(frame, chat) == (f in plain), f
    spaced = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}], "usage": null}'
    assert _plain(spaced, True)  # JSON with spaces after the colons, usage null on every chunk (OpenAI's)
    escaped = b'data: {"choices": [{"index": 0, "delta": {"content": "\\"usage\\": {}"}, "finish_reason": null}]}'
    assert _plain(escaped, True)  # a key's bytes inside a string are escaped: no false alarm
