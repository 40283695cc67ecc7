"""Compute energy of in-process backends (llama.cpp, MLX): measured by Zeus where a meter
exists, otherwise a device profile's power or an estimate, each saying which it is.

Methods (``energy.method``):
  zeus      Zeus (ML.ENERGY, ``zeus`` on PyPI) reads every meter it finds: RAPL packages and
            DRAM (Linux powercap, Intel and AMD Zen; root-only on recent kernels), NVIDIA and AMD
            GPUs (NVML, amdsmi), Apple Silicon (``zeus-apple-silicon``) and Jetson. One
            library keeps the wrap-around, units and vendor quirks we used to hand-code.
  estimate  CPU-seconds x watts per core. Default: CodeCarbon's constant mode, 50% of TDP
            (S41, S48), with its 85 W fallback TDP (codecarbon/external/hardware.py,
            POWER_CONSTANT) spread over the machine's cores: all cores busy = 50% TDP.
  auto      zeus if it finds a meter, else estimate (the path these CPU-only CI VMs take:
            Zeus finds no readable RAPL here).
With ``energy.device`` other than ``host``, generation is charged at that profile's power
instead (method ``profile:NAME``): a meter on this host says nothing about a phone.

A meter reads the whole machine, so concurrent generations share it: a background sampler
reads it every ``sample_s`` and splits each interval's energy among the generations open
in it, in proportion to the time each was open. The parts add up to the measured total over
the time any generation ran (that includes the host's idle draw and other processes in
that time: a meter cannot tell them apart); no request is charged the whole GPU.
"""
from __future__ import annotations

import os
import threading
import time
from glob import glob
from pathlib import Path

from proxy.profiles import CLOUD_MODES, PROFILES, CloudCost, generation_j

TDP_W = 85.0            # CodeCarbon's TDP when the CPU model is unknown (POWER_CONSTANT)
TDP_SHARE = 0.5         # CodeCarbon constant mode: average power = 50% of TDP


class SensorUnavailable(Exception):
    """No meter is readable here."""


class ZeusMeter:
    """Every meter Zeus finds, as one monotonic joule count. ``rapl_root`` points Zeus's RAPL
    reader at another powercap tree (a container's, or a test's fake sysfs)."""

    def __init__(self, rapl_root: str | Path | None = None):
        try:
            from zeus.device.cpu.rapl import CONTAINER_RAPL_DIR, RAPL_DIR, RAPLCPU
            from zeus.device.exception import ZeusBaseError
            from zeus.device.gpu import get_gpus
            from zeus.device.soc import get_soc
        except ImportError as e:
            raise SensorUnavailable(f"zeus is not installed ({e}); pip install 'edgemeter[zeus]'") from None
        self._reads, self.sources, missing = [], [], []
        root = str(rapl_root) if rapl_root else RAPL_DIR if os.path.exists(RAPL_DIR) else CONTAINER_RAPL_DIR
        packages = sorted(int(d.rsplit(":", 1)[1]) for d in glob(f"{root}/intel-rapl:*") if d.count(":") == 1)
        try:
            for i in packages:
                self._add(f"rapl:{i}", RAPLCPU(i, root).get_total_energy_consumption,
                          lambda m: m.cpu_mj + (m.dram_mj or 0.0))
        except (ZeusBaseError, OSError) as e:
            self._reads.clear(), self.sources.clear()
            missing.append(f"RAPL under {root}: {e}")
        if not packages:
            missing.append(f"no RAPL package under {root}")
        try:
            gpus = get_gpus()
            for i in range(len(gpus)):
                self._add(f"gpu:{i}", lambda i=i: gpus.get_total_energy_consumption(i), float)
        except (ZeusBaseError, OSError) as e:
            missing.append(f"GPU: {e}")
        try:
            soc = get_soc()
            self._add("soc", soc.get_total_energy_consumption, _soc_mj)
        except (ZeusBaseError, OSError, ImportError) as e:
            missing.append(f"SoC: {e}")
        if not self._reads:
            raise SensorUnavailable("Zeus found no meter: " + "; ".join(missing))

    def _add(self, name, read, to_mj) -> None:
        to_mj(read())  # read once now: an unreadable meter fails here, not in the sampler
        self._reads.append(lambda: to_mj(read()))
        self.sources.append(name)

    def read_j(self) -> float:
        return sum(r() for r in self._reads) / 1e3


def _soc_mj(m) -> float:
    """A whole-SoC figure from Zeus's per-subsystem one (Apple: cpu_total_mj, gpu_mj, dram_mj, ane_mj)."""
    parts = ("cpu_total_mj", "gpu_mj", "dram_mj", "ane_mj", "total_mj")
    return float(sum(getattr(m, k) or 0.0 for k in parts if hasattr(m, k)))


class Window:
    """One generation's share of the meter, accumulated while it is open."""
    __slots__ = ("t0", "joules")

    def __init__(self, t0: float):
        self.t0 = t0
        self.joules = 0.0


_KEYS = {"method", "rapl_root", "tdp_w", "cores", "watts_per_core", "sample_s", "device", "cloud"}


def cloud_costs(cfg) -> dict[str, CloudCost]:
    """``energy.cloud``: {model: {usd_per_mtok_in, usd_per_mtok_out, dc_j_per_output_token}}."""
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError("energy.cloud: must be a mapping of model name to its cloud cost")
    out = {}
    known = set(CloudCost.__dataclass_fields__)
    for model, spec in cfg.items():
        if not isinstance(spec, dict) or set(spec) - known:
            raise ValueError(f"energy.cloud.{model}: must be a mapping with keys {', '.join(sorted(known))}")
        for k, v in spec.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"energy.cloud.{model}.{k}: must be a non-negative number, got {v!r}")
        out[model] = CloudCost(**spec)
    return out


class ComputeEnergy:
    """``begin(t)`` when a generation gets its slot, ``end(window, cpu_s, t) -> (J, method)``
    when it is over (times on ``time.perf_counter()``, ``cpu_s`` the generation's CPU-seconds).

    ``method`` is "zeus" (its share of the meter), "profile:NAME" (``energy.device``'s
    generating power over the generation time: the host's speed, the device's power; only
    replay rescales time) or "estimate" (CPU-seconds x watts per core).
    """

    def __init__(self, method: str = "estimate", sensor: ZeusMeter | None = None, *,
                 watts_per_core: float | None = None, sample_s: float | None = 0.1, device: str = "host"):
        self.method = method
        self.profile = PROFILES[device]
        self.cloud: dict[str, CloudCost] = {}
        self.watts_per_core = watts_per_core if watts_per_core is not None else \
            TDP_SHARE * TDP_W / (os.cpu_count() or 1)
        self._sensor = sensor
        self._lock = threading.Lock()
        self._open: list[Window] = []
        self._last: tuple[float, float] | None = None  # (t, joules) of the last reading
        self._stop = threading.Event()
        if sensor is not None and sample_s:  # without a period the caller samples (tests, on a virtual clock)
            self.sample()
            threading.Thread(target=self._run, args=(sample_s,), name="energy-sampler", daemon=True).start()

    @classmethod
    def from_config(cls, cfg: dict | None) -> ComputeEnergy:
        """Build from config.yaml's ``energy:`` section (all keys optional):
        method: auto|zeus|estimate (auto: zeus if it finds a meter, else estimate),
        rapl_root (for Zeus's RAPL reader), tdp_w, cores, watts_per_core (overrides
        tdp_w/cores), sample_s, device: a proxy.profiles name (default host)."""
        cfg = dict(cfg or {})
        unknown = set(cfg) - _KEYS
        if unknown:
            raise ValueError(f"energy.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
        for key in ("tdp_w", "cores", "watts_per_core", "sample_s"):
            v = cfg.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ValueError(f"energy.{key}: must be a positive number, got {v!r}")
        method = cfg.get("method", "auto")
        if method not in ("auto", "zeus", "estimate"):
            raise ValueError(f"energy.method: must be auto, zeus or estimate, got {method!r}")
        wpc = cfg.get("watts_per_core")
        if wpc is None:
            wpc = TDP_SHARE * cfg.get("tdp_w", TDP_W) / cfg.get("cores", os.cpu_count() or 1)
        device = cfg.get("device", "host")
        if device not in PROFILES:
            raise ValueError(f"energy.device: unknown profile {device!r} (known: {', '.join(PROFILES)})")
        opts = {"watts_per_core": wpc, "sample_s": cfg.get("sample_s", 0.1), "device": device}
        cloud = cloud_costs(cfg.get("cloud"))
        if device != "host":  # a modelled device: its profile's power, no meter to read
            e = cls("profile", **opts)
        elif method == "estimate":
            e = cls("estimate", **opts)
        else:
            try:
                e = cls("zeus", ZeusMeter(cfg.get("rapl_root")), **opts)
            except SensorUnavailable as err:
                if method == "zeus":
                    raise ValueError(f"energy.method: zeus is unavailable: {err}") from None
                e = cls("estimate", **opts)
        e.cloud = cloud
        return e

    def cloud_cost(self, model: str, mode: str, prompt_tokens: int, completion_tokens: int) -> dict:
        """The call's cloud-side price and datacenter energy (0 when the model runs on the device
        or has no ``energy.cloud`` entry)."""
        cost = self.cloud.get(model) if mode in CLOUD_MODES else None
        return (cost or CloudCost()).of(prompt_tokens, completion_tokens)

    def estimate_j(self, cpu_s: float) -> float:
        return cpu_s * self.watts_per_core

    @property
    def tool_core_w(self) -> float:
        """Power of one busy core running the agent's tools on the device."""
        return self.watts_per_core if self.profile.name == "host" else self.profile.cpu_core_w

    def begin(self, t: float) -> Window:
        w = Window(t)
        if self._sensor is not None:
            with self._lock:
                self._open.append(w)
        return w

    def end(self, w: Window, cpu_s: float | None, t: float) -> tuple[float, str]:
        if self.profile.name != "host":
            return generation_j(self.profile, max(0.0, t - w.t0)), f"profile:{self.profile.name}"
        if self._sensor is None:
            return self.estimate_j(cpu_s or 0.0), "estimate"
        self.sample(t)
        with self._lock:
            self._open.remove(w)
        return w.joules, self.method

    def sample(self, t: float | None = None) -> None:
        """Read the meter at t (default now) and share what it counted since the last reading
        among the open windows, by the time each was open in that interval."""
        with self._lock:
            t = time.perf_counter() if t is None else t
            if self._last is not None and t <= self._last[0]:
                return
            joules = self._sensor.read_j()
            if self._last is not None:
                t0, j0 = self._last
                spans = [(w, t - max(w.t0, t0)) for w in self._open if w.t0 < t]
                total = sum(d for _, d in spans)
                for w, d in spans:
                    w.joules += (joules - j0) * d / total
            self._last = (t, joules)

    def close(self) -> None:
        """Stop the sampler thread."""
        self._stop.set()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed read (OSError, a Zeus error) costs one sample, not the sampler
                continue
