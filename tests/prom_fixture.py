"""A real Prometheus server for tests: found (or installed from Debian) once, run on loopback.

``.ci/setup.sh`` installs Debian's ``prometheus``; on a machine without it the tests that
need it try ``apt-get install`` (root only), and when that fails too they skip saying why
(fail under ``CI``: ``tests.conftest.require``).
"""
from __future__ import annotations

import asyncio
import ctypes
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import yaml

from harness.common.procs import stop
from tests.conftest import free_port, require

_found: list[str | None] = []


def prometheus_binary() -> str:
    """Path of the prometheus binary; the test cannot run when it is neither installed nor installable."""
    __tracebackhide__ = True
    if not _found:
        _found.append(shutil.which("prometheus") or _apt_install())
    require(_found[0], "prometheus (apt-get could not install it)",
            "install the Debian package 'prometheus' (.ci/setup.sh does)")
    return _found[0]


def _apt_install() -> str | None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]
    for steps in ([install], [["apt-get", "update", "-qq"], install]):  # refresh the lists only if needed
        try:
            for cmd in steps:
                subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        except subprocess.TimeoutExpired:
            return None
        if shutil.which("prometheus"):
            break
    return shutil.which("prometheus")


def _parse_time(s: str) -> float:
    """Prometheus' RFC 3339 timestamps carry nanoseconds; Python parses at most microseconds."""
    head, frac, zone = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s).groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}{zone}").timestamp()


# Resolved before any fork: the child only calls it, taking no loader locks another thread may hold.
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the test process dies, even by a crash that
    skips ``__aexit__`` (Linux PR_SET_PDEATHSIG)."""
    _prctl(1, signal.SIGTERM)


class Prometheus:
    """``async with Prometheus(target, tmp_path) as prom``: scrapes ``target`` (host:port) every second."""

    def __init__(self, target: str, workdir: Path, scrape_interval: str = "1s"):
        self.target = target
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Prometheus":
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": self.scrape_interval},
            "scrape_configs": [{"job_name": "edgemeter", "static_configs": [{"targets": [self.target]}]}]}))
        self.log = self.workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
            preexec_fn=_die_with_parent if _prctl else None)
        self.session = aiohttp.ClientSession()
        try:
            await self._wait_ready()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)

    async def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                async with self.session.get(self.url + "/-/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError("prometheus did not become ready")

    async def api(self, path: str, **params) -> dict:
        """GET /api/v1/<path>; returns ``data``, raises with Prometheus' own error text."""
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as r:
            body = await r.json()
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[float]:
        """Instant query now; the sample values (a scalar result is one value)."""
        data = await self.api("query", query=expr, time=f"{time.time():.3f}")
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(s["value"][1]) for s in data["result"]]

    async def wait_scrapes(self, after: float, n: int = 2, timeout: float = 30.0) -> None:
        """Wait until the target has been scraped ``n`` times, each starting after wall time ``after``."""
        seen: set[str] = set()
        last_error = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for target in (await self.api("targets"))["activeTargets"]:  # none until discovery has run
                if target["health"] == "down":  # one slow scrape on a loaded machine; the next may succeed
                    last_error = target["lastError"]
                if target["health"] == "up" and _parse_time(target["lastScrape"]) > after:
                    seen.add(target["lastScrape"])
            if len(seen) >= n:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"prometheus scraped {self.target} {len(seen)} of {n} times after the burst"
                           + (f"; last error: {last_error}" if last_error else ""))


class PromQLError(Exception):
    pass


def finite(values: list[float]) -> bool:
    return any(math.isfinite(v) for v in values)
