"""A fast OpenAI upstream for load and overhead benchmarks: ``python -m harness.load.fast_upstream --port P``.

It generates nothing: it answers ``/v1/chat/completions`` and ``/v1/completions`` with
exactly ``max_tokens`` tokens (``--tokens`` when the request gives none; it never stops
early, as if ``ignore_eos`` were set), streamed or not, as fast as it can or at a fixed
inter-token latency (``--itl-ms``, after ``--ttft-ms``). A request may override both
with the extra body fields ``itl_ms`` and ``ttft_ms``.

Each token's text is the instant it was sent, ``time.perf_counter()`` with microsecond
digits and a trailing space. On Linux that clock is CLOCK_MONOTONIC, shared by every
process on the machine, so a client on the same host measures each chunk's delivery
latency (arrival minus stamp) through anything that passes content through.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

DEFAULTS = web.AppKey("defaults", dict)


def stamp() -> bytes:
    return b"%.6f " % time.perf_counter()


def prompt_tokens(body: dict) -> int:
    """Whitespace words of the prompt: the load generator's synthetic words are one token each."""
    if "messages" in body:
        text = " ".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))
    else:
        text = body.get("prompt") or ""
    return len(text.split())


async def pace(due: float) -> None:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def generate(request: web.Request) -> web.StreamResponse:
    chat = request.path.endswith("/chat/completions")
    body = orjson.loads(await request.read())
    d = request.app[DEFAULTS]
    n = int(body.get("max_completion_tokens") or body.get("max_tokens") or d["tokens"])
    itl = float(body.get("itl_ms", d["itl_ms"])) / 1000
    t0 = time.perf_counter() + float(body.get("ttft_ms", d["ttft_ms"])) / 1000
    model = body.get("model") or d["model"]
    usage = {"prompt_tokens": prompt_tokens(body), "completion_tokens": n}
    usage["total_tokens"] = usage["prompt_tokens"] + n
    obj = ("chat.completion" if chat else "text_completion")
    if not body.get("stream"):
        parts = []
        for i in range(n):
            if itl:
                await pace(t0 + i * itl)
            parts.append(stamp())
        text = b"".join(parts).decode()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                  else {"index": 0, "text": text})
        return web.Response(body=orjson.dumps({
            "id": "cmpl-fast", "object": obj, "created": int(time.time()), "model": model,
            "choices": [{**choice, "logprobs": None, "finish_reason": "length"}], "usage": usage}),
            content_type="application/json")

    # The fixed parts of every chunk are encoded once; only the stamp changes per token.
    head = (b'data: {"id":"cmpl-fast","object":"' + (b"chat.completion.chunk" if chat else b"text_completion")
            + b'","created":' + str(int(time.time())).encode() + b',"model":' + orjson.dumps(model)
            + b',"choices":[{"index":0,')
    open_text = b'"delta":{"content":"' if chat else b'"text":"'
    close_text = (b'"}' if chat else b'"') + b',"logprobs":null,"finish_reason":null}]}\n\n'
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    write = resp.write
    for i in range(n):
        if itl or i == 0:
            await pace(t0 + i * itl)
        if i == 0 and chat:
            await write(head + b'"delta":{"role":"assistant","content":"' + stamp() + close_text)
        else:
            await write(head + open_text + stamp() + close_text)
    finish = b'"delta":{}' if chat else b'"text":""'
    await write(head + finish + b',"logprobs":null,"finish_reason":"length"}]}\n\n')
    if (body.get("stream_options") or {}).get("include_usage"):
        await write(head[:-len(b'{"index":0,')] + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
    await write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": request.app[DEFAULTS]["model"], "object": "model", "created": 0, "owned_by": "fast_upstream"}]})


def make_app(tokens: int = 128, itl_ms: float = 0.0, ttft_ms: float = 0.0, model: str = "fast") -> web.Application:
    app = web.Application()
    app[DEFAULTS] = {"tokens": tokens, "itl_ms": itl_ms, "ttft_ms": ttft_ms, "model": model}
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_get("/v1/models", models)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.load.fast_upstream", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--tokens", type=int, default=128, help="tokens per response when the request sets no max_tokens")
    p.add_argument("--itl-ms", type=float, default=0.0, help="gap between tokens; 0 = as fast as possible")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="wait before the first token")
    p.add_argument("--model", default="fast", help="the id /v1/models lists")
    a = p.parse_args(argv)
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(make_app(a.tokens, a.itl_ms, a.ttft_ms, a.model), host=a.host, port=a.port, access_log=None,
                loop=loop, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
