"""Device profiles and the device-energy ledger every mode, session, replay and report uses.

One formula for a task in every deployment mode:

    device J = baseline W x task wall time        (screen on, the device awake: it waits too)
             + on-device generation               (local mode: the model runs on the device)
             + the agent's tools on the device     (local and hybrid; in cloud mode they run there)
             + radio                               (settled, see proxy.radio)

Power figures are split so the parts add: ``generating_w`` and ``cpu_core_w`` are what
the device draws *above* its baseline while it generates or runs a busy CPU core.

Each number below carries its source; where none was found it is an ASSUMPTION with its
reasoning. ``host`` is this machine: its generation energy comes from proxy.energy's
meter (RAPL, NVML or the CPU-time estimate), it has no battery and no screen, so no baseline.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    label: str
    baseline_w: float        # whole device awake, screen on, nothing running
    generating_w: float      # above baseline while the model generates
    cpu_core_w: float        # above baseline per busy CPU core (the agent's tools)
    prefill_tok_s: float     # for replay: a ~1-4B 4-bit model class, batch 1
    decode_tok_s: float
    throttle_after_s: float  # sustained generation before the SoC throttles (inf: never)
    throttled: float         # fraction of the token rate left once throttled


# Sources (cited per figure below):
#  [EDGE]  the edge-deployment chapter's phone figures: sustained LLM inference draws 3-5 W,
#          SoCs throttle after 30-60 s of sustained compute.
#  [PLACE] the agent-placement study (MobiHoc 2026, "pocket-agent"): MLX on an M2 Max, batch 1,
#          102 generated tok/s and 157 prefill tok/s.
#  [IPH]   D. Majima, "iPhone on-device LLM: the GPU wins the sprint, the Neural Engine wins the
#          marathon" (dev.to, 2026): iPhone 17 Pro, Gemma 4 E2B 4-bit on MLX/GPU, 48 tok/s burst,
#          -25 % after 35 s, 38 % left after 10 min; same model on an M4 Max: 24.7 W package (MLX).
#  [ORIN]  "Tiny LLM Benchmark: Jetson Orin Nano Super 8GB" (smolhub.com, 2026): llama.cpp CUDA,
#          25 W power mode, SmolLM2-135M 165.2 tok/s; 7/15/25 W/MAXN modes.
#  [CC]    CodeCarbon's constant mode (codecarbon/external/hardware.py): 50 % of TDP, 85 W TDP
#          when the CPU is unknown (proxy.energy uses the same for the host).
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile(
        "phone", "flagship phone (iPhone 16/17 Pro class)",
        # ASSUMPTION: a phone awake with its screen on at moderate brightness and the radio
        # idle draws about 1 W (display 0.3-0.6 W plus an awake SoC); no published
        # whole-device figure for current flagships was found.
        baseline_w=1.0,
        generating_w=3.0,            # [EDGE] 3-5 W sustained inference: 4 W middle, minus the 1 W baseline
        cpu_core_w=1.5,              # ASSUMPTION: one big core at full clock, about a third of the 3-5 W budget
        prefill_tok_s=480.0,         # ASSUMPTION: prefill is compute-bound, ~10x the memory-bound decode rate
        decode_tok_s=48.0,           # [IPH] burst decode, 4-bit ~2B-active model on the GPU
        throttle_after_s=35.0,       # [IPH] -25 % after 35 s; [EDGE] 30-60 s
        throttled=0.5),              # [IPH] 38 % after 10 min, "loses nearly half" early: 0.5 for agent-length runs
    DeviceProfile(
        "laptop", "Apple M-series laptop (M2/M4 Max class)",
        baseline_w=6.0,              # ASSUMPTION: a MacBook Pro awake with the screen on, idle (display ~3-5 W + SoC)
        generating_w=24.7,           # [IPH] M4 Max package power under MLX/GPU decode
        cpu_core_w=5.0,              # ASSUMPTION: one performance core at full clock on an M-series Max chip
        prefill_tok_s=157.0,         # [PLACE] MLX, M2 Max, batch 1
        decode_tok_s=102.0,          # [PLACE]
        throttle_after_s=float("inf"), throttled=1.0),  # ASSUMPTION: fan-cooled, sustained without throttling
    DeviceProfile(
        "jetson", "NVIDIA Jetson Orin Nano Super 8GB, 25 W mode",
        baseline_w=5.0,              # ASSUMPTION: carrier board + module idle, a fifth of the 25 W mode's cap
        generating_w=20.0,           # [ORIN] the 25 W mode's cap minus the baseline: an upper bound
        cpu_core_w=1.5,              # ASSUMPTION: one Cortex-A78AE core at full clock
        prefill_tok_s=1650.0,        # ASSUMPTION: ~10x decode, as for the phone
        decode_tok_s=165.2,          # [ORIN] SmolLM2-135M, llama.cpp CUDA, 25 W
        throttle_after_s=float("inf"), throttled=1.0),  # [ORIN] power modes cap it; the 25 W mode sustains
    DeviceProfile(
        "host", "this machine (measured or CPU-time estimate; no battery, no screen)",
        baseline_w=0.0,              # a server is not a device a user holds: no baseline to charge
        generating_w=0.0,            # unused: proxy.energy meters the host's generation
        cpu_core_w=0.0,              # unused: proxy.energy's watts_per_core ([CC] 50 % of TDP over the cores)
        prefill_tok_s=0.0, decode_tok_s=0.0,  # replay keeps the recorded timing on the host
        throttle_after_s=float("inf"), throttled=1.0),
)}

# the modes whose tools run on the device; an auto session deciding per call picks local or hybrid
ON_DEVICE_TOOLS = ("local", "hybrid", "auto")


def generation_j(profile: DeviceProfile, seconds: float) -> float:
    """On-device generation energy above baseline for ``seconds`` of generation."""
    return profile.generating_w * seconds


def device_energy(profile: DeviceProfile, mode: str, wall_s: float, compute_j: float, tool_cpu_s: float,
                  radio_j: float, cpu_core_w: float | None = None) -> dict:
    """One task's device energy by component, and their sum (``device_j``)."""
    tools = tool_cpu_s * (profile.cpu_core_w if cpu_core_w is None else cpu_core_w) if mode in ON_DEVICE_TOOLS else 0.0
    parts = {"baseline_j": profile.baseline_w * wall_s, "compute_j": compute_j, "tools_j": tools,
             "radio_j": radio_j}
    return {**parts, "device_j": sum(parts.values()), "device_profile": profile.name}


@dataclass(frozen=True)
class CloudCost:
    """What a call costs on the cloud side, configured per model (``energy.cloud.MODEL``):
    the provider's price and the datacenter's energy. Never added to the device's energy:
    reports show them as separate axes."""
    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0
    dc_j_per_output_token: float = 0.0  # e.g. the ML.ENERGY leaderboard's energy per output token

    def of(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {"cloud_usd": (prompt_tokens * self.usd_per_mtok_in + completion_tokens * self.usd_per_mtok_out) / 1e6,
                "cloud_j": completion_tokens * self.dc_j_per_output_token}


CLOUD_MODES = ("hybrid", "cloud")  # the modes whose model runs in the cloud
