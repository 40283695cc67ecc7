"""Engines behind the proxy. ``create`` builds one from a model's config block.

Each backend module is imported only when a configured model uses it, so the proxy
runs without llama-cpp-python or mlx installed when no model needs them.
"""
from __future__ import annotations

import importlib

from backends.base import Backend, BackendError, GenRequest

KINDS = {
    "upstream": "backends.upstream:UpstreamBackend",
    "llama.cpp": "backends.llama:LlamaBackend",
    "mlx": "backends.mlx:MLXBackend",
}


def create(name: str, settings: dict) -> Backend:
    """Build the backend for model ``name``. ``settings`` is its config block without ``backend``.
    Raises ValueError("key: what is wrong") for bad settings."""
    kind = settings.get("backend")
    if kind not in KINDS:
        raise ValueError(f"backend: must be one of {', '.join(KINDS)}, got {kind!r}")
    module, cls = KINDS[kind].split(":")
    rest = {k: v for k, v in settings.items() if k != "backend"}
    return getattr(importlib.import_module(module), cls)(name, rest)


__all__ = ["Backend", "BackendError", "GenRequest", "KINDS", "create"]
