"""GET /edgemeter/v1/info: what a reader needs to reproduce or refute a number this proxy measured.

Per model: the weights' sha256, format and quantization, the engine and its version,
backend and placement, and its capacity (the batch it decodes together). For the server:
the effective config (every network preset with every parameter, the radio profiles they
use, the energy method and device profile, the seed; secrets redacted) and Edgemeter's
version and git commit. Hashing a GGUF takes
seconds, so each model's file is hashed once, in a thread, when the proxy starts.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import subprocess
from pathlib import Path

import aiohttp

from backends.sources import resolve_model

REDACTED = "<redacted>"
SECRET_KEYS = ("api_key", "headers")
ROOT = Path(__file__).resolve().parents[1]  # the checkout, when run from one


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def checkout(root: Path = ROOT) -> dict:
    """Edgemeter's version, and its git commit and dirty flag when it runs from a checkout.
    Dirty means a tracked file differs from the commit (run outputs are untracked)."""
    out = {"version": package_version("edgemeter"), "commit": None, "dirty": None}
    if not (root / ".git").exists():  # a worktree's .git is a file, a clone's a folder
        return out
    try:
        git = ["git", "-C", str(root)]
        out["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True, timeout=10).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, check=True, timeout=10).stdout
        out["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # no git binary: the version alone
    return out


def gguf_quantization(path: Path) -> dict:
    """``general.file_type`` from the GGUF header, by name (llama.cpp's LLAMA_FTYPE, e.g. MOSTLY_Q4_1)."""
    from gguf import GGUFReader, LlamaFileType
    field = GGUFReader(path).get_field("general.file_type")
    if field is None:
        return {"quantization": None, "file_type": None}
    value = int(field.contents())
    try:
        name = LlamaFileType(value).name
    except ValueError:
        name = None
    return {"quantization": name, "file_type": value}


def _mlx_weights(folder: Path) -> dict:
    """An MLX folder has no single file: hash the sorted (name, sha256) list of its files, and read
    the quantization mlx-lm wrote into config.json."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    q = config.get("quantization")
    return {"path": str(folder), "format": "mlx", "files": files,
            "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
            "quantization": f"{q['bits']}-bit, group {q['group_size']}" if isinstance(q, dict) and "bits" in q
            else None}


def weights(backend) -> dict:
    """The model's weights on disk (blocking: hashes them). Upstream models have none here."""
    if backend.kind == "llama.cpp":
        path = resolve_model(backend.source)
        out = {"path": str(path), "source": backend.source, "format": "gguf", "sha256": sha256_file(path),
               "size_bytes": path.stat().st_size}
        out.update(gguf_quantization(path))
        return out
    if backend.kind == "mlx":
        return _mlx_weights(backend.path)
    return {}


def engine(backend) -> dict:
    if backend.kind == "llama.cpp":
        return {"engine": "llama-cpp-python", "engine_version": package_version("llama_cpp_python")}
    if backend.kind == "mlx":
        return {"engine": "mlx-lm", "engine_version": package_version("mlx-lm"), "mlx_version": package_version("mlx")}
    return {"engine": backend.kind, "engine_version": None}


async def upstream_version(backend) -> dict:
    """An OpenAI-compatible upstream's own /version (vLLM, SGLang and Edgemeter answer it), if it answers."""
    root = backend.base_url.removesuffix("/v1")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s, \
                s.get(f"{root}/version", headers=backend.headers) as r:
            if r.status == 200:
                body = await r.json(content_type=None)
                return {"engine_version": body.get("version") if isinstance(body, dict) else str(body)}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        pass
    return {}


def redact(settings: dict) -> dict:
    return {k: (REDACTED if k in SECRET_KEYS and v else v) for k, v in settings.items()}


def _plain(obj):
    """Dataclasses as dicts, infinities (an idle state lasts forever) as the string "inf": strict JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    return obj


def effective_config(config, presets: dict, energy) -> dict:
    from proxy.radio import RADIO_PROFILES
    server = dataclasses.asdict(config.server)
    if server.get("api_key"):
        server["api_key"] = REDACTED
    return {
        "source": config.source,
        "server": server, "seed": config.server.seed,
        "defaults": dataclasses.asdict(config.defaults),
        "networks": _plain(presets),
        "radio_profiles": _plain({p.radio: RADIO_PROFILES[p.radio] for p in presets.values()}),
        "energy": {"config": dict(config.energy), "method": energy.method, "device_profile": _plain(energy.profile),
                   "watts_per_core": energy.watts_per_core, "tool_core_w": energy.tool_core_w,
                   "cloud": _plain(energy.cloud)},
    }


class Info:
    """The info document, with each model's weights hashed once (``start``) and upstream
    versions asked once they answer."""

    def __init__(self, config, engines: list, presets: dict, energy):
        """``engines``: (model name, proxy.router.Served) for each configured backend once."""
        self.config, self.presets, self.energy = config, presets, energy
        self.served = {s.key: (name, s) for name, s in engines}  # "smollm2", or "smollm2.cloud" when split
        self.hashing: dict[str, asyncio.Task] = {}
        self.versions: dict[str, dict] = {}
        self.software = checkout()

    def start(self) -> None:
        self.hashing = {key: asyncio.ensure_future(asyncio.to_thread(weights, s.backend))
                        for key, (_, s) in self.served.items()}

    async def model(self, key: str) -> dict:
        name, served = self.served[key]
        backend, block = served.backend, self.config.models.get(name, {})
        settings = block if key == name else block.get(served.placement, {})
        out = {"model": name, "backend": backend.kind,
               "placement": "device and cloud (stand-in)" if served.emulated else served.placement,
               "host": served.host, "settings": redact(settings), **engine(backend),
               # requests the engine decodes together (vLLM's max_num_seqs, llama-server's total_slots);
               # None when it does not say: what a bulk client should keep in flight
               "capacity": backend.capacity()}
        if backend.kind == "upstream":
            out["base_url"] = backend.base_url
            out["upstream_model"] = backend.upstream_model
            if key not in self.versions and (v := await upstream_version(backend)):
                self.versions[key] = v
            out.update(self.versions.get(key, {}))
        try:
            out.update(await asyncio.shield(self.hashing[key]) if key in self.hashing else {})
        except (OSError, ValueError) as e:  # a missing file: the model failed to load too; say why
            out["weights_error"] = str(e)
        return out

    async def document(self) -> dict:
        return {"edgemeter": self.software,
                "models": {key: await self.model(key) for key in self.served},
                "config": effective_config(self.config, self.presets, self.energy)}
