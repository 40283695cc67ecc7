import os

import pytest

from proxy.energy import TDP_SHARE, TDP_W, ComputeEnergy, Rapl, SensorUnavailable, busy_cpu_s


def domain(root, name, label, uj, max_uj=10**12):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


@pytest.fixture
def powercap(tmp_path):
    root = tmp_path / "powercap"
    pkg0 = domain(root, "intel-rapl:0", "package-0", 100)
    domain(root, "intel-rapl:0:0", "core", 50)       # sub-domain: inside package-0, not added again
    pkg1 = domain(root, "intel-rapl:1", "package-1", 200)
    domain(root, "intel-rapl:2", "psys", 900)        # platform domain would double count
    return root, pkg0, pkg1


def set_uj(d, uj):
    (d / "energy_uj").write_text(f"{uj}\n")


def stat_file(tmp_path, busy_ticks, idle_ticks=0):
    p = tmp_path / "stat"
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    p.write_text(f"cpu  {busy_ticks} 0 0 {idle_ticks} 7 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")
    return p


def test_rapl_sums_packages_only(powercap):
    root, pkg0, pkg1 = powercap
    rapl = Rapl(root)
    assert rapl.read_j() == 0.0
    set_uj(pkg0, 1_100)
    set_uj(pkg1, 2_200)
    assert rapl.read_j() == pytest.approx((1_000 + 2_000) / 1e6)


def test_rapl_handles_wrap_around(tmp_path):
    pkg0 = domain(tmp_path, "intel-rapl:0", "package-0", 100, max_uj=1_000_000)
    rapl = Rapl(tmp_path)
    set_uj(pkg0, 999_900)
    assert rapl.read_j() == pytest.approx(999_800 / 1e6)
    set_uj(pkg0, 400)  # wrapped at max_energy_range_uj = 1_000_000
    assert rapl.read_j() == pytest.approx((999_800 + 100 + 400) / 1e6)


def test_rapl_missing_is_unavailable(tmp_path):
    with pytest.raises(SensorUnavailable, match="no RAPL package"):
        Rapl(tmp_path)


def test_busy_cpu_excludes_idle_and_iowait(tmp_path):
    busy = busy_cpu_s(stat_file(tmp_path, busy_ticks=250, idle_ticks=9000))
    assert busy == pytest.approx(250 / os.sysconf("SC_CLK_TCK"))


def test_measured_energy_is_interpolated_and_shared_by_cpu_time(powercap, tmp_path):
    root, pkg0, pkg1 = powercap
    tck = os.sysconf("SC_CLK_TCK")
    stat = stat_file(tmp_path, 0)
    e = ComputeEnergy("rapl", Rapl(root), sample_s=None, stat_path=stat)
    e.sample(t=10.0)
    set_uj(pkg0, 100 + 4_000_000 // 4)   # packages: 1 J + 1 J over 10..12 s
    set_uj(pkg1, 200 + 1_000_000)
    stat_file(tmp_path, 4 * tck)         # machine was busy 4 CPU-s in that time
    e.sample(t=12.0)
    j, method = e.joules(cpu_s=1.0, t_start=10.5, t_end=11.5)  # half the interval, 1 of its 2 busy CPU-s
    assert method == "rapl"
    assert j == pytest.approx(1.0 * 0.5)


def test_measured_falls_back_to_estimate_outside_history(powercap, tmp_path):
    root, _, _ = powercap
    e = ComputeEnergy("rapl", Rapl(root), watts_per_core=10.0, sample_s=None, stat_path=stat_file(tmp_path, 0))
    e.sample(t=100.0)
    e.sample(t=101.0)
    assert e.joules(cpu_s=2.0, t_start=95.0, t_end=101.0) == (20.0, "estimate")
    assert e.joules(cpu_s=2.0, t_start=100.0, t_end=101.0)[1] == "rapl"


def test_estimate_default_is_half_tdp_over_cores():
    e = ComputeEnergy.from_config({"method": "estimate"})
    assert e.method == "estimate"
    assert e.watts_per_core == pytest.approx(TDP_SHARE * TDP_W / os.cpu_count())
    assert e.joules(3.0, 0.0, 10.0) == (pytest.approx(3.0 * e.watts_per_core), "estimate")


def test_estimate_configurable():
    assert ComputeEnergy.from_config({"method": "estimate", "tdp_w": 28, "cores": 8}).watts_per_core == 1.75
    assert ComputeEnergy.from_config({"method": "estimate", "watts_per_core": 3}).watts_per_core == 3


def test_auto_uses_rapl_when_readable(powercap, tmp_path):
    root, _, _ = powercap
    e = ComputeEnergy.from_config({"rapl_root": str(root), "sample_s": 5})
    try:
        assert e.method == "rapl"
    finally:
        e.close()


def test_auto_falls_back_to_estimate(tmp_path):
    e = ComputeEnergy.from_config({"rapl_root": str(tmp_path)})
    assert e.method in ("nvml", "estimate")  # nvml only where an NVIDIA GPU is present
    e.close()


@pytest.mark.parametrize("cfg,msg", [
    ({"methd": "rapl"}, r"energy\.methd: unknown key"),
    ({"method": "joulemeter"}, r"energy\.method: must be"),
    ({"tdp_w": -5}, r"energy\.tdp_w: must be a positive number"),
    ({"cores": "8"}, r"energy\.cores: must be a positive number"),
])
def test_config_errors(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        ComputeEnergy.from_config(cfg)


def test_forced_sensor_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"energy\.method: rapl is unavailable"):
        ComputeEnergy.from_config({"method": "rapl", "rapl_root": str(tmp_path)})
