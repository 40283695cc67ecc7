"""Per-request measurement: timestamps where the proxy sees them, the record, the metrics.

One ``RequestMeter`` lives for one request. The handler tells it when the request
left the queue, when each token was produced and delivered, how many bytes moved
and what the simulated network and radio cost; ``finish`` turns that into the
per-request record (returned to the client and logged) and observes every
Prometheus metric once. All times are ``time.perf_counter()`` seconds.
"""
from __future__ import annotations

import os
import time
import uuid

import orjson

from proxy import metrics as m
from proxy.link import DELAY_PARTS, DelaySplit
from proxy.radio import RadioCharge



_CHILDREN: dict = {}


def child(metric, *labels):
    """The metric's child for these label values, looked up once per label set: prometheus-client's
    labels() validates and takes a lock on every call, some twenty times per request. Label
    values are configured names and fixed enums, so this stays small."""
    key = (metric, labels)
    c = _CHILDREN.get(key)
    if c is None:
        c = _CHILDREN[key] = metric.labels(*labels)
    return c


class NetTally:
    """What the simulated network cost one request: delay by component, and radio energy.

    Upstream transfers add up (the client waits for each). Downstream chunks overlap
    generation, so summing their delays would overstate the wait; what the client still
    waits at the end is the last chunk's delay, so that is what counts for ``down``.
    Radio energy accrues in ``charge``, whose tail the radio settles later (see proxy.radio);
    ``radio_j`` is what it has really spent so far.
    """
    __slots__ = ("up", "down", "charge")

    def __init__(self):
        self.up = DelaySplit()
        self.down = DelaySplit()
        self.charge = RadioCharge()

    def record(self, direction: str, split: DelaySplit) -> None:
        if direction == "up":
            for part in DELAY_PARTS:
                setattr(self.up, part, getattr(self.up, part) + getattr(split, part))
        else:
            self.down = split

    @property
    def added_s(self) -> float:
        """Wall time the simulated network added to what the client saw."""
        return self.up.total + self.down.total

    @property
    def radio_j(self) -> float:
        return self.charge.settled_j


def radio_fields(charge: RadioCharge) -> dict:
    """A record's radio energy: ``radio_j`` is spent so far (final when ``radio_settled``);
    a tail still running shows apart as ``radio_tail_provisional_j`` and is in no total."""
    return {"radio_j": charge.settled_j, "radio_promotion_j": charge.promotion_j,
            "radio_active_j": charge.active_j, "radio_tail_j": charge.tail_j,
            "radio_tail_provisional_j": charge.tail_provisional_j, "radio_settled": not charge.pending}


class RequestMeter:
    __slots__ = ("labels", "model", "backend", "mode", "network", "device", "session", "request_id",
                 "t_received", "t_backend", "t_scheduled", "t_first_token", "t_backend_first", "t_last_token",
                 "t_end", "last_delivery", "itl_child", "prompt_tokens", "completion_tokens", "usage_source",
                 "bytes_up", "bytes_down", "net", "cpu_s", "compute_j", "compute_method", "finish_reason",
                 "chunks", "timeline", "energy", "window", "_running", "placement", "reasoning_tokens",
                 "t_backend_first_answer", "t_first_answer")

    def __init__(self, model: str, backend: str, mode: str, network: str, device: str, session: str | None,
                 t_received: float, bytes_up: int, placement: dict):
        # placement: proxy.router.Served.record, where the model ran; its first two fields are labels too
        self.placement = placement
        self.labels = (model, backend, mode, network, placement["placement"],
                       "true" if placement["placement_emulated"] else "false")
        self.model, self.backend, self.mode, self.network = model, backend, mode, network
        self.device, self.session = device, session
        self.request_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.t_received = t_received
        self.t_backend = self.t_scheduled = self.t_first_token = None
        self.t_backend_first = self.t_last_token = self.t_end = None
        self.last_delivery = None
        self.itl_child = child(m.ITL, *self.labels)  # observed per token
        self.prompt_tokens = self.completion_tokens = 0
        self.reasoning_tokens = 0  # of completion_tokens, those spent thinking
        self.t_backend_first_answer = self.t_first_answer = None  # the first answer token (after any thinking)
        self.usage_source = "backend"
        self.bytes_up, self.bytes_down = bytes_up, 0
        self.net = NetTally()
        self.cpu_s = None
        self.compute_j = 0.0
        self.compute_method = None
        self.finish_reason = None
        self.chunks = 0
        self.timeline = None  # a Timeline when server.record_traces is on
        self.energy = None    # a proxy.energy.ComputeEnergy when the generation runs on the device
        self.window = None    # its share of the meter, open from when the generation got its slot
        self._running = child(m.RUNNING, *self.labels)
        self._running.inc()

    # --- events, in the order they happen ---
    def backend_started(self, t: float) -> None:
        """The backend was asked (after any simulated upload); set once, before it is first read."""
        if self.t_backend is None:
            self.t_backend = t

    def scheduled(self, t: float) -> None:
        self.t_scheduled = t
        if self.energy is not None:
            self.window = self.energy.begin(t)

    def close_energy(self, t: float) -> None:
        """The generation is over: take its compute energy (its share of the meter, or the
        profile's or the estimate's figure) and close its window."""
        if self.energy is not None:
            window = self.window or self.energy.begin(self.t_received)  # a backend that never said Scheduled
            self.compute_j, self.compute_method = self.energy.end(window, self.cpu_s, t)
            self.energy = None

    def produced(self, t: float, answer: bool = True, tokens: int = 0) -> None:
        """``tokens`` tokens left the backend (before any simulated network); ``answer``: not thinking.
        Thinking tokens are counted here, for backends whose usage does not split them out."""
        if not answer:
            self.reasoning_tokens += tokens
        if self.t_backend_first is None:
            self.t_backend_first = t
        if answer and self.t_backend_first_answer is None:
            self.t_backend_first_answer = t

    def delivered(self, t: float, tokens: int, answer: bool = True) -> None:
        """``tokens`` tokens reached the client at ``t``. A chunk of n tokens counts as n gaps of gap/n."""
        if answer and self.t_first_answer is None:
            self.t_first_answer = t
        if self.t_first_token is None:
            self.t_first_token = t
        elif tokens:
            gap = (t - self.last_delivery) / tokens
            for _ in range(tokens):
                self.itl_child.observe(gap)
        self.last_delivery = t
        self.t_last_token = t
        self.chunks += 1

    # --- the result ---
    def finish(self, status: int, cause: str | None = None) -> dict:
        self.t_end = time.perf_counter()
        self._running.dec()
        lab = self.labels
        child(m.REQUESTS, *lab, str(status)).inc()
        if cause:
            child(m.ERRORS, *lab, cause).inc()
        e2e = self.t_end - self.t_received
        ttft = None if self.t_first_token is None else self.t_first_token - self.t_received
        ttfat = None if self.t_first_answer is None else self.t_first_answer - self.t_received
        tpot = None
        if ttft is not None and self.completion_tokens > 1:
            tpot = (self.t_last_token - self.t_first_token) / (self.completion_tokens - 1)
        queue = None if self.t_scheduled is None or self.t_backend is None else max(0.0, self.t_scheduled - self.t_backend)
        backend_ttft = None
        if self.t_backend_first is not None and self.t_backend is not None:
            backend_ttft = self.t_backend_first - self.t_backend
        child(m.E2E, *lab).observe(e2e)
        child(m.BYTES, *lab, "up").inc(self.bytes_up)
        child(m.BYTES, *lab, "down").inc(self.bytes_down)
        if ttft is not None:
            child(m.TTFT, *lab).observe(ttft)
        if backend_ttft is not None:
            child(m.BACKEND_TTFT, *lab).observe(backend_ttft)
        if ttfat is not None:
            child(m.TTFAT, *lab).observe(ttfat)
        if self.reasoning_tokens:
            child(m.REASONING_TOKENS, *lab).inc(self.reasoning_tokens)
        if tpot is not None:
            child(m.TPOT, *lab).observe(tpot)
        if queue is not None:
            child(m.QUEUE_TIME, *lab).observe(queue)
        if self.prompt_tokens or self.completion_tokens:
            child(m.PROMPT_TOKENS, *lab).inc(self.prompt_tokens)
            child(m.GEN_TOKENS, *lab).inc(self.completion_tokens)
            child(m.REQ_PROMPT_TOKENS, *lab).observe(self.prompt_tokens)
            child(m.REQ_GEN_TOKENS, *lab).observe(self.completion_tokens)
        delay = {p: getattr(self.net.up, p) + getattr(self.net.down, p) for p in DELAY_PARTS}
        for direction, split in (("up", self.net.up), ("down", self.net.down)):
            for part in DELAY_PARTS:
                if v := getattr(split, part):
                    child(m.NET_DELAY_PART, *lab, direction, part).inc(v)
        child(m.NET_DELAY, *lab).observe(self.net.added_s)
        # Radio energy is counted once spent: now for what is settled, the rest when the
        # radio settles the tail (a counter never goes back, so nothing provisional goes in).
        charge = self.net.charge
        radio_c = child(m.REQ_RADIO_ENERGY, *lab)
        if charge.settled_j:
            radio_c.inc(charge.settled_j)
        if self.compute_j:
            child(m.COMPUTE_ENERGY, *lab, self.compute_method).inc(self.compute_j)
        per_token_c = child(m.ENERGY_PER_TOKEN, *lab) if self.completion_tokens else None
        if charge.pending:
            compute_j, tokens = self.compute_j, self.completion_tokens

            def settled(joules: float) -> None:
                radio_c.inc(joules)
                if per_token_c is not None:
                    per_token_c.observe((charge.settled_j + compute_j) / tokens)
            charge.on_settle = settled
        elif per_token_c is not None and (charge.settled_j or self.compute_j):
            per_token_c.observe((charge.settled_j + self.compute_j) / self.completion_tokens)
        energy = charge.settled_j + self.compute_j  # spent so far: a pending tail is in no figure but its own
        per_token = energy / self.completion_tokens if self.completion_tokens else None
        return {
            "request_id": self.request_id, "model": self.model, "backend": self.backend, **self.placement,
            "mode": self.mode,
            "network": self.network, "device": self.device, "session": self.session, "status": status,
            "error": cause, "finish_reason": self.finish_reason,
            "ttft_s": ttft, "ttfat_s": ttfat, "backend_ttft_s": backend_ttft, "e2e_s": e2e, "tpot_s": tpot, "queue_s": queue,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "usage_source": self.usage_source, "chunks": self.chunks,
            "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
            "net_delay_s": {"total": self.net.added_s, **delay},
            **radio_fields(charge), "compute_j": self.compute_j, "compute_energy_method": self.compute_method,
            "cpu_s": self.cpu_s, "energy_per_token_j": per_token,
        }

    # --- the call's timeline, for python -m harness replay ---
    def tapped(self, source):
        """Pass stream frames (bytes, produced at, parts) through, keeping each one's time, size and tokens."""
        self.timeline = Timeline(stream=True)
        return _tap(source, self.timeline.frames)

    def trace(self, in_process: bool) -> dict:
        """The timeline with times in seconds after the request reached the model (received plus
        the simulated uplink), so it holds only what the network does not change: generation."""
        ref = self.t_received + self.net.up.total
        frames = self.timeline.frames
        # the last frame's simulated arrival: what follows it (event loop, write, usage) is the proxy's own time
        last = frames[-1][0] + self.net.down.total if frames else self.t_end
        return {
            "v": 1, "received_at": time.time() - (time.perf_counter() - self.t_received),
            "up_s": self.net.up.total, "stream": self.timeline.stream, "in_process": in_process,
            "queue_s": None if self.t_scheduled is None else max(0.0, self.t_scheduled - ref),
            "first_token_s": None if self.t_backend_first is None else self.t_backend_first - ref,
            "tail_s": self.t_end - last,
            "frames": [[round(t - ref, 6), n, tokens] for t, n, tokens in frames],
        }


class Timeline:
    """Each frame's (produced at, bytes, tokens), in the order the backend made them."""
    __slots__ = ("stream", "frames")

    def __init__(self, stream: bool):
        self.stream = stream
        self.frames: list[tuple[float, int, int]] = []


async def _tap(source, frames: list):
    try:
        async for frame in source:
            frames.append((frame[1], len(frame[0]), sum(tokens for tokens, _ in frame[2])))
            yield frame
    finally:
        await source.aclose()


class RequestLog:
    """Optional JSONL log: one line per request, appended with a single write (O_APPEND keeps lines whole)."""

    def __init__(self, path: str | None):
        self.fd = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        if self.fd is not None:
            os.write(self.fd, orjson.dumps({"time": time.time(), **record}) + b"\n")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
