"""Compute energy: Zeus's own RAPL reader on a fake powercap tree (known uJ counters), the
shared meter split among concurrent generations, the device-profile and estimate fallbacks."""
import os

import pytest

from proxy.energy import TDP_SHARE, TDP_W, ComputeEnergy, SensorUnavailable, ZeusMeter


def domain(root, name, label, uj, max_uj=10**12):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


@pytest.fixture
def powercap(tmp_path):
    """Two packages, the first with its DRAM domain, as /sys/class/powercap/intel-rapl lays them out."""
    root = tmp_path / "intel-rapl"
    pkg0 = domain(root, "intel-rapl:0", "package-0", 1_000_000)
    dram0 = domain(pkg0, "intel-rapl:0:0", "dram", 500_000)
    pkg1 = domain(root, "intel-rapl:1", "package-1", 2_000_000)
    return root, pkg0, dram0, pkg1


def add_uj(d, uj):
    f = d / "energy_uj"
    f.write_text(f"{int(f.read_text()) + uj}\n")


def test_zeus_reads_packages_and_dram_through_its_rapl_reader(powercap):
    root, pkg0, dram0, pkg1 = powercap
    meter = ZeusMeter(root)
    assert meter.sources[:2] == ["rapl:0", "rapl:1"]
    assert meter.read_j() == pytest.approx((1_000_000 + 500_000 + 2_000_000) / 1e6)
    add_uj(pkg0, 250_000), add_uj(dram0, 50_000), add_uj(pkg1, 700_000)
    assert meter.read_j() == pytest.approx((3_500_000 + 1_000_000) / 1e6)


def test_shared_meter_is_split_among_concurrent_generations_and_adds_up(powercap):
    root, pkg0, _, _ = powercap
    e = ComputeEnergy("zeus", ZeusMeter(root), sample_s=None)
    e.sample(t=10.0)
    a = e.begin(10.0)
    add_uj(pkg0, 2_000_000)                    # 2 J in 10..11 s: only a is open
    e.sample(t=11.0)
    b = e.begin(11.5)
    add_uj(pkg0, 3_000_000)                    # 3 J in 11..12 s: a open 1 s, b 0.5 s
    e.sample(t=12.0)
    assert e.end(a, cpu_s=None, t=12.0) == (pytest.approx(2.0 + 2.0), "zeus")
    add_uj(pkg0, 1_000_000)                    # 1 J in 12..13 s: b alone
    assert e.end(b, cpu_s=None, t=13.0) == (pytest.approx(1.0 + 1.0), "zeus")
    assert a.joules + b.joules == pytest.approx(6.0)  # the meter's whole count, no request charged all of it
    add_uj(pkg0, 5_000_000)                    # nothing open: nobody's
    e.sample(t=14.0)
    assert a.joules + b.joules == pytest.approx(6.0)


def test_config_picks_zeus_when_it_finds_a_meter(powercap):
    root = powercap[0]
    e = ComputeEnergy.from_config({"method": "zeus", "rapl_root": str(root), "sample_s": 5})
    try:
        assert e.method == "zeus"
        assert ComputeEnergy.from_config({"rapl_root": str(root), "sample_s": 5}).method == "zeus"  # auto
    finally:
        e.close()


def test_no_meter_falls_back_or_fails_when_forced(tmp_path):
    with pytest.raises(SensorUnavailable, match="no RAPL package"):
        ZeusMeter(tmp_path)
    e = ComputeEnergy.from_config({"rapl_root": str(tmp_path), "watts_per_core": 10.0})
    assert e.method == "estimate"
    w = e.begin(1.0)
    assert e.end(w, cpu_s=2.0, t=5.0) == (20.0, "estimate")
    with pytest.raises(ValueError, match=r"energy\.method: zeus is unavailable: Zeus found no meter"):
        ComputeEnergy.from_config({"method": "zeus", "rapl_root": str(tmp_path)})


def test_device_profile_falls_back_to_its_power_whatever_the_meter(powercap):
    e = ComputeEnergy.from_config({"rapl_root": str(powercap[0]), "device": "jetson"})
    assert e.method == "profile"
    assert e.end(e.begin(2.0), cpu_s=50.0, t=4.5) == (pytest.approx(2.5 * e.profile.generating_w), "profile:jetson")


def test_estimate_default_is_half_tdp_over_cores():
    e = ComputeEnergy.from_config({"method": "estimate"})
    assert e.method == "estimate"
    assert e.watts_per_core == pytest.approx(TDP_SHARE * TDP_W / os.cpu_count())
    assert e.end(e.begin(0.0), 3.0, 10.0) == (pytest.approx(3.0 * e.watts_per_core), "estimate")


def test_estimate_configurable():
    assert ComputeEnergy.from_config({"method": "estimate", "tdp_w": 28, "cores": 8}).watts_per_core == 1.75
    assert ComputeEnergy.from_config({"method": "estimate", "watts_per_core": 3}).watts_per_core == 3


@pytest.mark.parametrize("cfg,msg", [
    ({"methd": "zeus"}, r"energy\.methd: unknown key"),
    ({"method": "rapl"}, r"energy\.method: must be auto, zeus or estimate"),
    ({"tdp_w": -5}, r"energy\.tdp_w: must be a positive number"),
    ({"cores": "8"}, r"energy\.cores: must be a positive number"),
])
def test_config_errors(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        ComputeEnergy.from_config(cfg)


def test_request_is_charged_from_when_it_got_its_slot(powercap):
    """The meter opens the window at Scheduled: a queued request pays nothing for its wait."""
    from proxy.meter import RequestMeter
    root, pkg0, _, _ = powercap
    e = ComputeEnergy("zeus", ZeusMeter(root), sample_s=None)
    e.sample(t=0.0)
    m = RequestMeter("m", "llama.cpp", "local", "local", "dev", None, t_received=0.0, bytes_up=0,
                     placement={"placement": "device", "placement_emulated": False})
    m.energy = e
    add_uj(pkg0, 1_000_000)  # 0..1 s: queued
    e.sample(t=1.0)
    m.scheduled(1.0)
    for t in (1.5, 2.0):     # generating: 1 J per half second
        add_uj(pkg0, 1_000_000)
        e.sample(t=t)
    m.close_energy(2.0)
    assert (m.compute_j, m.compute_method) == (pytest.approx(2.0), "zeus")
    m.finish(200)
