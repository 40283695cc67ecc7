import math
import random
import statistics
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from proxy.link import (IW, MSS, PACKET, PRESETS, Bandwidth, Bernoulli, DelaySplit, GilbertElliott, Latency,
                        Link, Loss, CongestionWindow, TraceBandwidth, load_trace, presets_from_config,
                        segments, wire_bytes)


class Scripted:
    """A loss model that loses exactly the transmissions it is told to."""
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)

    def lost(self):
        return self.outcomes.pop(0) if self.outcomes else False


def test_framing_counts_tcp_headers():
    assert segments(0) == 1 and segments(MSS) == 1 and segments(MSS + 1) == 2
    assert wire_bytes(MSS) == PACKET == 1500
    assert wire_bytes(3000) == 3000 + 3 * 52


# --- Latency ---------------------------------------------------------------------------

def test_latency_without_jitter_is_constant():
    stage, split = Latency(0.04, 0.0, random.Random(1)), DelaySplit()
    assert stage(1.0, 100, split) == pytest.approx(1.04)
    assert split.propagation == pytest.approx(0.04)


def test_latency_keeps_mean_and_sd_and_never_goes_below_floor():
    mean, sd = 0.1, 0.0707
    stage = Latency(mean, sd, random.Random(7))
    delays = []
    for i in range(20000):
        t = i * 10.0  # far apart: the in-order rule never applies
        delays.append(stage(t, 100, DelaySplit()) - t)
    assert min(delays) >= stage.floor - 1e-12
    assert statistics.fmean(delays) == pytest.approx(mean, rel=0.02)
    assert statistics.stdev(delays) == pytest.approx(sd, rel=0.03)


def test_latency_is_correlated_over_its_correlation_time():
    stage = Latency(0.1, 0.07, random.Random(4), corr_s=2.0)
    near, far = [], []
    for i in range(4000):
        t = i * 10.0
        a = stage(t, 100, DelaySplit()) - t
        b = stage(t + 0.02, 100, DelaySplit()) - (t + 0.02)
        c = stage(t + 8.0, 100, DelaySplit()) - (t + 8.0)
        near.append((a, b))
        far.append((b, c))
    corr = lambda pairs: statistics.correlation(*zip(*pairs, strict=True))  # noqa: E731
    assert corr(near) > 0.95  # 20 ms apart: exp(-0.01) in the underlying normal
    assert abs(corr(far)) < 0.1  # 8 s apart: exp(-4) = 0.02


def test_streamed_frames_keep_the_configured_mean_and_sd():
    mean, sd = 0.1, 0.0707
    delays = []
    for seed in range(300):
        stage = Latency(mean, sd, random.Random(seed), corr_s=2.0)
        delays += [stage(i * 0.02, 150, DelaySplit()) - i * 0.02 for i in range(200)]
    assert statistics.fmean(delays) == pytest.approx(mean, rel=0.05)
    assert statistics.pstdev(delays) == pytest.approx(sd, rel=0.10)


def test_latency_floor_is_two_sd_below_mean():
    assert Latency(0.02, 0.005, random.Random(0)).floor == pytest.approx(0.01)
    assert Latency(0.02, 0.015, random.Random(0)).floor == 0.0


def test_latency_delivers_in_order():
    stage = Latency(0.1, 0.07, random.Random(3))
    arrivals = [stage(i * 0.001, 100, DelaySplit()) for i in range(2000)]
    assert arrivals == sorted(arrivals)


# --- Bandwidth -------------------------------------------------------------------------

def test_bandwidth_serializes_and_queues_behind_earlier_bytes():
    stage = Bandwidth(8.0)  # 1 byte per microsecond
    s1, s2, s3 = DelaySplit(), DelaySplit(), DelaySplit()
    end1 = stage(0.0, 1448, s1)
    assert end1 == pytest.approx(1500e-6)
    end2 = stage(0.0, 1448, s2)  # offered together: waits for the first
    assert s2.queueing == pytest.approx(1500e-6) and end2 == pytest.approx(3000e-6)
    stage(1.0, 1448, s3)  # link idle again
    assert s3.queueing == 0.0 and s3.serialization == pytest.approx(1500e-6)


# --- TraceBandwidth --------------------------------------------------------------------

def trace_file(tmp_path, text, name="t.trace"):
    p = tmp_path / name
    p.write_text(text)
    return load_trace(str(p))


def test_trace_parse_and_rate(tmp_path):
    tr = trace_file(tmp_path, "1\n")
    assert tr.period == 0.001 and tr.mbps == pytest.approx(12.0)  # "1" = 12 Mbps (facts §5)
    tr = trace_file(tmp_path, "0\n5\n5\n10\n", "b.trace")
    assert tr.times == (0.0, 0.005, 0.005, 0.01) and tr.period == 0.01


@pytest.mark.parametrize("text,msg", [("", "at least one"), ("0\n", "at least one"), ("5\nx\n", ":2:"),
                                      ("5\n3\n", "non-decreasing"), ("-1\n", "non-negative")])
def test_trace_rejects_bad_files(tmp_path, text, msg):
    with pytest.raises(ValueError, match=msg):
        trace_file(tmp_path, text, f"bad{abs(hash(text))}.trace")


def test_trace_delivers_one_packet_per_opportunity_and_wraps(tmp_path):
    stage = TraceBandwidth(trace_file(tmp_path, "5\n10\n"))  # opportunities at 5, 10, 15, 20 ms ...
    split = DelaySplit()
    end = stage(0.0, 3 * MSS, split)  # three full packets: 5, 10, 15 ms (second lap)
    assert end == pytest.approx(0.015)
    assert split.queueing == pytest.approx(0.005) and split.serialization == pytest.approx(0.010)


def test_trace_small_chunks_share_an_opportunity_and_leftovers_are_wasted(tmp_path):
    stage = TraceBandwidth(trace_file(tmp_path, "10\n"))  # one opportunity every 10 ms
    a = stage(0.0, 100, DelaySplit())
    b = stage(0.001, 100, DelaySplit())  # queued before the 10 ms opportunity fired: shares it
    assert a == b == pytest.approx(0.010)
    c = stage(0.015, 100, DelaySplit())  # after it: its unused bytes are gone
    assert c == pytest.approx(0.020)


# --- Loss ------------------------------------------------------------------------------

def test_loss_fast_retransmit_costs_one_rtt_when_three_segments_follow():
    stage, split = Loss(Scripted([True]), rtt_s=0.08, rto_s=0.28), DelaySplit()
    assert stage(0.0, 5 * MSS, split) == pytest.approx(0.08)
    assert split.retransmission == pytest.approx(0.08) and stage.lost == 1 and stage.segments == 5


def test_loss_of_a_tail_segment_waits_for_the_probe():
    # nothing followed it: the tail-loss probe fires 2 SRTT after it, before the RTO (RFC 8985)
    stage = Loss(Scripted([False, False, True]), rtt_s=0.08, rto_s=0.28)
    assert stage(0.0, 3 * MSS, DelaySplit()) == pytest.approx(0.16)
    assert stage.repairs == {"fast": 0, "tlp": 1, "rto": 0}


def test_probe_for_a_lone_segment_adds_the_delayed_ack_timer_but_never_passes_the_rto():
    assert Loss(Scripted([True]), rtt_s=0.02, rto_s=0.3)(0.0, 100, DelaySplit()) == pytest.approx(0.04 + 0.2)
    assert Loss(Scripted([True]), rtt_s=0.2, rto_s=0.3)(0.0, 100, DelaySplit()) == pytest.approx(0.3)


def test_probe_exposes_an_earlier_loss_which_is_resent_one_rtt_later():
    stage = Loss(Scripted([False, True, False]), rtt_s=0.08, rto_s=0.28)  # one segment after it: no 3 dupacks
    assert stage(0.0, 3 * MSS, DelaySplit()) == pytest.approx(0.16 + 0.08)


def test_lost_retransmission_backs_off_doubling_from_the_first_timeout():
    # lone segment lost; the probe (0.04 + 0.2 s) lost; the RTO retransmission lost; then through:
    # probe + RTO + 2 RTO (the first timeout is charged once, RFC 6298 §5.5)
    stage = Loss(Scripted([True, True, True, False]), rtt_s=0.02, rto_s=0.3)
    assert stage(0.0, 100, DelaySplit()) == pytest.approx(0.24 + 0.3 + 0.6)
    assert stage.repairs == {"fast": 0, "tlp": 0, "rto": 1}


def stream(stage, lost_at, n=10, gap=0.02, size=150):
    """Frames offered ``gap`` apart; the frame with index ``lost_at`` loses its only segment."""
    stage.model = Scripted([i == lost_at for i in range(n)])
    return [stage(i * gap, size, DelaySplit()) for i in range(n)]


def test_a_lost_frame_is_fast_retransmitted_by_the_frames_after_it():
    # frames 20 ms apart, RTT 200 ms: three more frames leave within 60 ms, their duplicate ACKs
    # bring the retransmission out one RTT after the third: 60 + 200 ms late
    stage = Loss(None, rtt_s=0.2, rto_s=0.6)
    at = stream(stage, lost_at=4)
    assert at[4] - 4 * 0.02 == pytest.approx(0.06 + 0.2)
    assert stage.repairs == {"fast": 1, "tlp": 0, "rto": 0}
    assert at[5] == at[4] and at == sorted(at)  # head-of-line: later frames wait for it


def test_frames_too_sparse_for_three_dupacks_wait_for_the_probe():
    # chunks 100 ms apart on a 200 ms RTT: the third later one would leave 300 ms on, beyond one RTT
    stage = Loss(None, rtt_s=0.2, rto_s=0.6)
    at = stream(stage, lost_at=4, gap=0.1)
    assert at[4] - 0.4 == pytest.approx(0.4)  # PTO = 2 SRTT
    assert stage.repairs == {"fast": 0, "tlp": 1, "rto": 0}


class Window:
    """Stands in for the congestion window: a fixed cwnd, and the losses it is told of."""
    def __init__(self, segments):
        self.cwnd, self.seen = segments * MSS, []

    def on_loss(self, t, kind):
        self.seen.append((round(t, 9), kind))


def test_loss_reports_each_repair_to_the_congestion_window():
    window = Window(10)
    stream(Loss(None, rtt_s=0.2, rto_s=0.6, window=window), lost_at=4)
    assert window.seen == [(round(0.08 + 0.26, 9), "fast")]


def test_a_window_under_four_segments_cannot_raise_three_dupacks():
    # the same loss (first of 5 segments) is fast-retransmitted with room for 10, probed with room for 3
    assert Loss(Scripted([True]), 0.08, 0.28, Window(10))(0.0, 5 * MSS, DelaySplit()) == pytest.approx(0.08)
    assert Loss(Scripted([True]), 0.08, 0.28, Window(3))(0.0, 5 * MSS, DelaySplit()) == pytest.approx(0.16 + 0.08)


def test_loss_stalls_later_chunks_head_of_line():
    stage = Loss(Scripted([True]), rtt_s=0.08, rto_s=0.3)
    stage(0.0, 100, DelaySplit())
    split = DelaySplit()
    assert stage(0.1, 100, split) == pytest.approx(0.3)
    assert split.retransmission == pytest.approx(0.2)


def test_bernoulli_rate():
    model = Bernoulli(0.02, random.Random(5))
    n = 200_000
    assert sum(model.lost() for _ in range(n)) / n == pytest.approx(0.02, rel=0.05)


def test_gilbert_elliott_steady_state_rate_and_bursts():
    model = GilbertElliott(p=0.01, r=0.3, loss_bad=0.8, loss_good=0.001, rng=random.Random(11))
    draws = [model.lost() for _ in range(400_000)]
    assert sum(draws) / len(draws) == pytest.approx(model.mean, rel=0.05)
    after_loss = [b for a, b in zip(draws, draws[1:], strict=False) if a]
    assert sum(after_loss) / len(after_loss) > 5 * model.mean  # losses come in bursts


def test_simple_gilbert_burst_length():
    # 1-h = 1, 1-k = 0: every packet in Bad is lost, so P(loss | loss) = P(stay Bad) = 1 - r
    model = GilbertElliott(p=0.02, r=0.25, loss_bad=1.0, loss_good=0.0, rng=random.Random(2))
    draws = [model.lost() for _ in range(300_000)]
    after_loss = [b for a, b in zip(draws, draws[1:], strict=False) if a]
    assert sum(after_loss) / len(after_loss) == pytest.approx(0.75, abs=0.02)


# --- CongestionWindow -------------------------------------------------------------------------

@given(st.integers(min_value=1, max_value=2_000_000))
def test_slow_start_rounds_match_iw10_doubling(size):
    rtt = 0.1
    depart = CongestionWindow(rtt, rto_s=0.3)(0.0, size, DelaySplit())
    rounds = math.ceil(math.log2(size / IW + 1))  # facts §5 derivation
    assert depart == pytest.approx((rounds - 1) * rtt)


def test_slow_start_restarts_after_idle_longer_than_rto():
    stage = CongestionWindow(0.1, rto_s=0.3)
    first = stage(0.0, 100_000, DelaySplit())
    assert first == pytest.approx(0.2)
    warm = stage(first + 0.25, 100_000, DelaySplit())  # idle < RTO: the grown window is kept
    assert warm == pytest.approx(first + 0.25)
    cold = stage(warm + 1.0, 100_000, DelaySplit())  # idle > RTO: back to IW10
    assert cold - (warm + 1.0) == pytest.approx(0.2)


def test_slow_start_keeps_fifo_order():
    stage = CongestionWindow(0.1, rto_s=0.3)
    a = stage(0.0, 3 * IW, DelaySplit())  # waits one round for its tail
    b = stage(0.01, 10, DelaySplit())
    assert b >= a


def test_fast_loss_halves_the_window_at_the_next_round():
    stage = CongestionWindow(0.1, rto_s=0.3)
    stage(0.0, IW, DelaySplit())
    stage.on_loss(0.05, "fast")
    stage(0.1, 100, DelaySplit())  # next round: halved instead of doubled
    assert stage.ssthresh == IW // 2 and stage.cwnd == IW // 2


def test_timeout_drops_the_window_to_one_segment_and_stalls_until_it_fires():
    stage = CongestionWindow(0.1, rto_s=0.3)
    stage(0.0, IW, DelaySplit())
    stage.on_loss(0.25, "rto")
    depart = stage(0.1, 100, DelaySplit())  # the window is full until the timer fires
    assert depart == pytest.approx(0.25) and stage.cwnd == MSS and stage.ssthresh == IW // 2


def test_congestion_avoidance_adds_half_a_segment_per_round():
    stage = CongestionWindow(0.1, rto_s=10.0)
    stage(0.0, 0, DelaySplit())  # the connection starts (at IW10)
    stage.cwnd = stage.ssthresh = 20 * MSS
    stage(0.0, 20 * MSS, DelaySplit())
    stage(0.1, 10, DelaySplit())  # delayed ACKs: one ACK per two segments (RFC 5681 §4.2)
    assert stage.cwnd == 20 * MSS + MSS // 2


def test_application_limited_sender_does_not_grow_the_window():
    stage = CongestionWindow(0.1, rto_s=10.0)
    for i in range(100):  # 150 B every 20 ms: never half of IW in flight
        stage(i * 0.02, 150, DelaySplit())
    assert stage.cwnd == IW


# --- Link and presets ------------------------------------------------------------------

def test_local_preset_adds_almost_nothing():
    link = Link("local")
    d = link.send("down", 5.0, 1000)
    assert d.at - 5.0 < 1e-6 and d.split.total == pytest.approx(d.at - 5.0)
    assert link.radio.profile.name == "none"


def test_split_total_matches_delay():
    link = Link("4g", seed=3)
    t = 0.0
    for i in range(300):
        d = link.send("down" if i % 3 else "up", t, 40_000 if i % 50 == 0 else 150)
        assert d.split.total == pytest.approx(d.at - t, abs=1e-9)
        t += 0.01


def test_send_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        Link("wifi").send("sideways", 0.0, 1)


def run(link, calls):
    return [(d.at, d.split) for d in (link.send(dr, t, n) for dr, t, n in calls)]


calls_strategy = st.lists(st.tuples(st.sampled_from(["up", "down"]), st.floats(0, 0.5), st.integers(0, 60_000)),
                          min_size=1, max_size=60)


def timeline(raw):
    """Offer times in order, as real time gives them."""
    t, out = 0.0, []
    for direction, gap, n in raw:
        t += gap
        out.append((direction, t, n))
    return out


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), calls_strategy, st.integers(0, 2**32))
def test_same_seed_same_result(name, raw, seed):
    calls = timeline(raw)
    assert run(Link(name, seed), calls) == run(Link(name, seed), calls)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), calls_strategy)
def test_order_kept_and_delay_never_below_floor(name, raw):
    link = Link(name, seed=1)
    p = link.preset
    floor = max(0.0, p.rtt_ms / 2000 - 2 * p.jitter_ms / 1000 / math.sqrt(2))
    last = {"up": -math.inf, "down": -math.inf}
    for direction, t, n in timeline(raw):
        d = link.send(direction, t, n)
        assert d.at - t >= floor - 1e-12
        assert d.at >= last[direction]
        last[direction] = d.at


def test_different_seeds_differ():
    calls = [("down", i * 0.01, 200) for i in range(50)]
    assert run(Link("4g", 1), calls) != run(Link("4g", 2), calls)


def test_builtin_presets():
    assert list(PRESETS) == ["local", "lan", "wifi", "5g", "4g", "poor_cellular", "edge_case"]
    assert PRESETS["4g"].radio == "lte" and PRESETS["5g"].radio == "nr5g_nsa"
    assert PRESETS["local"].rtt_ms == 0 and PRESETS["local"].down_mbps == 10_000
    assert PRESETS["4g"].rto_s == pytest.approx(0.08 + 0.2)  # 4 x 30 ms < RTO_MIN
    assert PRESETS["edge_case"].rto_s == pytest.approx(0.5 + 0.8)


def test_presets_from_config_builds_on_base(tmp_path):
    trace = tmp_path / "lte.down"
    trace.write_text("1\n2\n")
    out = presets_from_config({
        "slow4g": {"base": "4g", "rtt_ms": 150},
        "slower": {"base": "slow4g", "down_mbps": 1, "trace_down": str(trace)},
        "bursty": {"base": "wifi", "gemodel": [0.01, 0.3, 0.8, 0.001]},
        "plain": {"base": "bursty", "loss": 0.01},
    })
    assert set(PRESETS) < set(out)
    assert out["slow4g"].rtt_ms == 150 and out["slow4g"].jitter_ms == 30 and out["slow4g"].radio == "lte"
    assert out["slower"].rtt_ms == 150 and out["slower"].down_mbps == 1
    assert out["bursty"].loss_model == "gemodel"
    assert out["bursty"].loss == pytest.approx((0.01 * 0.8 + 0.3 * 0.001) / 0.31)
    assert out["plain"].loss_model == "bernoulli" and out["plain"].gemodel is None and out["plain"].loss == 0.01
    assert isinstance(Link(out["slower"]).down[1], TraceBandwidth)


def test_gemodel_takes_netem_defaults():
    p = presets_from_config({"g": {"gemodel": [0.1]}})["g"]
    assert p.gemodel == (0.1, 0.9, 1.0, 0.0) and p.loss == pytest.approx(0.1)


@pytest.mark.parametrize("spec,msg", [
    ({"x": {"rtt": 5}}, r"networks\.x\.rtt: unknown key"),
    ({"x": {"rtt_ms": -1}}, r"networks\.x\.rtt_ms: must be a non-negative number"),
    ({"x": {"rtt_ms": "20"}}, r"networks\.x\.rtt_ms: must be a non-negative number"),
    ({"x": {"paging_s": -1}}, r"networks\.x\.paging_s: must be a non-negative number"),
    ({"x": {"handshake_rtts": "two"}}, r"networks\.x\.handshake_rtts: must be a non-negative number"),
    ({"x": {"down_mbps": 0}}, r"networks\.x\.down_mbps: must be > 0"),
    ({"x": {"loss": 1.0}}, r"networks\.x\.loss: must be below 1"),
    ({"x": {"jitter_ms": 5}}, r"networks\.x\.jitter_ms: needs rtt_ms"),
    ({"x": {"radio": "6g"}}, r"networks\.x\.radio: unknown profile"),
    ({"x": {"base": "nope"}}, r"networks\.x\.base: unknown preset"),
    ({"x": {"base": "y"}, "y": {"base": "x"}}, r"circular"),
    ({"x": {"loss": 0.1, "gemodel": [0.1]}}, r"networks\.x\.loss: give loss"),
    ({"x": {"gemodel": [0.1, 2]}}, r"networks\.x\.gemodel: values must be probabilities"),
    ({"x": {"loss_model": "gemodel"}}, r"networks\.x\.gemodel: needs a list"),
    ({"x": {"loss_model": "pareto"}}, r"networks\.x\.loss_model"),
    ({"x": {"trace_up": "/nonexistent.trace"}}, r"networks\.x\.trace_up: "),
    ({"x": 5}, r"networks\.x: must be a mapping"),
])
def test_presets_from_config_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        presets_from_config(spec)


def test_custom_preset_can_redefine_a_builtin_name():
    assert presets_from_config({"4g": {"base": "4g", "loss": 0.0}})["4g"].loss == 0.0
    assert PRESETS["4g"].loss == 0.005


# --- Connection setup, paging, presets per radio ------------------------------------------

def quiet(name="4g", **over):
    """A preset without jitter, loss or radio: every delay is a closed form."""
    return replace(PRESETS[name], jitter_ms=0, loss=0.0, radio="none", **over)


def test_new_connection_pays_tcp_and_tls_round_trips_before_its_first_byte():
    link = Link(quiet())
    first = link.send("up", 0.0, 100)
    assert first.split.handshake == pytest.approx(2 * 0.08)
    assert first.at == pytest.approx(0.16 + wire_bytes(100) * 8 / 5.9e6 + 0.04)
    assert link.send("down", first.at, 100).split.handshake == 0.0  # the answer uses that connection
    assert link.send("up", 1.0, 100).split.handshake == 0.0  # kept alive
    assert link.send("up", 1.0 + 5.5, 100).split.handshake == pytest.approx(0.16)  # idle > 5 s: closed


def test_handshake_is_configurable_per_preset():
    assert Link(quiet(handshake_rtts=0)).send("up", 0.0, 100).split.handshake == 0.0
    link = Link(quiet(handshake_rtts=3, keepalive_s=60))
    assert link.send("up", 0.0, 100).split.handshake == pytest.approx(0.24)
    assert link.send("up", 50.0, 100).split.handshake == 0.0


def test_download_to_an_idle_lte_radio_waits_for_paging_then_promotion():
    p = replace(quiet(), radio="lte")
    link = Link(p, seed=9)
    d = link.send("down", 0.0, 100)
    paging = random.Random(f"9:{p.name}:paging").uniform(0.0, 1.28)
    assert d.split.paging == pytest.approx(paging) and d.split.promotion == pytest.approx(0.26)
    assert d.at == pytest.approx(paging + 0.26 + wire_bytes(100) * 8 / 20e6 + 0.04)
    assert link.send("down", d.at + 1.0, 100).split.paging == 0.0  # in the tail: no paging
    assert Link(p).send("up", 0.0, 100).split.paging == 0.0  # the device starts it: no paging


def test_paging_cycle_is_configurable():
    p = replace(quiet(), radio="lte", paging_s=0.32)  # the 320 ms cycle an operator trace shows (facts §1, S5)
    paging = random.Random(f"4:{p.name}:paging").uniform(0.0, 0.32)
    assert Link(p, seed=4).send("down", 0.0, 100).split.paging == pytest.approx(paging)
    assert Link(replace(p, paging_s=0)).send("down", 0.0, 100).split.paging == 0.0


def test_presets_use_the_radio_their_network_has():
    radios = {name: p.radio for name, p in PRESETS.items()}
    assert radios == {"local": "none", "lan": "none", "wifi": "wifi", "5g": "nr5g_nsa", "4g": "lte",
                      "poor_cellular": "lte", "edge_case": "lte"}
    assert Link("lan").radio.profile.name == "none"


def test_pocket_agent_model_charges_one_gaussian_rtt_per_call():
    p = presets_from_config({"pa": {"base": "4g", "link_model": "pocket-agent", "radio": "pocket-agent"}})["pa"]
    link = Link(p, seed=2)
    rng = random.Random("2:pa:up:transfer")
    rtt = max(0.0, rng.gauss(0.08, 0.03)) + (0.08 if rng.random() < 0.005 else 0.0)
    up = link.send("up", 0.0, 1000)
    assert up.split.handshake == 0.0 and up.split.promotion == pytest.approx(0.26)
    assert up.at == pytest.approx(0.26 + 1000 * 8 / 5.9e6 + rtt)  # payload / bandwidth, no framing
    down = link.send("down", up.at, 150)
    assert down.at - up.at == pytest.approx(150 * 8 / 20e6)
    link.radio.advance(100.0)
    assert link.radio.energy_j["promotion"] == pytest.approx(0.5)
    assert link.radio.energy_j["tail"] == pytest.approx(7 * 0.6)


def test_unknown_link_model_is_refused():
    with pytest.raises(ValueError, match=r"networks\.x\.link_model"):
        presets_from_config({"x": {"link_model": "ns3"}})


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), calls_strategy, st.integers(0, 2**16))
def test_split_sums_to_delay_and_bytes_are_conserved(name, raw, seed):
    link = Link(name, seed)
    p, sent, serialization = link.preset, {"up": [], "down": []}, {"up": 0.0, "down": 0.0}
    for direction, t, n in timeline(raw):
        d = link.send(direction, t, n)
        assert d.split.total == pytest.approx(d.at - t, abs=1e-9)
        sent[direction].append(n)
        serialization[direction] += d.split.serialization
    for direction, chain in (("up", link.up), ("down", link.down)):
        rate = p.up_mbps if direction == "up" else p.down_mbps
        wire = sum(wire_bytes(n) for n in sent[direction])
        assert serialization[direction] == pytest.approx(wire * 8 / (rate * 1e6), rel=1e-9, abs=1e-12)
        loss = next((s for s in chain if isinstance(s, Loss)), None)
        if loss is not None:  # every segment sent once; losses cost time, never bytes
            assert loss.segments == sum(segments(n) for n in sent[direction])
