"""Any OpenAI-compatible HTTP server as a backend: SGLang, vLLM, llama.cpp's server, Ollama,
mlx_lm.server, or another Edgemeter.

The proxy always asks the upstream to stream (with ``include_usage``), so every request,
streamed to the client or not, gets per-token timing. Known quirks are normalized
into the same events: SGLang's usage on a chunk with empty ``choices``, mlx_lm.server's
``chat.completion``-labelled usage event, llama.cpp/llama-cpp-python sending no usage.
When the upstream sends no usage, tokens are counted with the configured ``tokenizer``
(a GGUF model source) or, failing that, one token per content chunk.

Asked to relay (``generate(req, relay=True)``, for a streaming client whose chunks need no
rewriting), the backend hands the proxy the upstream's own SSE bytes as ``Relay`` items
instead of events to re-encode. A byte scan (``_plain``) picks out the frames that are one
plain content delta, the bulk of a stream: they are counted, one token each, without a JSON
parse. Every other frame (usage, a finish reason, tool calls, reasoning, an error, anything
unusual) is parsed as in the evented path, so both paths count and time the same.
"""
from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp
import orjson

from backends.base import Backend, BackendError, Event, Finish, GenRequest, TextDelta, ToolCallDelta, Usage, check_settings

@dataclass(slots=True)
class Relay:
    """Upstream SSE bytes to forward as they came, read at ``t``. Either a run of ``tokens`` plain
    content frames (one answer token each, not parsed) or, with ``events``, one frame that needed
    parsing and what it holds (one or more of TextDelta, ToolCallDelta, Finish, Usage). Frames
    with nothing to count (a role-only first chunk, a keep-alive comment) ride along with the next."""
    data: bytes
    t: float
    tokens: int = 0
    events: list | None = None


SETTINGS = {"base_url", "model", "api_key", "connect_timeout", "read_timeout", "max_connections", "tokenizer",
            "headers"}


class UpstreamBackend(Backend):
    kind = "upstream"
    relays = True  # generate(req, relay=True) gives the upstream's own frames (see Relay)

    def __init__(self, name: str, settings: dict):
        super().__init__(name)
        check_settings(settings, SETTINGS, self.kind)
        base = settings.get("base_url")
        if not isinstance(base, str) or not base.startswith(("http://", "https://")):
            raise ValueError("base_url: required, an http(s) URL such as http://127.0.0.1:30000/v1")
        self.base_url = base.rstrip("/")
        self.upstream_model = str(settings.get("model", name))
        self.headers = {str(k): str(v) for k, v in (settings.get("headers") or {}).items()}
        if settings.get("api_key"):
            self.headers["Authorization"] = f"Bearer {settings['api_key']}"
        # What an upstream's error message must never carry to a client (some servers quote the key they
        # refused); short header values such as "1" are no secrets and would garble messages.
        self.secrets = [v for v in (settings.get("api_key"), *self.headers.values()) if v and len(v) >= 8]
        for key in ("connect_timeout", "read_timeout"):
            v = settings.get(key, 10.0 if key == "connect_timeout" else 300.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{key}: must be a positive number of seconds")
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=float(settings.get("connect_timeout", 10.0)),
                                             sock_read=float(settings.get("read_timeout", 300.0)))
        self.max_connections = int(settings.get("max_connections", 512))
        self.tokenizer_source = settings.get("tokenizer")
        self.tokenizer = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.tokenizer_source:
            from .llama import GGUFTokenizer  # only when configured: needs llama-cpp-python
            self.tokenizer = await asyncio.to_thread(GGUFTokenizer, self.tokenizer_source)
        # One pooled session for the backend's lifetime: keep-alive connections to the upstream.
        self.session = aiohttp.ClientSession(
            timeout=self.timeout, headers=self.headers,
            connector=aiohttp.TCPConnector(limit=self.max_connections, enable_cleanup_closed=True),
            json_serialize=lambda o: orjson.dumps(o).decode())
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self.session:
            await self.session.close()

    def count_tokens(self, text: str) -> int | None:
        return self.tokenizer.count(text) if self.tokenizer else None

    async def generate(self, req: GenRequest, relay: bool = False) -> AsyncIterator[Event | Relay]:
        """Events for ``req``; with ``relay``, the upstream's own frames as ``Relay`` items (see above)."""
        body = dict(req.body)
        body["model"] = self.upstream_model
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        url = f"{self.base_url}/{'chat/completions' if req.kind == 'chat' else 'completions'}"
        try:
            async with self.session.post(url, data=orjson.dumps(body),
                                         headers={"Content-Type": "application/json"}) as resp:
                if resp.status >= 400:
                    raise await _http_error(resp)
                async for ev in self._events(resp, req, relay):
                    yield ev
        except BackendError as e:
            for secret in self.secrets:
                e.message = e.message.replace(secret, "***")
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise BackendError(f"upstream {self.name} timed out", status=504, cause="upstream_timeout",
                               type="timeout_error") from None
        except aiohttp.ClientConnectorError as e:
            raise BackendError(f"upstream {self.name} unreachable: {e.os_error.strerror or 'connection failed'}",
                               status=502, cause="upstream_unreachable") from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            raise BackendError(f"upstream {self.name} closed the connection mid-response", status=502,
                               cause="upstream_reset") from None

    async def _events(self, resp: aiohttp.ClientResponse, req: GenRequest, relay: bool) -> AsyncIterator[Event | Relay]:
        chat = req.kind == "chat"
        heard = _Heard(keep_runs=self.tokenizer is not None)
        done = False
        rest = carried = b""
        sep = None
        while not done:
            # A read's worth of frames at a time: one await per read, not one per frame.
            block = await resp.content.readany()
            t = time.perf_counter()
            buf = rest + block if rest else block
            if sep is None and buf:  # SSE ends an event with a blank line: LF LF, or CRLF CRLF
                sep = b"\r\n\r\n" if b"\r\n" in buf else b"\n\n"
            frames = buf.split(sep) if buf else []
            rest = frames.pop() if block and frames else b""  # at EOF an unterminated last frame counts too
            start = run_start = run = 0  # in buf: where this frame begins; the plain run before it, and its length
            for frame in frames:
                end = start + len(frame) + len(sep)
                if relay and _plain(frame, chat):
                    run += 1
                    start = end
                    continue
                if run:  # the plain frames before this one go first
                    yield heard.run(carried + buf[run_start:start], run, t)
                    carried, run = b"", 0
                events, done, has_usage = self._parse_frame(frame, chat)
                kept, visible = heard.events(events)
                if visible and relay and not has_usage:
                    yield Relay(carried + buf[start:end], t, 0, kept)
                    carried = b""
                elif relay and not (kept or has_usage or done):  # nothing to count: goes with the next frame
                    carried += buf[start:end]
                else:
                    # Usage and [DONE] are the proxy's to send once, with its record: a frame that
                    # carries usage (alone, or on a choice as SGLang's) goes as events to encode.
                    for ev in kept:
                        yield ev
                if done:
                    break
                start = run_start = end
            if run:
                yield heard.run(carried + buf[run_start:start], run, t)
                carried = b""
            if not block:
                break
        if not done and not heard.finished:
            raise BackendError(f"upstream {self.name} ended the stream without finishing", status=502,
                               cause="upstream_incomplete")
        if not heard.finished:
            yield Finish("stop")
        if not heard.usage:
            answer = "".join(p if isinstance(p, str) else self._run_text(p, chat) for p in heard.answer)
            yield self._count_usage(req, answer, "".join(heard.thought), heard.chunks)

    def _parse_frame(self, frame: bytes, chat: bool) -> tuple[list[Event], bool, bool]:
        """One SSE frame's events, whether it was [DONE], and whether it carried usage."""
        out: list[Event] = []
        has_usage = False
        for line in frame.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # comments (": ping"), event:/id: fields
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return out, True, has_usage
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise BackendError(f"upstream {self.name} sent malformed SSE data", status=502,
                                   cause="upstream_malformed") from None
            if not isinstance(obj, dict):
                raise BackendError(f"upstream {self.name} sent a non-object SSE event", status=502,
                                   cause="upstream_malformed")
            if "error" in obj:
                err = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
                raise BackendError(f"upstream {self.name} error: {err.get('message', 'unknown')}", status=502,
                                   cause="upstream_stream_error")
            try:
                out += _parse_event(obj, chat)
            except (AttributeError, TypeError, ValueError):
                raise BackendError(f"upstream {self.name} sent an SSE event of the wrong shape", status=502,
                                   cause="upstream_malformed") from None
            has_usage = has_usage or bool(obj.get("usage"))
        return out, False, has_usage

    def _run_text(self, run: bytes, chat: bool) -> str:
        """The answer text of a run of relayed plain frames, for the tokenizer to count."""
        return "".join(ev.text for frame in run.replace(b"\r\n", b"\n").split(b"\n\n") if frame
                       for ev in self._parse_frame(frame, chat)[0])

    def _count_usage(self, req: GenRequest, completion: str, thought: str, chunks: int) -> Usage:
        if self.tokenizer:
            prompt = (self.tokenizer.render_chat(req.body["messages"]) if req.kind == "chat"
                      else req.body["prompt"])
            reasoning = self.tokenizer.count(thought)
            return Usage(self.tokenizer.count(prompt, special=True), self.tokenizer.count(completion) + reasoning,
                         reasoning_tokens=reasoning, source="tokenizer")
        # No tokenizer: the prompt is estimated at ~4 characters a token (OpenAI's rule of thumb).
        return Usage(math.ceil(len(_prompt_text(req)) / 4), chunks, source="chunks")


class _Heard:
    """What an upstream's stream has said so far: what its end is checked and counted against."""
    __slots__ = ("usage", "finished", "chunks", "answer", "thought", "keep_runs")

    def __init__(self, keep_runs: bool):
        self.usage = self.finished = False
        self.chunks = 0  # content events, the token count of last resort
        self.answer: list = []  # text; when relaying, also runs of plain frames, read only if a tokenizer counts
        self.thought: list[str] = []
        self.keep_runs = keep_runs

    def run(self, data: bytes, frames: int, t: float) -> Relay:
        self.chunks += frames
        if self.keep_runs:
            self.answer.append(data)
        return Relay(data, t, frames)

    def events(self, events: list[Event]) -> tuple[list[Event], bool]:
        """A frame's events less a repeated usage, and whether the client sees any of them."""
        kept, visible = [], False
        for ev in events:
            if isinstance(ev, Usage):
                if self.usage:
                    continue
                self.usage = True
            elif isinstance(ev, Finish):
                self.finished = visible = True
            else:
                self.chunks += 1
                visible = True
                if isinstance(ev, TextDelta):
                    (self.thought if ev.reasoning else self.answer).append(ev.text)
            kept.append(ev)
        return kept, visible


# A frame must be parsed when one of these keys has a value other than null: what the proxy
# counts or acts on beyond one token of answer text. A key's bytes cannot occur inside a JSON
# string, whose quotes are escaped, so a match is a key (or a false alarm, which costs a parse).
_READ_KEYS = re.compile(rb'"(?:usage|finish_reason|tool_calls|reasoning\w*|error)"\s*:(?!\s*null)')
_ANSWER = {True: re.compile(rb'"content"\s*:\s*"[^"]'), False: re.compile(rb'"text"\s*:\s*"[^"]')}


def _plain(frame: bytes, chat: bool) -> bool:
    """Whether an SSE frame is surely one plain content delta, one answer token to count: a
    single ``data:`` line holding one choice whose content (chat) or text (completion) is a
    non-empty string, and no key the proxy must read. Anything less sure is parsed."""
    return (frame.startswith(b"data:") and frame.endswith(b"}") and b"\n" not in frame
            and frame.count(b'"index"') == 1 and _ANSWER[chat].search(frame) is not None
            and _READ_KEYS.search(frame) is None)


def _parse_event(obj: dict, chat: bool) -> list[Event]:
    """One SSE event's content as events. A field of the wrong type raises TypeError or
    ValueError: a bad upstream must end as a 502, never as a crash in the proxy."""
    out: list[Event] = []
    for choice in obj.get("choices") or ():
        if chat:
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content")
            # vLLM and SGLang send thinking as reasoning_content (vLLM's newer name: reasoning)
            thought = delta.get("reasoning_content", delta.get("reasoning"))
            if thought is not None and not isinstance(thought, str):
                raise TypeError("reasoning_content")
            if thought:
                out.append(TextDelta(thought, reasoning=True))
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") or {}
                call = ToolCallDelta(index=tc.get("index", 0), id=tc.get("id"), name=fn.get("name"),
                                     arguments=fn.get("arguments") or "")
                if not (_is_int(call.index) and isinstance(call.arguments, str)
                        and all(v is None or isinstance(v, str) for v in (call.id, call.name))):
                    raise TypeError("tool call fields")
                out.append(call)
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise TypeError("text")
        if text:
            out.append(TextDelta(text))
        reason = choice.get("finish_reason")
        if reason:
            if not isinstance(reason, str):
                raise TypeError("finish_reason")
            out.append(Finish(reason))
    usage = obj.get("usage")
    if usage:
        counts = [usage.get(k) or 0 for k in ("prompt_tokens", "completion_tokens")]
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        if not all(_is_int(n) and n >= 0 for n in counts) or not (reasoning is None or _is_int(reasoning)):
            raise ValueError("usage counts")
        out.append(Usage(*counts, reasoning_tokens=reasoning))
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _prompt_text(req: GenRequest) -> str:
    if req.kind == "completion":
        return req.body["prompt"]
    parts = []
    for m in req.body["messages"]:
        c = m.get("content")
        parts.append(c if isinstance(c, str) else orjson.dumps(c).decode() if c else "")
    return "\n".join(parts)


async def _http_error(resp: aiohttp.ClientResponse) -> BackendError:
    """Map an upstream 4xx/5xx to an error for the client: 4xx keep their status (the request
    was at fault), 5xx become 502 (the upstream was)."""
    raw = await resp.read()
    message, etype, code, param = raw[:300].decode("utf-8", "replace").strip() or resp.reason, None, None, None
    try:
        err = orjson.loads(raw).get("error")
        if isinstance(err, dict):
            message, etype, code, param = err.get("message", message), err.get("type"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if resp.status < 500:
        return BackendError(str(message), status=resp.status, cause=f"upstream_{resp.status}",
                            type=etype or "invalid_request_error", code=code, param=param)
    return BackendError(f"upstream returned {resp.status}: {message}", status=502, cause="upstream_5xx")

