"""The backend contract: what every engine (upstream HTTP, llama.cpp, MLX) gives the proxy.

A backend turns one validated OpenAI request into a stream of token-level events.
Each event carries ``t``, the ``time.perf_counter()`` instant the backend produced it,
so the proxy can measure TTFT and inter-token latency where tokens were made, not
where they were written. Cancellation is plain asyncio: when the consumer stops
iterating (client gone), the generator is closed and the backend must stop work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal


class BackendError(Exception):
    """An engine failure the proxy turns into an OpenAI error.

    ``status`` is the HTTP status for the client (502 unreachable, 504 timeout,
    or the upstream's own 4xx/5xx); ``cause`` is a short label for metrics.
    """

    def __init__(self, message: str, *, status: int = 502, cause: str = "backend_error",
                 type: str = "upstream_error", code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.cause = cause
        self.type = type
        self.code = code
        self.param = param


@dataclass(slots=True)
class GenRequest:
    """A validated request. ``body`` is the client's JSON, already checked by the proxy."""
    kind: Literal["chat", "completion"]
    model: str
    body: dict[str, Any]

    @property
    def max_tokens(self) -> int | None:
        v = self.body.get("max_completion_tokens", self.body.get("max_tokens"))
        return None if v is None else int(v)

    @property
    def stop(self) -> list[str]:
        s = self.body.get("stop")
        if s is None:
            return []
        return [s] if isinstance(s, str) else list(s)


@dataclass(slots=True)
class Scheduled:
    """The request left the backend's queue and started running."""
    t: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class TextDelta:
    """Generated text. ``tokens`` is how many tokens it holds (exact for in-process
    engines; 1 per chunk for an upstream that does not say). ``reasoning``: the model's
    thinking (OpenAI's ``reasoning_content``), not its answer."""
    text: str
    tokens: int = 1
    t: float = field(default_factory=time.perf_counter)
    reasoning: bool = False


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a tool call, in OpenAI's delta shape (first fragment carries id and name).
    ``tokens``: generated tokens it holds, when the engine knows (in-process engines)."""
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    t: float = field(default_factory=time.perf_counter)
    tokens: int = 0


@dataclass(slots=True)
class Finish:
    reason: str  # stop | length | tool_calls | content_filter
    t: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class Usage:
    """Token counts, sent once at the end of every stream, by every backend (the proxy
    relies on it to honour ``include_usage``). In-process engines add ``cpu_s``: CPU-seconds
    the engine spent on this request, the basis of compute energy."""
    prompt_tokens: int
    completion_tokens: int
    cpu_s: float | None = None
    #: of completion_tokens, those spent thinking; None when the backend does not say
    reasoning_tokens: int | None = None
    #: where the counts come from: backend | tokenizer | chunks (one token per chunk) | estimate
    source: str = "backend"
    t: float = field(default_factory=time.perf_counter)


Event = Scheduled | TextDelta | ToolCallDelta | Finish | Usage


async def drain(events, cancel) -> AsyncIterator[Event]:
    """Yield what an in-process engine's worker thread puts on ``events`` until its Usage;
    re-raise an error it sent; on close (the client left) tell the worker to stop."""
    try:
        while True:
            ev = await events.get()
            if isinstance(ev, BaseException):
                raise ev
            yield ev
            if isinstance(ev, Usage):
                break
    finally:
        cancel.set()


def check_settings(settings: dict, known: set[str], kind: str) -> None:
    """Reject a setting the backend does not know: a typo must fail at start, not be ignored."""
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown setting for backend {kind} (known: {', '.join(sorted(known))})")


class Backend:
    """Base class. Subclasses set ``kind`` (the Prometheus ``backend`` label) and implement
    ``generate``; ``start``/``close`` load and free resources; ``ready`` gates /readyz."""

    kind: str = "base"
    #: True when the engine runs inside this process (its compute energy is the device's).
    in_process: bool = False
    #: True when ``generate(req, relay=True)`` can hand over the engine's own SSE frames.
    relays: bool = False

    def __init__(self, name: str):
        self.name = name
        self.ready = False

    async def start(self) -> None:
        self.ready = True

    async def close(self) -> None:
        self.ready = False

    def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        raise NotImplementedError

    def capacity(self) -> int | None:
        """How many requests the engine decodes together (its batch), so a bulk client can offer
        that many at once; None when the engine does not say (an upstream server)."""
        return None

    def count_tokens(self, text: str) -> int | None:
        """Exact token count of ``text`` when the backend has a tokenizer, else None."""
        return None
