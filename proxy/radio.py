"""Radio energy of a simulated device: an RRC state machine driven by its real transfers.

While bytes move the radio is active and draws beta + alpha_up * Mbps_up +
alpha_down * Mbps_down (Huang et al., MobiSys 2012; integrated over a transfer the
alpha terms reduce to alpha * megabits moved). After the last byte it walks down a
tail of lower-power states on inactivity timers, then idles. A transfer that finds the
radio idle (or in a state that needs one) first waits for a promotion. Parameters are
the published defaults of AT&T's ARO tool (github.com/attdevsupport/ARO,
ARODataAnalyzer/src/{lte,WiFi}.conf and model/Profile{LTE,3G,WiFi}.java), which carry the
models of Huang et al., MobiSys 2012 (LTE) and Qian et al., IMC 2010 (3G). Comments tag
each figure with its source id (S1, S2, ...); docs/network-and-radio.md lists them.

Attribution: each transfer is charged its promotion (if it caused one), the active
time it added beyond what earlier transfers already kept busy, its own bytes, and the
tail after it if it is the last transfer so far. Energy is charged only once it is
spent: the tail after the last transfer is held as ``tail_provisional_j`` (the full
tail, what it would cost if nothing cut it) and settled into ``tail_j`` when the next
transfer cuts it short or when ``advance`` passes its end. Until then the charge is
``pending``; ``settled_j`` is what it has really cost so far, and once settled it
never changes again. The gaps between a streamed response's own frames are such
cut-short tails, so its ``tail_j`` holds the radio's inter-frame energy as well as
the final tail. Conservation: once every tail has run out or been cut, the charges'
``settled_j`` add up to the radio's non-idle energy (``energy_j`` of the promotion,
active and tail states), which only ever counts energy already spent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

PROMOTION, ACTIVE = "promotion", "active"


@dataclass(frozen=True)
class RadioState:
    """A tail or idle state: its average power, how long the radio stays before dropping
    to the next (idle: forever) and what it takes to get back to active from it."""
    name: str
    power_w: float
    duration_s: float = math.inf
    promotion_s: float = 0.0
    promotion_w: float = 0.0


@dataclass(frozen=True)
class RadioProfile:
    name: str
    base_w: float                 # beta: active power with no throughput
    alpha_up_w: float = 0.0       # W per Mbps uplink
    alpha_down_w: float = 0.0     # W per Mbps downlink
    tail: tuple[RadioState, ...] = ()
    idle: RadioState = RadioState("idle", 0.0)
    paging_s: float = 0.0         # idle paging cycle: a download must wait for the next occasion

    @property
    def states(self) -> tuple[str, ...]:
        return (PROMOTION, ACTIVE, *(s.name for s in self.tail), self.idle.name)

    @property
    def tail_s(self) -> float:
        return sum(s.duration_s for s in self.tail)

    @property
    def tail_j(self) -> float:
        return sum(s.duration_s * s.power_w for s in self.tail)


def _drx(period_s: float, on_s: float, on_w: float, off_w: float) -> float:
    """Average power of a DRX cycle: an on-duration ping, then the base power (ARO energy(), S3)."""
    return (on_s * on_w + (period_s - on_s) * off_w) / period_s


# LTE, ARO lte.conf / ProfileLTE.java defaults (facts §1, S2-S4), which carry Huang 2012's model.
_LTE_BETA = 1.2
LTE = RadioProfile(
    "lte", base_w=_LTE_BETA, alpha_up_w=0.43839, alpha_down_w=0.05197,
    tail=(RadioState("cr_tail", _LTE_BETA, 0.1),                          # INACTIVITY_TIMER at beta
          RadioState("short_drx", _drx(0.02, 0.002, 1.68, 1.06), 0.02),   # T_SHORT_DRX, 20 ms cycle
          RadioState("long_drx", _drx(0.04, 0.002, 1.68, 1.06), 10.0)),   # T_LONG_DRX, 40 ms cycle
    idle=RadioState("idle", _drx(1.28, 0.043, 0.594, 0.0),                # paging 43 ms every 1.28 s
                    promotion_s=0.26, promotion_w=1.21),                   # T/P_PROMOTION
    paging_s=1.28)                                                         # T_IDLE_PING_PERIOD

# 3G UMTS, ARO Profile3G.java defaults (facts §2, S7): constant power per state; every
# transfer goes on DCH (ARO's small-transfer path on FACH, RLC buffer <= 543/475 B, is
# not modelled). Promotions use ARO's average delays.
UMTS = RadioProfile(
    "3g", base_w=0.7,
    tail=(RadioState("dch_tail", 0.7, 5.0),                                          # DCH->FACH timer
          RadioState("fach_tail", 0.35, 12.0, promotion_s=1.5, promotion_w=0.55)),   # FACH->IDLE timer
    idle=RadioState("idle", 0.0, promotion_s=2.0, promotion_w=0.53))

# WiFi, ARO WiFi.conf / ProfileWiFi.java (facts §3, S11): active and tail at 0.403 W,
# 0.25 s tail, then power save at 0.02 W. ARO has no promotion; Huang's 79 ms WiFi
# promotion is unconfirmed (facts §8), so none is charged.
WIFI = RadioProfile(
    "wifi", base_w=0.403,
    tail=(RadioState("tail", 0.403, 0.25),),
    idle=RadioState("psm", 0.02))

# 5G NSA: an ESTIMATE, not a measured profile. NSA runs NR as a secondary leg of an LTE
# connection under LTE RRC, so it takes the LTE timers, promotion and idle paging (the
# device camps on LTE). Connected-mode powers (beta, CR tail, DRX) are LTE's x factor:
# Xu et al. (SIGCOMM 2020, facts §4, S12) measured "2-3x over 4G", the only published figure
# we could read (Narayanan et al.'s per-state table, SIGCOMM 2021, is not in its artifact),
# so the profile takes the middle, 2.5, and ``python -m harness bench link --radio-sweep``
# shows how far 5g energy moves across 2-3x. Alphas stay LTE's: our sources give no 5G
# per-Mbps figure. Not used: the ~5 s NSA low-band tail suggested by Narayanan 2021's
# figure shading (S15), which the facts call indicative.
NR_RANGE = (2.0, 3.0)


def nr5g_nsa(factor: float = sum(NR_RANGE) / 2) -> RadioProfile:
    return RadioProfile(
        "nr5g_nsa", base_w=_LTE_BETA * factor, alpha_up_w=LTE.alpha_up_w, alpha_down_w=LTE.alpha_down_w,
        tail=tuple(RadioState(s.name, s.power_w * factor, s.duration_s) for s in LTE.tail),
        idle=LTE.idle, paging_s=LTE.paging_s)


NR5G_NSA = nr5g_nsa()

# The agent-placement study's radio, as its analysis scripts intend it (a compatibility
# profile, see proxy.link's pocket-agent link model): 0.26 s, 0.5 J promotion; 1.2 W connected;
# a 7 s tail at 0.6 W; 0.01 W idle.
POCKET_AGENT = RadioProfile(
    "pocket-agent", base_w=1.2,
    tail=(RadioState("tail", 0.6, 7.0),),
    idle=RadioState("idle", 0.01, promotion_s=0.26, promotion_w=0.5 / 0.26))

# Wired or on-device: no radio, no energy, no delay.
NONE = RadioProfile("none", base_w=0.0)

RADIO_PROFILES: dict[str, RadioProfile] = {p.name: p for p in (NONE, WIFI, LTE, NR5G_NSA, UMTS, POCKET_AGENT)}


@dataclass(slots=True)
class RadioCharge:
    """Radio energy attributed to one request (or one transfer), in joules. While
    ``pending``, ``tail_provisional_j`` is the full tail after its last transfer, not yet
    spent; the radio settles it into ``tail_j`` and then calls ``on_settle(joules)``
    with the tail energy it just settled (the meter counts it then)."""
    promotion_j: float = 0.0
    active_j: float = 0.0
    tail_j: float = 0.0
    tail_provisional_j: float = 0.0
    pending: bool = False
    on_settle: Callable[[float], None] | None = None

    @property
    def settled_j(self) -> float:
        """Energy really spent so far; final once not ``pending``."""
        return self.promotion_j + self.active_j + self.tail_j

    @property
    def provisional_j(self) -> float:
        """What the request costs if its pending tail runs out uncut."""
        return self.settled_j + self.tail_provisional_j


@dataclass
class Radio:
    """One device's radio. Feed it every transfer with ``transfer`` (the Link does, per
    chunk); read device totals after ``advance(now)``.

    Transfers may overlap and come slightly out of order (concurrent requests): an
    interval that starts before the current busy period ends is merged into it. One
    that starts in time already accounted (before the last ``advance``) is moved to
    that time: the past is not rewritten.
    """
    profile: RadioProfile
    energy_j: dict[str, float] = field(init=False)
    time_s: dict[str, float] = field(init=False)
    promotions: int = field(init=False, default=0)
    state: str = field(init=False)

    def __post_init__(self):
        self.energy_j = dict.fromkeys(self.profile.states, 0.0)
        self.time_s = dict.fromkeys(self.profile.states, 0.0)
        self.state = self.profile.idle.name
        self._clock: float | None = None      # totals are complete up to here
        self._busy_until: float | None = None  # end of the last busy period (None: never busy)
        self._promo_end = -math.inf
        self._tail_spent = 0.0                 # tail energy spent since _busy_until
        self._owner: RadioCharge | None = None  # holds the provisional tail
        self._full_tail = self.profile.tail_j

    def _gap_state(self, t: float) -> RadioState:
        """The tail or idle state at t, when t is after the last busy period."""
        if self._busy_until is None:
            return self.profile.idle
        off = t - self._busy_until
        for s in self.profile.tail:
            if off < s.duration_s:
                return s
            off -= s.duration_s
        return self.profile.idle

    def _joins_busy(self, t: float) -> bool:
        return self._busy_until is not None and t <= self._busy_until and self._clock <= self._busy_until

    def promotion_delay(self, t: float) -> float:
        """Seconds a transfer offered at t waits before the radio can carry it."""
        if self._joins_busy(t):
            return self._promo_end - t if t < self._promo_end else 0.0
        if self._clock is not None and t < self._clock:
            t = self._clock
        return self._gap_state(t).promotion_s

    def connected(self, t: float) -> bool:
        """Whether a transfer offered at t starts no new promotion: it joins a busy period (or one
        still promoting) or leaves from a state that sends directly, so it costs a transfer and a
        longer tail rather than a promotion and a new tail."""
        return self._joins_busy(t) or self.promotion_delay(t) == 0

    def is_idle(self, t: float) -> bool:
        """Whether a transfer offered at t finds the radio in its idle state (not merely in a tail)."""
        if self._joins_busy(t):
            return False
        if self._clock is not None and t < self._clock:
            t = self._clock
        return self._gap_state(t) is self.profile.idle

    def transfer(self, t_start: float, t_end: float, bytes_up: int = 0, bytes_down: int = 0,
                 into: RadioCharge | None = None) -> RadioCharge:
        """Account a transfer offered at ``t_start`` whose last byte moves at ``t_end``
        (promotion wait included, as returned by ``promotion_delay``). Adds this
        transfer's share to ``into`` (or a new RadioCharge) and returns it."""
        c = into if into is not None else RadioCharge()
        p = self.profile
        if self._clock is None:
            self._clock = t_start
        if self._joins_busy(t_start):
            start = max(t_start, self._promo_end)
            grow_from = self._busy_until
        else:
            t_start = max(t_start, self._clock)
            self._spend_gap(t_start)
            self._settle(self._tail_spent)
            s = self._gap_state(t_start)
            if s.promotion_s > 0:  # a Wi-Fi power-save wake-up is not an RRC promotion
                self.promotions += 1
                self._add(PROMOTION, s.promotion_s, s.promotion_s * s.promotion_w)
                c.promotion_j += s.promotion_s * s.promotion_w
            start = grow_from = self._promo_end = t_start + s.promotion_s
            self._busy_until = start
        end = max(t_end, start)
        grow = max(0.0, end - grow_from)
        energy = grow * p.base_w + (p.alpha_up_w * bytes_up + p.alpha_down_w * bytes_down) * 8e-6
        self._add(ACTIVE, grow, energy)
        c.active_j += energy
        if end > self._busy_until or self._owner is None:  # this transfer now ends the busy period
            self._settle(0.0)
            self._busy_until = end
            self._tail_spent = 0.0
            self._owner = c
            c.tail_provisional_j = self._full_tail
            c.pending = self._full_tail > 0
        self._clock = max(self._clock, self._busy_until)
        self.state = ACTIVE
        return c

    def advance(self, t: float) -> None:
        """Bring the totals up to t (e.g. before a metrics scrape) and set ``state``."""
        if self._clock is None:
            self._clock = t
        if t > self._clock:
            self._spend_gap(t)
            if self._owner is not None and t >= self.quiet_at:
                self._settle(self._tail_spent)
        if self._busy_until is not None and t <= self._busy_until:
            self.state = PROMOTION if t < self._promo_end else ACTIVE
        else:
            self.state = self._gap_state(t).name

    def _spend_gap(self, t: float) -> None:
        """Account tail and idle energy from the clock to t (both after the busy period)."""
        a = self._clock
        if t <= a:
            return
        self._clock = t
        if self._busy_until is None:
            self._add(self.profile.idle.name, t - a, (t - a) * self.profile.idle.power_w)
            return
        lo = self._busy_until
        for s in self.profile.tail:
            hi = lo + s.duration_s
            dt = min(t, hi) - max(a, lo)
            if dt > 0:
                self._add(s.name, dt, dt * s.power_w)
                self._tail_spent += dt * s.power_w
            lo = hi
        dt = t - max(a, lo)
        if dt > 0:
            self._add(self.profile.idle.name, dt, dt * self.profile.idle.power_w)

    @property
    def non_idle_j(self) -> float:
        """Energy spent above idle so far (promotion, active and tail states): what the
        charges add up to once their tails are settled."""
        return sum(j for state, j in self.energy_j.items() if state != self.profile.idle.name)

    @property
    def quiet_at(self) -> float | None:
        """When the pending tail runs out if no transfer cuts it (None: no tail pending)."""
        return None if self._owner is None else self._busy_until + self.profile.tail_s

    def _settle(self, spent: float) -> None:
        """The provisional tail's owner is charged what the tail really cost."""
        c = self._owner
        if c is not None:
            self._owner = None
            c.tail_j += spent
            c.tail_provisional_j = 0.0
            c.pending = False
            if c.on_settle is not None:
                c.on_settle(spent)

    def _add(self, state: str, dt: float, joules: float) -> None:
        self.time_s[state] += dt
        self.energy_j[state] += joules
