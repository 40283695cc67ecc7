"""An async OpenAI-compatible HTTP client that measures each call from the client's side.

Every chat call returns a ``CallResult`` with what the model said (text, assembled
tool calls, finish reason), the client-side timings (TTFT, inter-token gaps, end to
end) and the proxy's own per-request ``edgemeter`` record when the server is
Edgemeter. Failures are results too (``ok`` False, ``error`` set), so a load
generator can count them without try/except around every call.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from harness.common.stats import mean, percentile


@dataclass
class CallResult:
    ok: bool = False
    status: int = 0
    error: str | None = None
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict | None = None
    edgemeter: dict | None = None
    started_at: float = 0.0  # wall clock (epoch) when the request was sent
    ttft_s: float | None = None  # first content or tool-call delta, streams only
    itl_s: list[float] = field(default_factory=list)  # gaps between content-bearing chunks
    e2e_s: float | None = None
    chunks: int = 0
    bytes_in: int = 0

    @property
    def completion_tokens(self) -> int:
        return int((self.usage or {}).get("completion_tokens") or 0)

    @property
    def prompt_tokens(self) -> int:
        return int((self.usage or {}).get("prompt_tokens") or 0)

    def record(self) -> dict:
        """A compact, JSON-ready summary (inter-token gaps summarised, not listed)."""
        itl = self.itl_s
        return {
            "ok": self.ok, "status": self.status, "error": self.error, "finish_reason": self.finish_reason,
            "started_at": self.started_at, "ttft_s": self.ttft_s, "e2e_s": self.e2e_s,
            "itl_mean_s": mean(itl), "itl_p50_s": percentile(itl, 50), "itl_p95_s": percentile(itl, 95),
            "chunks": self.chunks, "bytes_in": self.bytes_in,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "tool_calls": len(self.tool_calls), "edgemeter": self.edgemeter,
        }


def _merge_tool_deltas(calls: dict[int, dict], deltas: list[dict]) -> None:
    for d in deltas:
        c = calls.setdefault(d.get("index", len(calls)),
                             {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if d.get("id"):
            c["id"] = d["id"]
        fn = d.get("function") or {}
        if fn.get("name"):
            c["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            c["function"]["arguments"] += fn["arguments"]


def _error_text(body: bytes) -> str:
    try:
        err = json.loads(body).get("error")
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        return body.decode("utf-8", errors="replace")[:500]


class OpenAIClient:
    """``async with OpenAIClient(base_url) as c: r = await c.chat({...})``.

    ``base_url`` ends in ``/v1``; ``headers`` are sent with every request and per-call
    ``headers`` are added on top (Edgemeter's X-Edgemeter-* routing headers, typically).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, headers: dict[str, str] | None = None,
                 timeout_s: float = 600.0, max_connections: int = 100):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OpenAIClient:
        self._session = aiohttp.ClientSession(timeout=self.timeout,
                                              connector=aiohttp.TCPConnector(limit=self.max_connections))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use OpenAIClient as an async context manager")
        return self._session

    def _server_root(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    async def models(self) -> list[str]:
        async with self.session.get(f"{self.base_url}/models", headers=self.headers) as resp:
            resp.raise_for_status()
            return [m["id"] for m in (await resp.json()).get("data", [])]

    async def end_session(self, session_id: str, final_answer: str, *, tool_cpu_s: float = 0.0,
                          headers: dict[str, str] | None = None) -> dict | None:
        """Close an Edgemeter agent session, reporting the CPU time its tools ran on the device;
        None when the server has no such endpoint."""
        url = f"{self._server_root()}/edgemeter/v1/sessions/{session_id}/end"
        try:
            async with self.session.post(url, json={"final_answer": final_answer, "tool_cpu_s": tool_cpu_s},
                                         headers={**self.headers, **(headers or {})}) as resp:
                if resp.status in (404, 405, 501):
                    return None
                body = await resp.read()
                if resp.status >= 400:
                    return {"error": _error_text(body), "status": resp.status}
                try:
                    return json.loads(body)
                except ValueError:
                    return {"error": "session end reply is not JSON", "status": resp.status}
        except aiohttp.ClientError as e:
            return {"error": f"{type(e).__name__}: {e}"}

    async def reset_device(self, device: str) -> dict | None:
        """Ask Edgemeter to put ``device`` back to an idle radio and fresh links; None when the
        server has no such endpoint."""
        url = f"{self._server_root()}/edgemeter/v1/devices/{device}/reset"
        async with self.session.post(url, headers=self.headers) as resp:
            if resp.status in (404, 405, 501):
                return None
            resp.raise_for_status()
            return await resp.json()

    async def chat(self, body: dict[str, Any], *, headers: dict[str, str] | None = None,
                   on_delta: Callable[[float, dict], None] | None = None) -> CallResult:
        """POST /chat/completions. Streams when ``body["stream"]`` is true (asking for the usage chunk).

        ``on_delta(arrived, delta)`` is called for every content or tool-call delta of a
        stream, with its ``time.perf_counter()`` arrival, e.g. to time chunks individually."""
        body = dict(body)
        if body.get("stream"):
            body["stream_options"] = {"include_usage": True, **(body.get("stream_options") or {})}
        res = CallResult(started_at=time.time())
        t0 = time.perf_counter()
        try:
            async with self.session.post(f"{self.base_url}/chat/completions", json=body,
                                         headers={**self.headers, **(headers or {})}) as resp:
                res.status = resp.status
                if resp.status >= 400:
                    raw = await resp.read()
                    res.bytes_in = len(raw)
                    res.error = f"HTTP {resp.status}: {_error_text(raw)}"
                elif body.get("stream"):
                    await self._read_stream(resp, res, t0, on_delta)
                else:
                    raw = await resp.read()
                    res.bytes_in = len(raw)
                    self._read_body(json.loads(raw), res)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            res.error = f"{type(e).__name__}: {e}"
        res.e2e_s = time.perf_counter() - t0
        res.ok = res.error is None
        return res

    @staticmethod
    def _read_body(data: dict, res: CallResult) -> None:
        choice = (data.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        res.content = msg.get("content") or ""
        res.tool_calls = msg.get("tool_calls") or []
        res.finish_reason = choice.get("finish_reason")
        res.usage = data.get("usage")
        res.edgemeter = data.get("edgemeter")
        if data.get("error"):
            res.error = str(data["error"])

    @staticmethod
    async def _read_stream(resp: aiohttp.ClientResponse, res: CallResult, t0: float,
                           on_delta: Callable[[float, dict], None] | None = None) -> None:
        parts: list[str] = []
        calls: dict[int, dict] = {}
        last = None
        async for line in resp.content:
            res.bytes_in += len(line)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            now = time.perf_counter()
            chunk = json.loads(payload)
            res.chunks += 1
            if chunk.get("error"):
                res.error = _error_text(payload)
                break
            if chunk.get("usage"):
                res.usage = chunk["usage"]
            if chunk.get("edgemeter"):
                res.edgemeter = chunk["edgemeter"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if choice.get("finish_reason"):
                    res.finish_reason = choice["finish_reason"]
                if delta.get("tool_calls"):
                    _merge_tool_deltas(calls, delta["tool_calls"])
                if not (delta.get("content") or delta.get("tool_calls")):
                    continue
                parts.append(delta.get("content") or "")
                if on_delta is not None:
                    on_delta(now, delta)
                if last is None:
                    res.ttft_s = now - t0
                else:
                    res.itl_s.append(now - last)
                last = now
        res.content = "".join(parts)
        res.tool_calls = [calls[i] for i in sorted(calls)]


class _KeyOnCommandLine(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} on the command line is readable by every process on this machine "
              "(ps, /proc/PID/cmdline); set OPENAI_API_KEY instead", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    """``--api-key``, read from ``OPENAI_API_KEY`` by default. Given on the command line it works but
    warns: a command line is visible to every process of the machine."""
    parser.add_argument("--api-key", action=_KeyOnCommandLine, default=os.environ.get("OPENAI_API_KEY"),
                        help="API key (default and preferred: $OPENAI_API_KEY, which other processes cannot read)")
