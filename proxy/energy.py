"""Compute energy of in-process backends (llama.cpp, MLX): measured where a sensor exists,
otherwise an estimate that says it is one.

Sensors (facts §7):
  rapl      Linux powercap ``intel-rapl:N/energy_uj`` (package domains; also AMD Zen),
            cumulative uJ that wraps at ``max_energy_range_uj`` (S41-S43). Recent kernels
            make it root-only (side-channel mitigation); then we fall back.
  nvml      NVIDIA ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load, Volta
            and newer; refreshed every 20-100 ms, S44-S45), when pynvml is importable.
  estimate  CPU-seconds x watts per core. Default: CodeCarbon's constant mode, 50% of TDP
            (S41, S48), with its 85 W fallback TDP (codecarbon/external/hardware.py,
            POWER_CONSTANT) spread over the machine's cores: all cores busy = 50% TDP.
macOS ``powermetrics`` has CPU/GPU/ANE power but needs sudo (S46, S47), so it is not
used; on Apple silicon, run it beside the proxy if measured numbers are needed.

Measured energy is read from a background sampler (every ``sample_s``), so a request
can be charged after it ends from its wall interval. The package draws for everything
on the machine, so a request gets the package energy over its interval times its share
of the machine's busy CPU time (``/proc/stat``) in that interval: concurrent requests
and other processes split it, and the idle baseline is split the same way. GPU energy
is charged whole over the interval (one generation at a time per GPU is assumed).
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from pathlib import Path

from proxy.profiles import PROFILES, generation_j

TDP_W = 85.0            # CodeCarbon's TDP when the CPU model is unknown (POWER_CONSTANT)
TDP_SHARE = 0.5         # CodeCarbon constant mode: average power = 50% of TDP
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class SensorUnavailable(Exception):
    """The sensor is missing or unreadable here."""


class Rapl:
    """Sum of the package domains under a powercap root, as a monotonic joule count."""

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        root = Path(root)
        try:
            domains = [d for d in sorted(root.glob("intel-rapl:*"))
                       if d.name.count(":") == 1 and (d / "name").read_text().startswith("package")]
            if not domains:
                raise SensorUnavailable(f"no RAPL package domain under {root}")
            self._files = [d / "energy_uj" for d in domains]
            self._range = [int((d / "max_energy_range_uj").read_text()) for d in domains]
            self._last = [int(f.read_text()) for f in self._files]
        except PermissionError as e:
            raise SensorUnavailable(f"{e.filename} is not readable (root only on recent kernels)") from None
        except (OSError, ValueError) as e:
            raise SensorUnavailable(f"RAPL under {root}: {e}") from None
        self._uj = 0

    def read_j(self) -> float:
        for i, f in enumerate(self._files):
            raw = int(f.read_text())
            step = raw - self._last[i]
            if step < 0:  # wrapped past max_energy_range_uj; needs a read per wrap (~40 min at 100 W)
                step += self._range[i]
            self._uj += step
            self._last[i] = raw
        return self._uj / 1e6


class Nvml:
    """Total energy of all NVIDIA GPUs, in joules."""

    def __init__(self):
        try:
            import pynvml
        except ImportError:
            raise SensorUnavailable("pynvml is not installed") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self._handles:
                raise SensorUnavailable("no NVIDIA GPU")
            self.read_j()
        except pynvml.NVMLError as e:
            raise SensorUnavailable(f"NVML: {e}") from None

    def read_j(self) -> float:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1e3


def busy_cpu_s(path: str | Path = "/proc/stat") -> float | None:
    """Machine-wide busy CPU-seconds so far (all but idle and iowait), or None off Linux."""
    try:
        with open(path) as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK


_KEYS = {"method", "rapl_root", "tdp_w", "cores", "watts_per_core", "sample_s", "device"}


class ComputeEnergy:
    """``joules(cpu_s, t_start, t_end) -> (J, method)`` for one request.

    ``cpu_s`` is the request's CPU-seconds (all threads of its generation); the interval
    is on ``time.perf_counter()``. ``method`` is "rapl", "nvml" or "estimate"; a request
    older than the sample history (or with no share data) falls back to the estimate
    and says so. With a device profile other than ``host`` (``energy.device``), generation
    is charged at the profile's power over the host's generation time instead, method
    ``profile:NAME``: the host's speed, the device's power (only replay rescales time).
    """

    def __init__(self, method: str = "estimate", sensor: Rapl | Nvml | None = None, *,
                 watts_per_core: float | None = None, sample_s: float | None = 0.1,
                 keep_s: float = 600.0, stat_path: str | Path = "/proc/stat", device: str = "host"):
        self.method = method
        self.profile = PROFILES[device]
        self.watts_per_core = watts_per_core if watts_per_core is not None else \
            TDP_SHARE * TDP_W / (os.cpu_count() or 1)
        self._sensor = sensor
        self._stat = stat_path
        self._lock = threading.Lock()
        self._t: list[float] = []
        self._e: list[float] = []
        self._busy: list[float] = []
        self._keep = max(2, int(keep_s / (sample_s or 0.1)))
        self._stop = threading.Event()
        if sensor is not None and sample_s:
            self.sample()
            threading.Thread(target=self._run, args=(sample_s,), name="energy-sampler", daemon=True).start()

    @classmethod
    def from_config(cls, cfg: dict | None) -> ComputeEnergy:
        """Build from config.yaml's ``energy:`` section (all keys optional):
        method: auto|rapl|nvml|estimate (auto tries rapl, then nvml, then estimates),
        rapl_root, tdp_w, cores, watts_per_core (overrides tdp_w/cores), sample_s,
        device: a proxy.profiles name (default host)."""
        cfg = dict(cfg or {})
        unknown = set(cfg) - _KEYS
        if unknown:
            raise ValueError(f"energy.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
        for key in ("tdp_w", "cores", "watts_per_core", "sample_s"):
            v = cfg.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ValueError(f"energy.{key}: must be a positive number, got {v!r}")
        method = cfg.get("method", "auto")
        if method not in ("auto", "rapl", "nvml", "estimate"):
            raise ValueError(f"energy.method: must be auto, rapl, nvml or estimate, got {method!r}")
        wpc = cfg.get("watts_per_core")
        if wpc is None:
            wpc = TDP_SHARE * cfg.get("tdp_w", TDP_W) / cfg.get("cores", os.cpu_count() or 1)
        device = cfg.get("device", "host")
        if device not in PROFILES:
            raise ValueError(f"energy.device: unknown profile {device!r} (known: {', '.join(PROFILES)})")
        opts = {"watts_per_core": wpc, "sample_s": cfg.get("sample_s", 0.1), "device": device}
        if device != "host":  # a modelled device: its profile's power, no sensor to sample
            return cls("profile", **opts)
        makers = {"rapl": lambda: Rapl(cfg.get("rapl_root", "/sys/class/powercap")), "nvml": Nvml}
        for name in (("rapl", "nvml") if method == "auto" else (method,) if method != "estimate" else ()):
            try:
                return cls(name, makers[name](), **opts)
            except SensorUnavailable as e:
                if method != "auto":
                    raise ValueError(f"energy.method: {name} is unavailable: {e}") from None
        return cls("estimate", **opts)

    def estimate_j(self, cpu_s: float) -> float:
        return cpu_s * self.watts_per_core

    @property
    def tool_core_w(self) -> float:
        """Power of one busy core running the agent's tools on the device."""
        return self.watts_per_core if self.profile.name == "host" else self.profile.cpu_core_w

    def sample(self, t: float | None = None) -> None:
        """Record a sensor reading at t (default now)."""
        if self._sensor is None:
            return
        with self._lock:
            busy = busy_cpu_s(self._stat) if self.method == "rapl" else 0.0
            if busy is None:
                return  # without the machine's CPU time a package reading cannot be shared out
            self._t.append(time.perf_counter() if t is None else t)
            self._e.append(self._sensor.read_j())
            self._busy.append(busy)
            if len(self._t) > 2 * self._keep:
                del self._t[:self._keep], self._e[:self._keep], self._busy[:self._keep]

    def joules(self, cpu_s: float, t_start: float, t_end: float) -> tuple[float, str]:
        if self.profile.name != "host":
            return generation_j(self.profile, max(0.0, t_end - t_start)), f"profile:{self.profile.name}"
        if self._sensor is None:
            return self.estimate_j(cpu_s), "estimate"
        if not self._t or t_end > self._t[-1]:
            self.sample()
        with self._lock:
            if len(self._t) < 2 or t_start < self._t[0] or t_end > self._t[-1] or t_end <= t_start:
                return self.estimate_j(cpu_s), "estimate"
            energy = self._at(self._e, t_end) - self._at(self._e, t_start)
            if self.method == "rapl":
                busy = self._at(self._busy, t_end) - self._at(self._busy, t_start)
                energy *= min(1.0, cpu_s / busy) if busy > 0 else 1.0
        return max(0.0, energy), self.method

    def close(self) -> None:
        """Stop the sampler thread."""
        self._stop.set()

    def _at(self, series: list, t: float) -> float:
        """Linear interpolation of a sampled counter at t (within the samples)."""
        i = bisect.bisect_left(self._t, t)
        if self._t[i] == t or i == 0:
            return series[i]
        t0, t1 = self._t[i - 1], self._t[i]
        return series[i - 1] + (series[i] - series[i - 1]) * (t - t0) / (t1 - t0)

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed read (OSError, NVMLError) costs one sample, not the sampler
                continue
