import pytest
from hypothesis import given, settings, strategies as st

from proxy.radio import LTE, NR5G_NSA, POCKET_AGENT, RADIO_PROFILES, UMTS, WIFI, Radio, RadioCharge, nr5g_nsa

LTE_TAIL_J = 0.1 * 1.2 + 0.02 * (0.002 * 1.68 + 0.018 * 1.06) / 0.02 + 10 * (0.002 * 1.68 + 0.038 * 1.06) / 0.04


def test_lte_profile_is_aro():
    assert LTE.tail_s == pytest.approx(10.12)
    assert LTE.tail_j == pytest.approx(LTE_TAIL_J)
    assert LTE.idle.promotion_s == 0.26 and LTE.idle.promotion_w == 1.21
    assert LTE.idle.power_w == pytest.approx(0.043 * 0.594 / 1.28)


def test_nr5g_nsa_is_lte_scaled():
    assert NR5G_NSA.base_w == pytest.approx(2.5 * LTE.base_w)
    assert NR5G_NSA.tail_j == pytest.approx(2.5 * LTE.tail_j)
    assert NR5G_NSA.tail_s == LTE.tail_s and NR5G_NSA.idle == LTE.idle


def test_nsa_power_factor_spans_the_published_range_and_keeps_lte_paging():
    assert LTE.paging_s == 1.28 and NR5G_NSA.paging_s == 1.28  # NSA camps on LTE
    assert nr5g_nsa(2.0).tail_j == pytest.approx(2 * LTE.tail_j)
    assert nr5g_nsa(3.0).base_w == pytest.approx(3 * LTE.base_w)


def test_pocket_agent_radio_is_the_studys():
    assert POCKET_AGENT.idle.promotion_s == 0.26
    assert POCKET_AGENT.idle.promotion_s * POCKET_AGENT.idle.promotion_w == pytest.approx(0.5)
    assert POCKET_AGENT.base_w == 1.2 and POCKET_AGENT.tail_s == 7.0 and POCKET_AGENT.tail_j == pytest.approx(4.2)
    assert POCKET_AGENT.idle.power_w == 0.01 and RADIO_PROFILES["pocket-agent"] is POCKET_AGENT


def test_wifi_power_save_wake_up_is_not_a_promotion():
    r = Radio(WIFI)
    r.transfer(0.0, 1.0)
    r.advance(10.0)
    assert r.is_idle(10.0)
    r.transfer(10.0, 11.0)
    assert r.promotions == 0


def test_is_idle_only_after_the_tail():
    r = Radio(LTE)
    assert r.is_idle(0.0)
    r.transfer(0.0, 1.0)
    assert not r.is_idle(0.5) and not r.is_idle(1.0 + 5.0) and r.is_idle(1.0 + LTE.tail_s + 0.01)


def test_first_transfer_from_idle_pays_promotion_active_and_tail():
    r = Radio(LTE)
    assert r.promotion_delay(10.0) == 0.26
    c = r.transfer(10.0, 11.26, bytes_up=1000, bytes_down=125_000)
    assert r.promotions == 1
    assert c.promotion_j == pytest.approx(0.26 * 1.21)
    assert c.active_j == pytest.approx(1.0 * 1.2 + 0.43839 * 0.008 + 0.05197 * 1.0)
    assert c.pending and c.tail_j == 0.0 and c.tail_provisional_j == pytest.approx(LTE_TAIL_J)
    assert c.settled_j == pytest.approx(c.promotion_j + c.active_j)  # the tail is not spent yet
    assert c.provisional_j == pytest.approx(c.settled_j + LTE_TAIL_J)
    assert r.energy_j["promotion"] == pytest.approx(c.promotion_j)
    assert r.time_s["active"] == pytest.approx(1.0)


def test_transfer_in_tail_needs_no_promotion_and_settles_the_earlier_tail():
    r = Radio(LTE)
    a = r.transfer(0.0, 1.0)
    assert r.promotion_delay(1.05) == 0.0
    b = r.transfer(1.05, 1.2)
    assert r.promotions == 1
    assert not a.pending and a.tail_j == pytest.approx(0.05 * 1.2)  # 50 ms of CR tail at beta
    assert a.tail_provisional_j == 0.0
    assert b.pending and b.tail_provisional_j == pytest.approx(LTE_TAIL_J) and b.tail_j == 0.0


def test_promotion_in_progress_is_shared():
    r = Radio(LTE)
    r.transfer(0.0, 0.3)
    r.advance(20.0)
    assert r.promotion_delay(20.0) == 0.26
    a = r.transfer(20.0, 20.5)
    assert r.promotion_delay(20.1) == pytest.approx(0.16)  # waits out the same promotion
    b = r.transfer(20.1, 20.4)
    assert r.promotions == 2 and b.promotion_j == 0.0
    # the first pays the whole promotion, then 20.26..20.5 at beta; the second adds no time of its own
    assert a.promotion_j == pytest.approx(0.26 * 1.21) and a.active_j == pytest.approx(0.24 * 1.2)
    assert b.active_j == 0.0 and b.tail_provisional_j == 0.0 and a.tail_provisional_j == pytest.approx(LTE_TAIL_J)


def test_overlapping_transfers_merge_into_one_busy_period():
    r = Radio(WIFI)
    a = r.transfer(0.0, 2.0)
    b = r.transfer(1.0, 3.0)  # overlaps: only 2..3 is new active time
    c = r.transfer(1.5, 2.5)  # inside: no new time, keeps no tail
    assert r.time_s["active"] == pytest.approx(3.0)
    assert b.active_j == pytest.approx(1.0 * 0.403) and c.active_j == 0.0
    assert a.tail_provisional_j == 0.0 and c.tail_provisional_j == 0.0
    assert b.tail_provisional_j == pytest.approx(0.25 * 0.403)


def test_3g_fach_costs_the_fach_promotion():
    r = Radio(UMTS)
    r.transfer(0.0, 1.0)
    assert r.promotion_delay(1.0 + 3.0) == 0.0          # DCH tail
    assert r.promotion_delay(1.0 + 5.0 + 1.0) == 1.5    # FACH
    assert r.promotion_delay(1.0 + 17.0 + 1.0) == 2.0   # idle


def test_advance_walks_the_tail_states():
    r = Radio(LTE)
    r.transfer(0.0, 1.0)
    seen = []
    for t in (0.5, 1.05, 1.11, 2.0, 12.0):
        r.advance(t)
        seen.append(r.state)
    assert seen == ["active", "cr_tail", "short_drx", "long_drx", "idle"]


def test_advance_past_tail_settles_and_counts_idle():
    r = Radio(LTE)
    c = r.transfer(0.0, 1.0)
    r.advance(5.0)
    assert c.pending and c.tail_j == 0.0 and r.quiet_at == pytest.approx(11.12)
    r.advance(31.12)
    assert not c.pending and c.tail_j == pytest.approx(LTE_TAIL_J) and c.tail_provisional_j == 0.0
    assert r.quiet_at is None
    assert r.time_s["idle"] == pytest.approx(20.0)
    assert r.energy_j["idle"] == pytest.approx(20.0 * LTE.idle.power_w)


def test_into_accumulates_one_request():
    r, req = Radio(LTE), RadioCharge()
    for i in range(5):
        r.transfer(i * 0.05, i * 0.05 + 0.01, 0, 100, into=req)
    assert r.promotions == 1 and req.pending
    r.advance(100.0)
    assert req.settled_j == pytest.approx(r.non_idle_j)


def test_null_profile_costs_nothing():
    r = Radio(RADIO_PROFILES["none"])
    assert r.promotion_delay(0.0) == 0.0
    c = r.transfer(0.0, 5.0, 10**6, 10**6)
    r.advance(100.0)
    assert c.settled_j == 0.0 and not c.pending and r.promotions == 0 and sum(r.energy_j.values()) == 0.0


transfers = st.lists(st.tuples(st.floats(0, 15), st.floats(0, 3), st.integers(0, 10**6), st.integers(0, 10**6)),
                     min_size=1, max_size=30)


def replay(profile, raw):
    """Transfers offered in time order (gap before each, duration, bytes), one charge each."""
    r, t, charges = Radio(profile), 0.0, []
    for gap, dur, up, down in raw:
        t += gap
        start = t
        wait = r.promotion_delay(start)
        charges.append(r.transfer(start, start + wait + dur, up, down))
    return r, t, charges


PROFILES = st.sampled_from(list(RADIO_PROFILES.values()))


@settings(max_examples=60, deadline=None)
@given(PROFILES, transfers)
def test_charges_add_up_to_device_energy(profile, raw):
    r, t, charges = replay(profile, raw)
    r.advance(t + 100.0)
    assert not any(c.pending for c in charges)
    assert sum(c.settled_j for c in charges) == pytest.approx(r.non_idle_j, rel=1e-9, abs=1e-9)


# An agent's calls on one device: each step offers one transfer of request `req` (a
# streamed response is many), `back` seconds before the clock (concurrent requests
# arrive slightly out of order), and may first scrape (advance to now).
calls = st.lists(st.tuples(st.floats(0, 12), st.integers(0, 3), st.floats(0, 1), st.floats(0, 2),
                           st.integers(0, 10**5), st.booleans()), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(PROFILES, calls)
def test_settled_energy_is_conserved_and_only_grows(profile, steps):
    """At every moment the requests' settled energy is energy the radio has spent (so a
    counter fed with it never runs ahead or back), and once the tails are over it is all of it."""
    r, t = Radio(profile), 0.0
    reqs = [RadioCharge() for _ in range(4)]
    counted = [0.0] * 4  # what on_settle has reported: a Prometheus counter's view
    for i, c in enumerate(reqs):
        c.on_settle = lambda j, i=i: counted.__setitem__(i, counted[i] + j)
    last = 0.0
    for gap, req, back, dur, nbytes, scrape in steps:
        t += gap
        if scrape:
            r.advance(t)
        start = max(0.0, t - back)
        r.transfer(start, start + r.promotion_delay(start) + dur, nbytes, nbytes, into=reqs[req])
        settled = sum(c.settled_j for c in reqs)
        assert settled >= last - 1e-9
        assert settled <= r.non_idle_j + 1e-9
        last = settled
    r.advance(t + 100.0)
    assert not any(c.pending for c in reqs) and r.quiet_at is None
    assert sum(c.settled_j for c in reqs) == pytest.approx(r.non_idle_j, rel=1e-9, abs=1e-9)
    assert sum(c.tail_j for c in reqs) == pytest.approx(sum(counted), rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([LTE, UMTS, WIFI, NR5G_NSA]), transfers, st.integers(1, 10**6))
def test_energy_grows_with_bytes(profile, raw, extra):
    _, _, base = replay(profile, raw)
    more = [(g, d, u + extra, dn + extra) for g, d, u, dn in raw]
    _, _, bigger = replay(profile, more)
    total, total_more = sum(c.provisional_j for c in base), sum(c.provisional_j for c in bigger)
    if profile.alpha_up_w or profile.alpha_down_w:
        assert total_more > total
    else:
        assert total_more == pytest.approx(total)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([LTE, UMTS, NR5G_NSA]), st.floats(0.01, 5), st.floats(0, 100))
def test_idle_gap_longer_than_tail_costs_a_promotion(profile, dur, beyond):
    r = Radio(profile)
    r.transfer(0.0, profile.idle.promotion_s + dur)
    before = r.promotions
    t = profile.idle.promotion_s + dur + profile.tail_s + 0.001 + beyond
    assert r.promotion_delay(t) == profile.idle.promotion_s
    c = r.transfer(t, t + profile.idle.promotion_s + 0.1)
    assert r.promotions == before + 1
    assert c.promotion_j == pytest.approx(profile.idle.promotion_s * profile.idle.promotion_w)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 10.0))
def test_lte_gap_within_tail_costs_no_promotion(gap):
    r = Radio(LTE)
    r.transfer(0.0, 1.0)
    assert r.promotion_delay(1.0 + gap) == 0.0
    r.transfer(1.0 + gap, 2.0 + gap)
    assert r.promotions == 1


def test_out_of_order_start_before_advanced_clock_is_moved_forward():
    r = Radio(WIFI)
    r.transfer(0.0, 1.0)
    r.advance(10.0)
    c = r.transfer(5.0, 5.5)  # starts in time already accounted as idle
    assert r.time_s["psm"] == pytest.approx(10.0 - 1.25)
    assert c.active_j == 0.0  # it ends before the clock: nothing new to charge but its tail
    assert r.promotions == 0  # Wi-Fi power-save wake-ups are not promotions


def test_meter_counts_request_radio_energy_only_once_spent():
    """The request counter and the energy-per-token histogram see a tail when it settles, never its
    provisional figure: a Prometheus counter cannot take back what it was given."""
    from proxy import metrics as m
    from proxy.meter import RequestMeter
    labels = ("settle-test", "upstream", "hybrid", "lte-test")
    meter = RequestMeter(*labels, "dev", None, t_received=0.0, bytes_up=0,
                         placement={"placement": "cloud", "placement_emulated": False})
    meter.completion_tokens = 4
    r = Radio(LTE)
    r.transfer(0.0, 0.26 + 1.0, 0, 1000, into=meter.net.charge)
    record = meter.finish(200)
    counter, per_token = (m.REQ_RADIO_ENERGY.labels(*labels, "cloud", "false"),
                          m.ENERGY_PER_TOKEN.labels(*labels, "cloud", "false"))
    spent_at_finish = meter.net.charge.settled_j
    assert record["radio_j"] == spent_at_finish and not record["radio_settled"]
    assert record["radio_tail_provisional_j"] == pytest.approx(LTE_TAIL_J)
    assert counter._value.get() == pytest.approx(spent_at_finish) and per_token._sum.get() == 0
    r.advance(100.0)  # the tail ran out: now it is spent
    assert counter._value.get() == pytest.approx(spent_at_finish + LTE_TAIL_J) == pytest.approx(r.non_idle_j)
    assert per_token._sum.get() == pytest.approx(r.non_idle_j / 4)
