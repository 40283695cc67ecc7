import math

import pytest

from harness.bench import link as bench
from proxy.link import MSS, PRESETS


def test_padhye_reference_by_hand():
    p = PRESETS["poor_cellular"]  # RTT 0.2 s, p 0.02, RTO 0.2 + 4 x 0.1 = 0.6 s
    by_hand = MSS / (0.2 * math.sqrt(1.33 * 0.02) + 0.6 * 0.02 * (1 + 32 * 0.02 ** 2) * min(1, 3 * math.sqrt(0.015)))
    assert bench.padhye(p) == pytest.approx(by_hand) and 0.31e6 < by_hand * 8 < 0.32e6


def test_repair_reference_picks_fast_retransmit_or_probe():
    # 4g: three frames (60 ms) fit in the 80 ms RTT; wifi: they do not (20 ms RTT), the probe waits 2 RTT
    assert bench.repair_reference(PRESETS["4g"]) == pytest.approx(0.06 + 0.08 + 0.28 * 0.005 / 0.99)
    assert bench.repair_reference(PRESETS["wifi"]) == pytest.approx(0.04 + 0.22 * 0.001 / 0.998)


def test_streams_meet_their_targets_on_a_lossy_preset():
    p = PRESETS["4g"]
    r = bench.measure_stream(p, 300, 0)
    assert r["in_order"]
    assert r["mean"] == pytest.approx(0.04, rel=0.05) and r["sd"] == pytest.approx(0.03 / math.sqrt(2), rel=0.10)
    lo = bench.measure_stream_loss(p, 300, 0)
    assert lo["repair"] == pytest.approx(bench.repair_reference(p), rel=0.10) and lo["fast"] > 0.9


def test_bulk_upload_converges_to_the_loss_limited_rate():
    p = PRESETS["edge_case"]
    assert bench.measure_bulk(p, 10, 0) == pytest.approx(bench.padhye(p), rel=0.25)
