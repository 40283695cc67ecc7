"""config.yaml: load, fill defaults, and check it, failing at start with the key that is wrong.

The model blocks are checked by the backends themselves (``backends.create``), the
network presets by ``proxy.link``; this module checks the rest and prefixes every
message with the full key path, e.g. ``models.smollm2.n_ctx: must be an integer``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy import policy

MODES = ("local", "hybrid", "cloud")
AUTO = "auto"  # a policy picks one of MODES per request or session (proxy.policy)
PLACEMENTS = ("device", "cloud")
# Where each mode needs the model: on the device (local) or in the cloud (hybrid, cloud).
MODE_PLACEMENT = {"local": "device", "hybrid": "cloud", "cloud": "cloud"}


class ConfigError(ValueError):
    pass


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None       # clients must send "Authorization: Bearer <key>"
    metrics_auth: bool = False       # also require the key on /metrics
    max_body_bytes: int = 4 * 1024 * 1024
    request_log: str | None = None   # JSONL, one line per request
    record_traces: bool = False      # each record carries its call's timeline, for python -m harness replay
    passthrough: bool = True         # relay an upstream's SSE bytes when nothing rewrites or paces them
    seed: int = 0                    # seeds the simulated network
    max_devices: int = 1024          # distinct X-Edgemeter-Device links kept
    session_idle_s: float = 600.0    # cloud-mode sessions closed after this much silence
    max_stream_buffer: int = 4096    # chunks held for a slow reader before the backend pauses
    body_timeout_s: float = 30.0     # a request body not fully received by then gets 408


@dataclass
class Defaults:
    mode: str = "local"
    network: str = "local"
    device: str = "default"


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    defaults: Defaults = field(default_factory=Defaults)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    energy: dict[str, Any] = field(default_factory=dict)
    auto: Any = None  # a proxy.policy.Policy from the ``auto:`` section, or None
    source: str = "<dict>"


def _resolve_secret(value: Any, key: str) -> str | None:
    """``env:NAME`` reads the secret from the environment so it never sits in the file."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string")
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ConfigError(f"{key}: environment variable {name} is not set")
        return os.environ[name]
    return value


def _fill(obj: Any, data: dict, prefix: str) -> None:
    """Copy ``data`` into dataclass ``obj``, checking each key exists and has the default's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: must be a mapping")
    for key, value in data.items():
        path = f"{prefix}.{key}"
        if not hasattr(obj, key):
            known = ", ".join(obj.__dataclass_fields__)
            raise ConfigError(f"{path}: unknown key (known: {known})")
        current = getattr(obj, key)
        expected = type(current) if current is not None else str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if value is not None and (not isinstance(value, expected) or isinstance(value, bool) != (expected is bool)):
            raise ConfigError(f"{path}: must be {expected.__name__}, got {value!r}")
        setattr(obj, key, value)


def from_dict(data: dict | None, source: str = "<dict>") -> Config:
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    known = {"server", "defaults", "models", "networks", "energy", "auto"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{key}: unknown top-level key (known: {', '.join(sorted(known))})")
    cfg = Config(source=source)
    _fill(cfg.server, data.get("server") or {}, "server")
    _fill(cfg.defaults, data.get("defaults") or {}, "defaults")
    cfg.server.api_key = _resolve_secret(cfg.server.api_key, "server.api_key")
    if not 0 < cfg.server.port < 65536:
        raise ConfigError(f"server.port: must be 1..65535, got {cfg.server.port}")
    if cfg.server.max_body_bytes <= 0:
        raise ConfigError("server.max_body_bytes: must be positive")
    if cfg.server.body_timeout_s <= 0:
        raise ConfigError("server.body_timeout_s: must be positive")
    if cfg.defaults.mode not in MODES + (AUTO,):
        raise ConfigError(f"defaults.mode: must be one of {', '.join(MODES + (AUTO,))}, got {cfg.defaults.mode!r}")
    try:  # a policy table's path is relative to the config file
        cfg.auto = policy.from_config(data.get("auto"), Path(source).parent if source != "<dict>" else ".")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.defaults.mode == AUTO and cfg.auto is None:
        raise ConfigError("defaults.mode: auto needs an auto: section (a policy; see docs/auto.md)")

    models = data.get("models") or {}
    if not isinstance(models, dict) or not models:
        raise ConfigError("models: at least one model is required (name -> backend settings)")
    for name, block in models.items():
        cfg.models[str(name)] = _model_block(block, f"models.{name}")
    for key in ("networks", "energy"):
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping")
        setattr(cfg, key, value)
    return cfg


def _backend_block(block: Any, key: str) -> dict:
    if not isinstance(block, dict) or "backend" not in block:
        raise ConfigError(f"{key}: must be a mapping with a 'backend' key")
    block = dict(block)
    if "api_key" in block:
        block["api_key"] = _resolve_secret(block["api_key"], f"{key}.api_key")
    return block


def _model_block(block: Any, key: str) -> dict:
    """A model is either one plain backend block (``backend: ...``, optionally ``placement:``)
    or a block per placement (``device:`` and/or ``cloud:``, each a backend block)."""
    if isinstance(block, dict) and "backend" not in block and set(block) & set(PLACEMENTS):
        for k in block:
            if k not in PLACEMENTS:
                raise ConfigError(f"{key}.{k}: unknown key beside placement blocks (known: {', '.join(PLACEMENTS)})")
        out = {p: _backend_block(block[p], f"{key}.{p}") for p in block}
        for p, b in out.items():
            if "placement" in b:
                raise ConfigError(f"{key}.{p}.placement: the block's key ({p}) already says where it runs")
        return out
    block = _backend_block(block, key)
    if "placement" in block and block["placement"] not in PLACEMENTS:
        raise ConfigError(f"{key}.placement: must be one of {', '.join(PLACEMENTS)}, got {block['placement']!r}")
    return block


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_dict(data, str(path))
