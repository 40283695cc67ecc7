"""A scripted OpenAI upstream for what a real server cannot do on demand: faults, quirks, exact timing.

The requested model name picks the script, e.g. ``{"model": "reset"}``. The token
scripts log when each chunk was written (``time.perf_counter()``, the proxy's clock when
the server runs in the test's process): the truth timing tests compare the proxy's
measurements with.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

SEEN = web.AppKey("seen", list)


@dataclass
class Sent:
    """One request's timeline as the upstream lived it."""
    received: float                                    # the handler started
    tokens: list[float] = field(default_factory=list)  # each token chunk written
    finish: float | None = None                        # the finish chunk written


SENT = web.AppKey("sent", list)  # a Sent per token-script request, in arrival order


def chunk(delta: dict | None = None, finish=None, usage=None, obj="chat.completion.chunk", choices=True) -> bytes:
    body = {"id": "up-1", "object": obj, "created": 1, "model": "x",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


TOOL_FRAGMENTS = [
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "python", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\"code\": "}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": "\"print(1)\"}"}}]},
]
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
THOUGHT = ["The user", " greets", " me."]  # reasoning_content chunks, as vLLM/SGLang stream them
ANSWER = ["Hello", "!"]
REASONING_USAGE = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16,
                   "completion_tokens_details": {"reasoning_tokens": 6}}


async def chat(request: web.Request) -> web.StreamResponse:
    received = time.perf_counter()
    body = await request.json()
    script = body["model"]
    request.app[SEEN].append(body)
    if script == "500":
        return web.Response(status=500, text="Internal Server Error")
    if script == "503json":
        return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)
    if script == "400json":
        return web.json_response({"error": {"message": "context too long", "type": "invalid_request_error",
                                            "param": "messages", "code": "context_length_exceeded"}}, status=400)
    if script == "notjson":
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
    if script == "stall":
        await asyncio.sleep(30)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    w = resp.write
    if script == "slow_first":
        await asyncio.sleep(float(body.get("delay", 0.2)))
    if script == "tools":
        for d in TOOL_FRAGMENTS:
            await w(chunk(d))
        await w(chunk(finish="tool_calls"))
        await w(chunk(usage=USAGE, choices=False))
    elif script == "reasoning":  # thinking, a pause of `gap` s, the answer; usage only if asked
        for piece in THOUGHT:
            await w(chunk({"reasoning_content": piece, "content": None}))
        await asyncio.sleep(float(body.get("gap", 0.0)))
        for piece in ANSWER:
            await w(chunk({"content": piece}))
        await w(chunk(finish="stop"))
        if body.get("send_usage", True):
            await w(chunk(usage=REASONING_USAGE, choices=False))
    elif script == "sglang":  # usage on the finish chunk and again on a final chunk with empty choices
        await w(chunk({"role": "assistant", "content": "Hi"}))
        await w(chunk({"content": " there"}, finish="stop", usage=USAGE))
        await w(chunk(usage=USAGE, choices=False))
    elif script == "mlx":  # usage event labelled as a non-chunk object
        await w(chunk({"content": "Hi"}))
        await w(chunk(finish="stop"))
        await w(chunk(usage=USAGE, choices=False, obj="chat.completion"))
    elif script == "reset":
        await w(chunk({"content": "Hi"}))
        request.transport.abort()
        return resp
    elif script == "malformed":
        await w(chunk({"content": "Hi"}))
        await w(b"data: {not json\n\n")
    elif script == "stream_error":
        await w(chunk({"content": "Hi"}))
        await w(b'data: {"error": {"message": "engine crashed", "type": "server_error"}}\n\n')
    elif script == "nodone":  # tokens, then the connection ends with no finish and no [DONE]
        await w(chunk({"content": "Hi"}))
        return resp
    else:  # "echo" and slow_first: N tokens at a fixed gap, no usage (like llama.cpp's server)
        n, gap = int(body.get("n_tokens", 5)), float(body.get("gap", 0.0))
        sent = Sent(received)
        request.app[SENT].append(sent)
        for i in range(n):
            await w(chunk({"content": f"t{i} "}))
            sent.tokens.append(time.perf_counter())
            if gap:
                await asyncio.sleep(gap)
        await w(chunk(finish="stop"))
        sent.finish = time.perf_counter()
    await w(b"data: [DONE]\n\n")
    return resp


def make_app() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app[SENT] = []
    app.router.add_post("/v1/chat/completions", chat)
    return app
