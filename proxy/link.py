"""The simulated network between a device and the cloud.

Each network effect is a small stage with one job, in the spirit of Toxiproxy's toxics;
a direction (``up`` = device to cloud, ``down`` = cloud to device) is a chain of stages:

    SlowStart -> Bandwidth | TraceBandwidth -> Loss -> Latency

A stage takes the time a chunk of ``nbytes`` is offered to it, returns the time it comes
out, and adds what it cost to a ``DelaySplit``. Times are floats in seconds on the
caller's clock (the proxy passes ``time.perf_counter()``), so the same code runs on the
wall clock in the proxy and on a virtual clock in tests and benchmarks. A ``Link`` is
per device: its stages keep state (busy-until, congestion window, loss state, last
arrival) that every request of that device shares, like one HTTP/2 connection.

Bytes are framed as TCP would carry them: 1448 B of payload per 1500 B packet (1500 B
MTU minus 20 B IP, 20 B TCP and 12 B timestamp option), so rates are wire rates.
"""
from __future__ import annotations

import bisect
import functools
import math
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

from proxy.radio import RADIO_PROFILES, Radio, RadioCharge

MSS = 1448                    # payload bytes per segment
HEADER = 52                   # IP + TCP + timestamp option
PACKET = MSS + HEADER         # one mahimahi delivery opportunity (facts §5, S17)
IW = min(10 * MSS, max(2 * MSS, 14600))  # RFC 6928 initial window, 14480 B (facts §5, S25)
RTO_MIN = 0.2                 # Linux TCP_RTO_MIN = HZ/5 (include/net/tcp.h)
RTO_MAX = 120.0               # Linux TCP_RTO_MAX = 120*HZ: where backoff stops doubling


def segments(nbytes: int) -> int:
    """TCP segments a chunk needs (an empty write still costs one packet)."""
    return max(1, -(-nbytes // MSS))


def wire_bytes(nbytes: int) -> int:
    return nbytes + segments(nbytes) * HEADER


@dataclass(slots=True)
class DelaySplit:
    """Where a chunk's delay came from, in seconds; ``total`` is their sum."""
    propagation: float = 0.0     # one-way path delay, incl. waiting for an earlier, slower chunk
    serialization: float = 0.0   # putting the bytes on the wire at the link rate
    queueing: float = 0.0        # waiting behind earlier bytes for the link
    retransmission: float = 0.0  # recovering lost segments, incl. head-of-line stalls behind them
    promotion: float = 0.0       # radio waking from idle/low-power state (see proxy.radio)
    slow_start: float = 0.0      # waiting for the congestion window to open

    @property
    def total(self) -> float:
        return (self.propagation + self.serialization + self.queueing + self.retransmission
                + self.promotion + self.slow_start)


DELAY_PARTS = tuple(f.name for f in fields(DelaySplit))


@dataclass(slots=True)
class Delivery:
    """When the chunk arrives at the far end, and why it took that long."""
    at: float
    split: DelaySplit


Stage = Callable[[float, int, DelaySplit], float]


class Latency:
    """One-way propagation delay with jitter; TCP delivers in order.

    Delay = floor + Gamma(k, theta), with mean ``mean_s`` and standard deviation ``sd_s``
    and floor = max(0, mean - 2 sd). A gamma is right-skewed like real queueing delay
    and keeps the configured mean exactly; netem's default normal must be clipped at
    zero, which shifts the mean up once jitter is large (e.g. 200 ms +- 100 ms). With
    floor > 0 the shape is always 4; a chunk never arrives before the previous one in
    its direction, and that wait counts as propagation.
    """
    __slots__ = ("floor", "_shape", "_scale", "_rng", "_last")

    def __init__(self, mean_s: float, sd_s: float, rng: random.Random):
        self.floor = max(0.0, mean_s - 2.0 * sd_s)
        excess = mean_s - self.floor
        self._shape = (excess / sd_s) ** 2 if sd_s > 0 and excess > 0 else 0.0
        self._scale = sd_s * sd_s / excess if self._shape else 0.0
        self._rng = rng
        self._last = -math.inf

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        at = t + self.floor
        if self._shape:
            at += self._rng.gammavariate(self._shape, self._scale)
        if at < self._last:
            at = self._last
        self._last = at
        split.propagation += at - t
        return at


class Bandwidth:
    """A fixed-rate link with an unbounded FIFO: bytes queue behind earlier bytes."""
    __slots__ = ("_s_per_byte", "_busy")

    def __init__(self, mbps: float):
        self._s_per_byte = 8.0 / (mbps * 1e6)
        self._busy = -math.inf

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        start = t if t > self._busy else self._busy
        end = self._busy = start + wire_bytes(nbytes) * self._s_per_byte
        split.queueing += start - t
        split.serialization += end - start
        return end


@dataclass(frozen=True)
class Trace:
    """A mahimahi trace: delivery opportunities (s from the trace start) and its period."""
    times: tuple[float, ...]
    period: float

    @property
    def mbps(self) -> float:
        return len(self.times) * PACKET * 8 / self.period / 1e6


@functools.lru_cache(maxsize=32)
def load_trace(path: str) -> Trace:
    """Parse a mahimahi trace: one integer ms timestamp per line, each an opportunity to
    deliver one 1500 B packet; the trace repeats with period = its last timestamp."""
    ms = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = int(line)
        except ValueError:
            raise ValueError(f"{path}:{n}: {line.strip()!r} is not an integer ms timestamp") from None
        if v < 0 or (ms and v < ms[-1]):
            raise ValueError(f"{path}:{n}: timestamps must be non-negative and non-decreasing")
        ms.append(v)
    if not ms or ms[-1] <= 0:
        raise ValueError(f"{path}: needs at least one timestamp, the last one > 0")
    return Trace(tuple(v / 1000 for v in ms), ms[-1] / 1000)


class TraceBandwidth:
    """Trace-driven link as mahimahi's mm-link (facts §5, S17-S19): every opportunity
    drains up to 1500 B from the queue, byte-level, so small chunks share one; bytes left
    unused when the queue runs dry are wasted. The trace starts at the first chunk."""
    __slots__ = ("_trace", "_n", "_origin", "_next", "_left", "_left_at")

    def __init__(self, trace: Trace):
        self._trace, self._n = trace, len(trace.times)
        self._origin = None
        self._next = 0            # global index (wraps counted) of the first unused opportunity
        self._left = 0            # bytes still free in the opportunity just before it
        self._left_at = -math.inf

    def _time(self, k: int) -> float:
        wraps, i = divmod(k, self._n)
        return self._origin + wraps * self._trace.period + self._trace.times[i]

    def _first_from(self, t: float) -> int:
        wraps, off = divmod(t - self._origin, self._trace.period)
        i = bisect.bisect_left(self._trace.times, off)
        return int(wraps) * self._n + i  # i == n rolls into the next wrap by itself

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        if self._origin is None:
            self._origin = t
        need = wire_bytes(nbytes)
        if self._left and t <= self._left_at:  # queued before that opportunity fired: shares it
            used = min(self._left, need)
            need -= used
            self._left -= used
            first = end = self._left_at
        else:
            first = None
        if need:
            k = max(self._next, self._first_from(t))
            count = -(-need // PACKET)
            last = k + count - 1
            end = self._time(last)
            if first is None:
                first = self._time(k)
            self._next, self._left, self._left_at = last + 1, count * PACKET - need, end
        split.queueing += first - t
        split.serialization += end - first
        return end


class Bernoulli:
    """Independent losses with probability ``p`` (netem ``loss random``)."""
    __slots__ = ("p", "_rng")

    def __init__(self, p: float, rng: random.Random):
        self.p, self._rng = p, rng

    def lost(self) -> bool:
        return self._rng.random() < self.p


class GilbertElliott:
    """netem ``loss gemodel p r 1-h 1-k`` (facts §5, S20): a Good and a Bad state; a packet
    is lost with 1-k in Good and 1-h in Bad, then the state moves (Good->Bad with p,
    Bad->Good with r), in netem's order (net/sched/sch_netem.c, loss_gilb_ell)."""
    __slots__ = ("p", "r", "loss_bad", "loss_good", "_bad", "_rng")

    def __init__(self, p: float, r: float, loss_bad: float, loss_good: float, rng: random.Random):
        self.p, self.r, self.loss_bad, self.loss_good, self._rng = p, r, loss_bad, loss_good, rng
        self._bad = False

    @property
    def mean(self) -> float:
        """Steady-state loss rate, p/(p+r)(1-h) + r/(p+r)(1-k) (facts §5, S21)."""
        return (self.p * self.loss_bad + self.r * self.loss_good) / (self.p + self.r)

    def lost(self) -> bool:
        rng = self._rng
        lost = rng.random() < (self.loss_bad if self._bad else self.loss_good)
        if rng.random() < (self.r if self._bad else self.p):
            self._bad = not self._bad
        return lost


class Loss:
    """Packet loss as TCP feels it: latency, not missing bytes.

    Each 1448 B segment of a chunk may be lost. A loss with at least three segments
    after it in the chunk is repaired by fast retransmit (three duplicate ACKs), one RTT
    late; otherwise the sender waits for the retransmission timeout. A retransmission
    can be lost too and then waits a doubled RTO (exponential backoff). The chunk is
    delivered when its last segment is, and later chunks wait behind it (head-of-line).
    Linux's tail-loss probe (RFC 8985) often repairs a tail loss sooner than the RTO;
    we keep the classic RTO, the pessimistic bound. The bandwidth a retransmission
    uses and the congestion-window cut after a loss are not modelled.
    """
    __slots__ = ("model", "rtt", "rto", "_release", "segments", "lost")

    def __init__(self, model: Bernoulli | GilbertElliott, rtt_s: float, rto_s: float):
        self.model, self.rtt, self.rto = model, rtt_s, rto_s
        self._release = -math.inf
        self.segments = 0   # segments sent (first transmissions)
        self.lost = 0       # of those, how many were lost

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        n = segments(nbytes)
        self.segments += n
        lost = self.model.lost
        extra = 0.0
        for i in range(n):
            if lost():
                self.lost += 1
                cost = self.rtt if n - 1 - i >= 3 else self.rto
                backoff = self.rto
                while lost():
                    cost += backoff
                    backoff = min(2 * backoff, RTO_MAX)
                if cost > extra:
                    extra = cost
        at = t + extra
        if at < self._release:
            at = self._release
        self._release = at
        split.retransmission += at - t
        return at


class SlowStart:
    """TCP slow start: a fresh connection may have IW10 unacknowledged (RFC 6928), and the
    window grows by the bytes each round trip acknowledges, doubling per RTT while the
    sender fills it. Bytes beyond the window wait for the next round's ACKs. After an
    idle longer than the RTO the window restarts at IW, as Linux does with
    net.ipv4.tcp_slow_start_after_idle=1 (RFC 2861; RFC 5681 §4.1)."""
    __slots__ = ("rtt", "idle", "_cwnd", "_sent", "_round_end", "_last")

    def __init__(self, rtt_s: float, rto_s: float):
        self.rtt, self.idle = rtt_s, rto_s
        self._cwnd = self._sent = 0
        self._round_end = -math.inf
        self._last = -math.inf

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        if t - self._last > self.idle:
            self._cwnd, self._sent, self._round_end = IW, 0, t + self.rtt
        depart, need = max(t, self._last), nbytes  # FIFO: never ahead of bytes already waiting
        while True:
            if depart >= self._round_end:  # the last round's ACKs are back
                self._cwnd += self._sent
                self._sent, self._round_end = 0, depart + self.rtt
            room = self._cwnd - self._sent
            if need <= room:
                self._sent += need
                break
            need -= room
            self._sent = self._cwnd
            depart = self._round_end
        self._last = depart
        split.slow_start += depart - t
        return depart


@dataclass(frozen=True)
class NetworkPreset:
    """A network condition. ``rtt_ms`` +- ``jitter_ms`` is the round trip and its standard
    deviation (each direction: mean rtt/2, sd jitter/sqrt(2)). ``loss`` is the mean
    segment loss rate; with ``loss_model: gemodel`` it is derived from ``gemodel``
    (netem's p, r, 1-h, 1-k). A trace file replaces the fixed rate of its direction."""
    name: str
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    up_mbps: float = 10_000.0
    down_mbps: float = 10_000.0
    loss_model: str = "bernoulli"
    gemodel: tuple[float, float, float, float] | None = None
    trace_up: str | None = None
    trace_down: str | None = None
    radio: str = "none"

    def __post_init__(self):
        def bad(key, what):
            return ValueError(f"networks.{self.name}.{key}: {what}")

        for key in ("rtt_ms", "jitter_ms", "loss", "up_mbps", "down_mbps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(key, f"must be a non-negative number, got {v!r}")
        for key in ("up_mbps", "down_mbps"):
            if getattr(self, key) == 0:
                raise bad(key, "must be > 0")
        if self.jitter_ms and not self.rtt_ms:
            raise bad("jitter_ms", "needs rtt_ms > 0 (delays cannot go below zero)")
        if self.radio not in RADIO_PROFILES:
            raise bad("radio", f"unknown profile {self.radio!r} (known: {', '.join(RADIO_PROFILES)})")
        for key in ("trace_up", "trace_down"):
            path = getattr(self, key)
            if path is not None:
                try:
                    load_trace(str(path))
                except (OSError, ValueError) as e:
                    raise bad(key, str(e)) from None
        if self.loss_model == "bernoulli":
            if self.gemodel is not None:
                raise bad("gemodel", "only with loss_model: gemodel")
            if self.loss >= 1:
                raise bad("loss", f"must be below 1, got {self.loss!r}")
        elif self.loss_model == "gemodel":
            object.__setattr__(self, "gemodel", self._gemodel(bad))
            p, r, loss_bad, loss_good = self.gemodel
            object.__setattr__(self, "loss", (p * loss_bad + r * loss_good) / (p + r))
            if self.loss >= 1:
                raise bad("gemodel", "loses every packet")
        else:
            raise bad("loss_model", f"must be bernoulli or gemodel, got {self.loss_model!r}")

    def _gemodel(self, bad) -> tuple[float, float, float, float]:
        g = self.gemodel
        if not isinstance(g, (list, tuple)) or not 1 <= len(g) <= 4:
            raise bad("gemodel", "needs a list [p, r, 1-h, 1-k] (r, 1-h, 1-k optional, as netem)")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in g):
            raise bad("gemodel", f"values must be probabilities in [0, 1], got {list(g)!r}")
        p, r, loss_bad, loss_good = (*g, *(None, 1 - g[0], 1.0, 0.0)[len(g):])  # netem's defaults
        if p + r == 0:
            raise bad("gemodel", "p and r cannot both be 0")
        return (float(p), float(r), float(loss_bad), float(loss_good))

    @property
    def rto_s(self) -> float:
        """Linux's RTO = SRTT + RTTVAR with RTTVAR >= TCP_RTO_MIN (include/net/tcp.h
        __tcp_set_rto; tcp_input.c tcp_rtt_estimator); RTTVAR tracks 4 x deviation."""
        return self.rtt_ms / 1000 + max(RTO_MIN, 4 * self.jitter_ms / 1000)


# Built-in presets. DL rates come from the task brief; default uplinks follow measured
# DL:UL ratios from the facts file, §6:
#   5g   100 x 21.08/166.13 = 12.7 Mbps  (Ookla global 5G medians, Q3 2021, S34)
#   4g    20 x 6.3/21.3     =  5.9 Mbps  (Opensignal US averages, Q1 2019, S30)
#   3G-class presets: DL x 6/13          (Huang 2012 LTE medians, S1; no 3G uplink figure in our sources)
# lan is full-duplex Ethernet, symmetric. WiFi's air interface is shared by both
# directions rather than split between them, so wifi is symmetric too.
# poor_cellular and edge_case use the 3G radio: 2 Mbps and 0.5 Mbps sit at or below US
# 3G averages (3-4.6 Mbps; EV-DO < 1 Mbps, S32, S36), far below LTE's 13 Mbps median (S1),
# and 3G's 2 s promotion and 17 s DCH+FACH tail are the costly case such links show.
PRESETS: dict[str, NetworkPreset] = {p.name: p for p in (
    NetworkPreset("local"),
    NetworkPreset("lan", rtt_ms=1, jitter_ms=0.5, up_mbps=1000, down_mbps=1000, radio="wifi"),
    NetworkPreset("wifi", rtt_ms=20, jitter_ms=5, loss=0.001, up_mbps=50, down_mbps=50, radio="wifi"),
    NetworkPreset("5g", rtt_ms=40, jitter_ms=15, loss=0.001, up_mbps=12.7, down_mbps=100, radio="nr5g_nsa"),
    NetworkPreset("4g", rtt_ms=80, jitter_ms=30, loss=0.005, up_mbps=5.9, down_mbps=20, radio="lte"),
    NetworkPreset("poor_cellular", rtt_ms=200, jitter_ms=100, loss=0.02, up_mbps=0.92, down_mbps=2, radio="3g"),
    NetworkPreset("edge_case", rtt_ms=500, jitter_ms=200, loss=0.05, up_mbps=0.23, down_mbps=0.5, radio="3g"),
)}

_KEYS = {f.name for f in fields(NetworkPreset)} - {"name"}


def presets_from_config(networks: dict | None) -> dict[str, NetworkPreset]:
    """Built-in presets plus the ``networks:`` section of config.yaml.

    Each entry takes NetworkPreset's keys; ``base: NAME`` starts from another preset
    (built-in or custom) and overrides the keys given. Setting ``gemodel`` switches
    the loss model to Gilbert-Elliott, setting ``loss`` switches it back to Bernoulli.
    Raises ValueError("networks.NAME.key: what is wrong").
    """
    out = dict(PRESETS)
    networks = networks or {}
    if not isinstance(networks, dict):
        raise ValueError("networks: must be a mapping of name to settings")
    resolving: list[str] = []

    def build(name: str) -> NetworkPreset:
        spec = networks[name]
        if not isinstance(spec, dict):
            raise ValueError(f"networks.{name}: must be a mapping of settings")
        unknown = set(spec) - _KEYS - {"base"}
        if unknown:
            raise ValueError(f"networks.{name}.{sorted(unknown)[0]}: unknown key (known: base, "
                             f"{', '.join(sorted(_KEYS))})")
        base_name = spec.get("base")
        if base_name is None:
            base = NetworkPreset(name)
        elif base_name in resolving:
            raise ValueError(f"networks.{name}.base: circular base chain {' -> '.join(resolving + [base_name])}")
        elif base_name in networks and base_name != name:
            resolving.append(name)
            base = build(base_name)
            resolving.pop()
        elif base_name in PRESETS:
            base = PRESETS[base_name]
        else:
            raise ValueError(f"networks.{name}.base: unknown preset {base_name!r}")
        over = {k: v for k, v in spec.items() if k != "base"}
        if "gemodel" in over and "loss" in over:
            raise ValueError(f"networks.{name}.loss: give loss (Bernoulli) or gemodel, not both")
        if "gemodel" in over:
            over.setdefault("loss_model", "gemodel")
            over["loss"] = 0.0
            if isinstance(over["gemodel"], list):
                over["gemodel"] = tuple(over["gemodel"])
        elif "loss" in over:
            over.setdefault("loss_model", "bernoulli")
            over.setdefault("gemodel", None)
        return replace(base, name=name, **over)

    for name in networks:
        if not isinstance(name, str) or not name:
            raise ValueError(f"networks.{name!r}: preset names must be non-empty strings")
        out[name] = build(name)
    return out


class Link:
    """One device's network: ``up`` and ``down`` stage chains plus its radio.

    ``send`` is called once per chunk (request body, SSE frame) at the time the sender
    offers it; calls must come in time order per direction, as they do in real time.
    The radio is woken (promotion delay) before the chain runs and charged for the
    transfer into ``charge``, the caller's per-request RadioCharge. Not thread-safe:
    use it from one event loop. The same preset, seed and call sequence give the same
    deliveries.
    """
    __slots__ = ("preset", "up", "down", "radio", "_chains", "_radio")

    def __init__(self, preset: NetworkPreset | str, seed: int | str = 0):
        self.preset = preset = PRESETS[preset] if isinstance(preset, str) else preset
        self.up = _chain(preset, "up", seed)
        self.down = _chain(preset, "down", seed)
        self._chains = {"up": self.up, "down": self.down}
        self.radio = Radio(RADIO_PROFILES[preset.radio])
        self._radio = self.radio if preset.radio != "none" else None

    def send(self, direction: str, t: float, nbytes: int, charge: RadioCharge | None = None) -> Delivery:
        try:
            chain = self._chains[direction]
        except KeyError:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}") from None
        split = DelaySplit()
        radio = self._radio
        at = t
        if radio is not None:
            split.promotion = wait = radio.promotion_delay(t)
            at += wait
        for stage in chain:
            at = stage(at, nbytes, split)
        if radio is not None:
            if direction == "up":
                radio.transfer(t, at, nbytes, 0, charge)
            else:
                radio.transfer(t, at, 0, nbytes, charge)
        return Delivery(at, split)


def _chain(p: NetworkPreset, direction: str, seed: int) -> tuple[Stage, ...]:
    def rng(stage: str) -> random.Random:  # one stream per stage: stages never shift each other's draws
        return random.Random(f"{seed}:{p.name}:{direction}:{stage}")

    rtt, rto = p.rtt_ms / 1000, p.rto_s
    trace = p.trace_up if direction == "up" else p.trace_down
    stages: list[Stage] = []
    if rtt > 0:
        stages.append(SlowStart(rtt, rto))
    if trace is not None:
        stages.append(TraceBandwidth(load_trace(str(trace))))
    else:
        stages.append(Bandwidth(p.up_mbps if direction == "up" else p.down_mbps))
    if p.loss_model == "gemodel":
        stages.append(Loss(GilbertElliott(*p.gemodel, rng("loss")), rtt, rto))
    elif p.loss > 0:
        stages.append(Loss(Bernoulli(p.loss, rng("loss")), rtt, rto))
    if rtt > 0:
        stages.append(Latency(rtt / 2, p.jitter_ms / 1000 / math.sqrt(2), rng("latency")))
    return tuple(stages)
