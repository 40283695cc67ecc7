"""Processes for commands and tests: a free loopback port, waiting until a URL answers, a real
OpenAI server process, the event loop."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_llama_server(model: str, alias: str, log, n_ctx: int = 2048) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's own OpenAI server (the ``server`` extra of llama-cpp-python) on a GGUF
    file, on a free loopback port: a real upstream process in its own right. Returns the process
    and its ``/v1`` URL once it answers. ``log`` (a file) gets its output, uvicorn's access log
    among it, so ``served_requests`` can count what the server itself saw."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port),
                             "--host", "127.0.0.1", "--interrupt_requests", "False", "--n_ctx", str(n_ctx),
                             "--model_alias", alias], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc, timeout=120)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/v1"


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Ask a child to end (SIGTERM), and kill it if it has not within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def served_requests(log_path, path: str = "/v1/chat/completions") -> int:
    """Requests to ``path`` in a ``start_llama_server`` log (uvicorn logs one access line each)."""
    with open(log_path, errors="replace") as f:
        return sum(f'"POST {path} HTTP' in line for line in f)


def run_uvloop(coro):
    """Run a command's coroutine on uvloop where it is installed (Unix), else on asyncio's loop."""
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


class StartedProxy:
    """``python -m proxy --config CONFIG`` on a free port, for commands that start their own:
    ``startup_s`` is the time to /readyz 200 (its models loaded), ``peak_rss()`` the highest
    resident memory its process reached since the last ``reset_peak()`` (sampled every 50 ms
    in a thread, as memory_profiler samples)."""

    def __init__(self, config: str, log=None, sample_s: float = 0.05):
        import sys
        import threading
        self.port = free_port()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", config, "--port", str(self.port)],
                                     stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(sample_s,), daemon=True)
        self._thread.start()
        try:
            wait_http(f"{self.root}/readyz", self.proc, timeout=300)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _sample(self, period: float) -> None:
        import psutil
        try:
            p = psutil.Process(self.proc.pid)
            while not self._stop.wait(period):
                self._peak = max(self._peak, p.memory_info().rss)
        except psutil.Error:  # the process ended
            pass

    def peak_rss(self) -> int:
        return self._peak

    def reset_peak(self) -> None:
        self._peak = 0

    def close(self) -> None:
        self._stop.set()
        stop(self.proc, 15)
