"""The provenance block of run.json and load output: what produced the numbers.

The server's side (weights' hashes, engines, effective config) comes from Edgemeter's
``GET /edgemeter/v1/info``; this side adds the client machine (CPU, cores, memory, GPU),
the OS, Python and key package versions, and the checkout's commit. A server that is not
Edgemeter has no info route: the block says so instead of failing the run.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from proxy.info import checkout, package_version

PACKAGES = ("edgemeter", "aiohttp", "llama_cpp_python", "mlx", "mlx-lm", "gguf", "numpy", "scipy", "psutil",
            "zeus", "openai", "guidellm")


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        r = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        return r.stdout.strip() or None
    return platform.processor() or None


def gpus() -> list[dict]:
    """NVIDIA GPUs and their driver via nvidia-smi; none when it is absent or fails."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[x.strip() for x in line.rsplit(",", 2)] for line in r.stdout.splitlines() if line.strip()]
    return [dict(zip(("name", "memory", "driver"), row)) for row in rows]


def host() -> dict:
    import psutil
    return {"cpu_model": cpu_model(), "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False), "memory_bytes": psutil.virtual_memory().total,
            "gpus": gpus(), "os": platform.platform(), "python": sys.version.split()[0],
            "python_implementation": platform.python_implementation()}


def software() -> dict:
    return {"checkout": checkout(), "packages": {p: v for p in PACKAGES if (v := package_version(p))}}


async def server_info(client) -> dict:
    """The server's ``/edgemeter/v1/info`` through an ``OpenAIClient`` (its key and headers)."""
    url = f"{client._server_root()}/edgemeter/v1/info"
    try:
        async with client.session.get(url, headers=client.headers) as r:
            if r.status != 200:
                return {"unavailable": f"GET {url} answered {r.status} (not an Edgemeter proxy?)"}
            return await r.json()
    except Exception as e:  # noqa: BLE001 - provenance must never fail the run it describes
        return {"unavailable": f"GET {url}: {type(e).__name__}: {e}"}


async def collect(client, **extra) -> dict:
    """The whole block: ``server`` (the proxy's info), ``host``, ``software`` and whatever the
    caller adds (the agent's prompts, the datasets' checksums)."""
    return {"server": await server_info(client), "host": host(), "software": software(), **extra}


def header(block: dict) -> list[str]:
    """A few Markdown lines for a report: commit, host, and each model's engine and weights."""
    sw, hw, srv = block.get("software", {}), block.get("host", {}), block.get("server", {})
    c = sw.get("checkout", {})
    commit = (c.get("commit") or "unknown")[:12] + (" (dirty)" if c.get("dirty") else "")
    lines = [f"- Edgemeter {c.get('version') or '?'}, commit {commit}",
             f"- host: {hw.get('cpu_model') or '?'}, {hw.get('logical_cores')} cores, "
             f"{(hw.get('memory_bytes') or 0) / 2**30:.1f} GiB, {hw.get('os')}, Python {hw.get('python')}"
             + "".join(f", GPU {g.get('name')}" for g in hw.get("gpus") or [])]
    if "unavailable" in srv:
        lines.append(f"- server: {srv['unavailable']}")
    for name, m in (srv.get("models") or {}).items():
        weights = f"{m['format']} {m.get('quantization') or ''} sha256 {m['sha256'][:12]}" if m.get("sha256") \
            else m.get("base_url", "")
        lines.append(f"- model {name}: {m.get('engine')} {m.get('engine_version') or ''}, {weights}".rstrip())
    cfg = srv.get("config") or {}
    if cfg:
        lines.append(f"- proxy: seed {cfg.get('seed')}, energy {cfg.get('energy', {}).get('method')} "
                     f"({(cfg.get('energy', {}).get('device_profile') or {}).get('name')})")
    return lines
