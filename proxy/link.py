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

from proxy.radio import RADIO_PROFILES, Radio, RadioCharge, RadioProfile

MSS = 1448                    # payload bytes per segment
HEADER = 52                   # IP + TCP + timestamp option
PACKET = MSS + HEADER         # one mahimahi delivery opportunity (facts §5, S17)
IW = min(10 * MSS, max(2 * MSS, 14600))  # RFC 6928 initial window, 14480 B (facts §5, S25)
RTO_MIN = 0.2                 # Linux TCP_RTO_MIN = HZ/5 (include/net/tcp.h)
RTO_MAX = 120.0               # Linux TCP_RTO_MAX = 120*HZ: where backoff stops doubling
TCP_DELACK_MAX = 0.2          # RFC 8985 §7.2 WCDelAckT: worst-case delayed-ACK timer
# How long path delay stays correlated. No source we have measures it for cellular paths; 2 s
# keeps streamed frames (20 ms apart) at the configured mean and sd within the link bench's
# targets on every preset while chunks seconds apart see nearly independent delays.
JITTER_CORR_S = 2.0
# Idle keep-alive connections are closed after 5 s by httpx (Limits.keepalive_expiry, python-
# httpx.org "Resource Limits"), the HTTP client of the OpenAI Python SDK.
KEEPALIVE_S = 5.0
LINK_MODELS = ("tcp", "pocket-agent")


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
    paging: float = 0.0          # an idle radio waiting for its paging occasion before a download
    handshake: float = 0.0       # opening the connection: TCP and TLS round trips

    @property
    def total(self) -> float:
        return (self.propagation + self.serialization + self.queueing + self.retransmission
                + self.promotion + self.slow_start + self.paging + self.handshake)


DELAY_PARTS = tuple(f.name for f in fields(DelaySplit))


@dataclass(slots=True)
class Delivery:
    """When the chunk arrives at the far end, and why it took that long."""
    at: float
    split: DelaySplit


Stage = Callable[[float, int, DelaySplit], float]


class Latency:
    """One-way propagation delay with correlated jitter; TCP delivers in order.

    Delay = floor + a log-normal excess with mean ``mean_s - floor`` and standard
    deviation ``sd_s``, floor = max(0, mean - 2 sd): right-skewed like queueing delay and
    never below zero, with the configured mean and sd exactly (netem's default normal
    must be clipped at zero, which shifts the mean up once jitter is large). The
    log-normal's underlying normal is an AR(1) (Ornstein-Uhlenbeck) process in time with
    correlation time ``corr_s``: chunks dt apart see delays correlated by exp(-dt/corr_s).
    Path delay wanders (queues fill and drain over many packets), so frames 20 ms apart
    see nearly the same delay, while chunks seconds apart see independent draws. With
    independent draws per frame, in-order delivery made every frame wait for the slowest
    one ahead of it and streams saw far more than the configured delay. A chunk still
    never arrives before the previous one in its direction (a FIFO path keeps order);
    that wait counts as propagation. ``corr_s = 0`` draws independently per chunk.
    """
    __slots__ = ("floor", "corr", "_mu", "_sigma", "_rng", "_z", "_t", "_last")

    def __init__(self, mean_s: float, sd_s: float, rng: random.Random, corr_s: float = 0.0):
        self.floor = max(0.0, mean_s - 2.0 * sd_s)
        excess = mean_s - self.floor
        self._sigma = math.sqrt(math.log1p((sd_s / excess) ** 2)) if sd_s > 0 and excess > 0 else 0.0
        self._mu = math.log(excess) - self._sigma ** 2 / 2 if excess > 0 else 0.0
        self.corr, self._rng = corr_s, rng
        self._z = None            # the AR(1) state, a standard normal
        self._t = -math.inf
        self._last = -math.inf

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        at = t + self.floor
        if self._sigma:
            gauss = self._rng.gauss
            if self._z is None or self.corr <= 0:
                self._z = gauss(0.0, 1.0)  # stationary start
            elif t > self._t:
                rho = math.exp(-(t - self._t) / self.corr)
                self._z = rho * self._z + math.sqrt(1.0 - rho * rho) * gauss(0.0, 1.0)
            self._t = max(self._t, t)
            at += math.exp(self._mu + self._sigma * self._z)
        if at < self._last:
            at = self._last
        self._last = at
        split.propagation += at - t
        return at


class Bandwidth:
    """A fixed-rate link with an unbounded FIFO: bytes queue behind earlier bytes. Rates are
    wire rates (TCP/IP headers count) unless ``framed`` is off (payload / rate)."""
    __slots__ = ("_s_per_byte", "_busy", "_size")

    def __init__(self, mbps: float, framed: bool = True):
        self._s_per_byte = 8.0 / (mbps * 1e6)
        self._busy = -math.inf
        self._size = wire_bytes if framed else int

    @property
    def free_at(self) -> float:
        """When the last byte queued so far leaves the link."""
        return self._busy

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        start = t if t > self._busy else self._busy
        end = self._busy = start + self._size(nbytes) * self._s_per_byte
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

    @property
    def free_at(self) -> float:
        """When the last byte queued so far leaves the link."""
        return self._left_at

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

    Each 1448 B segment may be lost; how long its repair takes depends on what follows it,
    across chunks (an SSE frame is one segment, so the segments that reveal its loss
    belong to later frames):

    - fast retransmit: if three later segments are sent within one RTT of it, their
      duplicate ACKs (or SACKs) reveal the hole, and the retransmission leaves one RTT
      after the third of them (RFC 5681 §3.2);
    - tail-loss probe: otherwise the probe timer fires PTO = 2 SRTT after the last
      transmission (+ 200 ms worst-case delayed ACK when one segment is in flight; never
      beyond the RTO) and the probe repairs the loss, or, if later segments are out,
      its ACK exposes it and the retransmission follows one RTT later (RFC 8985 §7);
    - retransmission timeout: a retransmission or probe that is lost too waits an RTO
      from when it was sent, doubling with every further loss (RFC 6298 §5.5).

    A stage sees chunks as they are offered and cannot see the future, so whether three
    more segments follow is predicted from the flow's recent chunk gap (an EWMA, reset
    when the flow idles longer than an RTO); the first chunk of a flow has no such
    prediction and its tail losses wait for the probe. Within a chunk, only the segments
    the congestion ``window`` lets out in the same round can raise duplicate ACKs (a
    window under four segments never gets three). The chunk is delivered when its last
    segment is, and later chunks wait behind it (head-of-line). Each repair is reported
    to the window (``on_loss``) with when the sender learns of it. The bandwidth a
    retransmission uses is not modelled.
    """
    __slots__ = ("model", "rtt", "rto", "window", "_release", "_gap", "_last_t", "segments", "lost", "repairs",
                 "repair_s")

    def __init__(self, model: Bernoulli | GilbertElliott, rtt_s: float, rto_s: float,
                 window: CongestionWindow | None = None):
        self.model, self.rtt, self.rto, self.window = model, rtt_s, rto_s, window
        self._release = -math.inf
        self._gap: float | None = None  # predicted gap to the next chunk of this flow
        self._last_t = -math.inf
        self.segments = 0   # segments sent (first transmissions)
        self.lost = 0       # of those, how many were lost
        self.repairs = {"fast": 0, "tlp": 0, "rto": 0}  # what repaired each loss in the end
        self.repair_s = 0.0  # summed time from each lost segment's send to its repair

    def repair(self, after: int, single: bool) -> tuple[float, str]:
        """Seconds from a lost segment's send to its first retransmission, and the mechanism,
        given ``after`` later segments of its own chunk. ``single``: nothing else in flight."""
        rtt, gap = self.rtt, self._gap
        in_round = after if self.window is None else min(after, self.window.cwnd // MSS - 1)
        if in_round >= 3:
            return rtt, "fast"
        if in_round == after and gap is not None and (3 - after) * gap <= rtt:
            return (3 - after) * gap + rtt, "fast"
        pto = min(2 * rtt + (TCP_DELACK_MAX if single else 0.0), self.rto)
        return pto + (rtt if after else 0.0), "tlp"

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        dt = t - self._last_t
        if dt > self.rto:
            self._gap = None            # a new flow: nothing known about what follows
        elif self._gap is None:
            self._gap = dt
        else:
            self._gap += (dt - self._gap) / 4
        self._last_t = t
        n = segments(nbytes)
        self.segments += n
        lost = self.model.lost
        extra = 0.0
        for i in range(n):
            if not lost():
                continue
            self.lost += 1
            cost, kind = self.repair(n - 1 - i, n == 1 and self._gap is None)
            backoff = self.rto
            while lost():  # the retransmission is lost too: wait out the (backed-off) RTO
                cost += backoff
                backoff = min(2 * backoff, RTO_MAX)
                kind = "rto"
            self.repairs[kind] += 1
            self.repair_s += cost
            if self.window is not None:
                self.window.on_loss(t + cost, kind)
            extra = max(extra, cost)
        at = t + extra
        if at < self._release:
            at = self._release
        self._release = at
        split.retransmission += at - t
        return at


class CongestionWindow:
    """TCP's congestion window, the bytes that may be unacknowledged (Reno, RFC 5681).

    A fresh connection starts at IW10 (RFC 6928). Each round trip the window grows by the
    bytes it acknowledged (slow start, doubling) up to ``ssthresh``, then by half a segment
    (congestion avoidance with delayed ACKs, one ACK per two segments, RFC 5681 §4.2, as
    the Padhye formula assumes); it grows only if the sender used at least half of it, so
    an application-limited stream of small frames does not earn a window it never tested
    (RFC 7661). A loss repaired by fast retransmit or a probe halves it (ssthresh =
    cwnd/2, at most once per round trip: one recovery episode); a retransmission timeout
    drops it to one segment and slow start begins again (RFC 5681 §3.1). The cut takes
    effect at the first round that starts after the sender learned of the loss; a loss
    left to a probe or a timeout stalls the window until that timer fires (the hole
    keeps it from sliding). After an idle longer than the RTO it restarts at
    min(IW, cwnd), as Linux does with net.ipv4.tcp_slow_start_after_idle=1 (RFC 5681
    §4.1). Bytes beyond the window wait for the next round's ACKs: that wait is
    ``slow_start`` in the delay split.
    """
    __slots__ = ("rtt", "idle", "bottleneck", "cwnd", "ssthresh", "_sent", "_round_start", "_last", "_cut",
                 "_episode_end", "_stall_until")

    def __init__(self, rtt_s: float, rto_s: float, bottleneck: Bandwidth | TraceBandwidth | None = None):
        self.rtt, self.idle, self.bottleneck = rtt_s, rto_s, bottleneck
        self.reset()

    def reset(self) -> None:
        """A new connection."""
        self.cwnd, self.ssthresh = IW, math.inf
        self._sent = 0
        self._round_start = self._last = -math.inf
        self._cut: tuple[float, str] | None = None   # a loss the sender learns of at that time
        self._episode_end = self._stall_until = -math.inf

    def on_loss(self, t: float, kind: str) -> None:
        """The sender learns at ``t`` of a loss repaired by ``kind`` (fast, tlp or rto)."""
        if kind != "fast":
            self._stall_until = max(self._stall_until, t)
        if t < self._episode_end:  # the same recovery episode: one cut
            if kind == "rto" and self._cut is not None:
                self._cut = (self._cut[0], kind)
            return
        self._episode_end = t + self.rtt
        if self._cut is None or self._cut[0] > t:
            self._cut = (t, kind)

    def _new_round(self, at: float) -> None:
        cut = self._cut
        if cut is not None and cut[0] <= at:
            self.ssthresh = max(self.cwnd // 2, 2 * MSS)
            self.cwnd = MSS if cut[1] == "rto" else self.ssthresh
            self._cut = None
        elif 2 * self._sent >= self.cwnd:  # a window the sender used (RFC 7661)
            if self.cwnd < self.ssthresh:
                self.cwnd = min(self.cwnd + self._sent, self.ssthresh)
            else:
                self.cwnd += MSS // 2
        # ACK clocking: the round's first byte gets through once the bytes queued ahead of it
        # at the bottleneck have, and its ACK is back an RTT later
        queued = self.bottleneck.free_at if self.bottleneck is not None else at
        self._sent, self._round_start = 0, max(at, queued)

    def _round_end(self) -> float:
        return max(self._round_start + self.rtt, self._stall_until)

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        if t - self._last > self.idle:
            self.cwnd, self._sent, self._round_start = min(IW, self.cwnd), 0, t
        depart, need = max(t, self._last), nbytes  # FIFO: never ahead of bytes already waiting
        while True:
            if depart >= self._round_end():  # the last round's ACKs are back
                self._new_round(depart)
            room = self.cwnd - self._sent
            if need <= room:
                self._sent += need
                break
            need -= room
            self._sent = self.cwnd
            depart = self._round_end()
        self._last = depart
        split.slow_start += depart - t
        return depart


class TransferDelay:
    """The agent-placement study's per-transfer delay: an independent normal draw of the
    full round trip (mean ``rtt_s``, sd ``jitter_s``, clipped at zero), and with
    probability ``loss`` one more round trip, for the transfer as a whole."""
    __slots__ = ("rtt", "jitter", "loss", "_rng")

    def __init__(self, rtt_s: float, jitter_s: float, loss: float, rng: random.Random):
        self.rtt, self.jitter, self.loss, self._rng = rtt_s, jitter_s, loss, rng

    def __call__(self, t: float, nbytes: int, split: DelaySplit) -> float:
        delay = max(0.0, self._rng.gauss(self.rtt, self.jitter))
        split.propagation += delay
        if self.loss and self._rng.random() < self.loss:
            split.retransmission += self.rtt
            delay += self.rtt
        return t + delay


@dataclass(frozen=True)
class NetworkPreset:
    """A network condition. ``rtt_ms`` +- ``jitter_ms`` is the round trip and its standard
    deviation (each direction: mean rtt/2, sd jitter/sqrt(2)); ``jitter_corr_s`` is the
    correlation time of the delay (see Latency). ``loss`` is the mean segment loss rate;
    with ``loss_model: gemodel`` it is derived from ``gemodel`` (netem's p, r, 1-h, 1-k).
    A trace file replaces the fixed rate of its direction. A new connection, or one idle
    longer than ``keepalive_s``, first spends ``handshake_rtts`` round trips setting up. A
    download that finds the radio idle waits up to one ``paging_s`` cycle for paging.
    ``link_model: pocket-agent`` swaps the TCP stages for the agent-placement study's
    per-transfer model (see ``_pocket_agent_chain``)."""
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
    jitter_corr_s: float = JITTER_CORR_S
    handshake_rtts: float = 2
    keepalive_s: float = KEEPALIVE_S
    paging_s: float | None = None   # idle paging cycle; None: the radio profile's (LTE 1.28 s)
    link_model: str = "tcp"

    def __post_init__(self):
        def bad(key, what):
            return ValueError(f"networks.{self.name}.{key}: {what}")

        for key in ("rtt_ms", "jitter_ms", "loss", "up_mbps", "down_mbps", "jitter_corr_s", "handshake_rtts",
                    "keepalive_s", "paging_s"):
            v = getattr(self, key)
            if v is None and key == "paging_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(key, f"must be a non-negative number, got {v!r}")
        for key in ("up_mbps", "down_mbps"):
            if getattr(self, key) == 0:
                raise bad(key, "must be > 0")
        if self.jitter_ms and not self.rtt_ms:
            raise bad("jitter_ms", "needs rtt_ms > 0 (delays cannot go below zero)")
        if self.link_model not in LINK_MODELS:
            raise bad("link_model", f"must be one of {', '.join(LINK_MODELS)}, got {self.link_model!r}")
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
# lan is full-duplex Ethernet, symmetric, and wired: no radio (the agent-placement study
# charges it 0 J). WiFi's air interface is shared by both directions rather than split
# between them, so wifi is symmetric too.
# poor_cellular and edge_case are weak-signal LTE: their rates sit at or below 3G averages
# (3-4.6 Mbps; EV-DO < 1 Mbps, S32, S36), but today's phones reach such links over LTE (the
# poor-cellular reference, Cameroon Q1 2023, is an LTE-era market at 14 Mbps median, S35),
# so they use the LTE radio. No published LTE power figure for weak signal was found (Ding
# et al., SIGMETRICS 2013, measured it for 3G and WiFi only), so it is the LTE profile as is.
# The 3G profile stays available (radio: 3g).
PRESETS: dict[str, NetworkPreset] = {p.name: p for p in (
    NetworkPreset("local"),
    NetworkPreset("lan", rtt_ms=1, jitter_ms=0.5, up_mbps=1000, down_mbps=1000),
    NetworkPreset("wifi", rtt_ms=20, jitter_ms=5, loss=0.001, up_mbps=50, down_mbps=50, radio="wifi"),
    NetworkPreset("5g", rtt_ms=40, jitter_ms=15, loss=0.001, up_mbps=12.7, down_mbps=100, radio="nr5g_nsa"),
    NetworkPreset("4g", rtt_ms=80, jitter_ms=30, loss=0.005, up_mbps=5.9, down_mbps=20, radio="lte"),
    NetworkPreset("poor_cellular", rtt_ms=200, jitter_ms=100, loss=0.02, up_mbps=0.92, down_mbps=2, radio="lte"),
    NetworkPreset("edge_case", rtt_ms=500, jitter_ms=200, loss=0.05, up_mbps=0.23, down_mbps=0.5, radio="lte"),
)}

_KEYS = {f.name for f in fields(NetworkPreset)} - {"name"}


def pocket_agent(p: NetworkPreset) -> NetworkPreset:
    """The preset's numbers under the agent-placement study's network and radio model."""
    return replace(p, link_model="pocket-agent", radio="pocket-agent")


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
    The radio is woken (promotion delay; a downlink transfer that finds an LTE radio
    idle first waits for its paging occasion) before the chain runs, and charged for
    the transfer into ``charge``, the caller's per-request RadioCharge. An upload that
    finds no open connection (none yet, or idle longer than the preset's keep-alive)
    first pays the handshake: ``handshake_rtts`` round trips (TCP, then TLS 1.3), and
    both directions' congestion windows start afresh. Downloads are answers on the
    connection their request opened and never pay one. Not thread-safe: use it from one
    event loop. The same preset, seed and call sequence give the same deliveries.
    """
    __slots__ = ("preset", "up", "down", "radio", "_chains", "_radio", "_paging", "_windows", "_idle_since")

    def __init__(self, preset: NetworkPreset | str, seed: int | str = 0, radio: RadioProfile | None = None):
        self.preset = preset = PRESETS[preset] if isinstance(preset, str) else preset
        build = _pocket_agent_chain if preset.link_model == "pocket-agent" else _chain
        self.up = build(preset, "up", seed)
        self.down = build(preset, "down", seed)
        self._chains = {"up": self.up, "down": self.down}
        self._windows = [s for s in self.up + self.down if isinstance(s, CongestionWindow)]
        self.radio = Radio(radio or RADIO_PROFILES[preset.radio])  # ``radio`` overrides the preset's
        self._radio = self.radio if self.radio.profile.name != "none" else None
        self._paging = random.Random(f"{seed}:{preset.name}:paging")
        self._idle_since: float | None = None  # when the connection last carried bytes; None: none open

    def send(self, direction: str, t: float, nbytes: int, charge: RadioCharge | None = None) -> Delivery:
        try:
            chain = self._chains[direction]
        except KeyError:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}") from None
        split = DelaySplit()
        radio = self._radio
        at = t
        if radio is not None:
            wait = radio.promotion_delay(t)
            cycle = radio.profile.paging_s if self.preset.paging_s is None else self.preset.paging_s
            if direction == "down" and cycle and radio.is_idle(t):  # the network must page it first
                split.paging = self._paging.uniform(0.0, cycle)
                at += split.paging
            split.promotion = wait
            at += wait
        if direction == "up" and self._connect_needed(t):
            split.handshake = self.preset.handshake_rtts * self.preset.rtt_ms / 1000
            at += split.handshake
            for window in self._windows:
                window.reset()
        for stage in chain:
            at = stage(at, nbytes, split)
        self._idle_since = at if self._idle_since is None else max(self._idle_since, at)
        if radio is not None:
            start = t + split.paging  # idle until paged: the promotion starts then
            if direction == "up":
                radio.transfer(start, at, nbytes, 0, charge)
            else:
                radio.transfer(start, at, 0, nbytes, charge)
        return Delivery(at, split)

    def instant(self, direction: str) -> bool:
        """Whether a chunk crosses ``direction`` within microseconds with no radio to charge: a
        fast wire's serialization only (the local preset), so a sender need not pace it."""
        p = self.preset
        down = direction == "down"
        return (self._radio is None and not p.rtt_ms and not p.loss and p.link_model == "tcp"
                and (p.trace_down if down else p.trace_up) is None and (p.down_mbps if down else p.up_mbps) >= 1000)

    def _connect_needed(self, t: float) -> bool:
        p = self.preset
        if not p.handshake_rtts or not p.rtt_ms or p.link_model != "tcp":
            return False
        return self._idle_since is None or t - self._idle_since > p.keepalive_s


def _rng(p: NetworkPreset, seed: int | str, direction: str, stage: str) -> random.Random:
    """One stream per stage: stages never shift each other's draws."""
    return random.Random(f"{seed}:{p.name}:{direction}:{stage}")


def _pocket_agent_chain(p: NetworkPreset, direction: str, seed: int | str) -> tuple[Stage, ...]:
    """The agent-placement study's intended network, for results set beside its own: a model
    call pays one Gaussian RTT (and one more RTT if lost) on its request, and every
    transfer payload / bandwidth (no TCP framing, window, handshake or in-order delivery)."""
    rate = Bandwidth(p.up_mbps if direction == "up" else p.down_mbps, framed=False)
    if direction == "down":
        return (rate,)
    return rate, TransferDelay(p.rtt_ms / 1000, p.jitter_ms / 1000, p.loss, _rng(p, seed, direction, "transfer"))


def _chain(p: NetworkPreset, direction: str, seed: int | str) -> tuple[Stage, ...]:
    rtt, rto = p.rtt_ms / 1000, p.rto_s
    trace = p.trace_up if direction == "up" else p.trace_down
    link = (TraceBandwidth(load_trace(str(trace))) if trace is not None
            else Bandwidth(p.up_mbps if direction == "up" else p.down_mbps))
    window = CongestionWindow(rtt, rto, link) if rtt > 0 else None
    stages: list[Stage] = [window, link] if window is not None else [link]
    if p.loss_model == "gemodel":
        stages.append(Loss(GilbertElliott(*p.gemodel, _rng(p, seed, direction, "loss")), rtt, rto, window))
    elif p.loss > 0:
        stages.append(Loss(Bernoulli(p.loss, _rng(p, seed, direction, "loss")), rtt, rto, window))
    if rtt > 0:
        stages.append(Latency(rtt / 2, p.jitter_ms / 1000 / math.sqrt(2), _rng(p, seed, direction, "latency"),
                              p.jitter_corr_s))
    return tuple(stages)
