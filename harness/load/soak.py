"""``python -m harness soak``: many concurrent streaming clients through the proxy for a while.

Three processes: this client, ``harness.load.fast_upstream`` and the proxy (``python -m proxy`` on
a temporary config: mode hybrid, preset local, so every chunk crosses the simulated device
link). ``--clients`` agents each stream one chat completion after another until
``--duration`` is up. Pass/fail:

  errors   none: every response is 200, streams end with usage and [DONE], no SSE error
           event, every stream carries exactly the tokens asked for;
  tokens   the proxy's ``edgemeter_generation_tokens_total`` grew by exactly the tokens
           the clients received (counted in the content they got, not from usage);
  memory   the proxy's RSS (/proc/<pid>/status) after ``--warmup`` seconds and at the end
           differ by less than ``--rss-slack-mib``;
  leaks    in-flight gauge back to 0, the proxy's open file descriptors back to their
           count before the load, and no ERROR line in the proxy's log.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.common.client import OpenAIClient
from harness.common.procs import free_port, run_uvloop, wait_http

HEADERS = {"X-Edgemeter-Mode": "hybrid", "X-Edgemeter-Network": "local"}
LABELS = ('model="fast"', 'backend="upstream"', 'mode="hybrid"', 'network="local"')


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sockets(pid: int, proxy_port: int, upstream_port: int) -> dict[str, int]:
    """The proxy's open TCP connections: from clients, and to the upstream (its keep-alive pool)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = {"clients": 0, "upstream": 0}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[9] not in inodes or f[3] == "0A":  # not the proxy's, or its listening socket
                continue
            local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
            if local == proxy_port:
                out["clients"] += 1
            elif remote == upstream_port:
                out["upstream"] += 1
    return out


def scrape(url: str) -> dict[str, float]:
    """The soak's series from /metrics: generated tokens, requests by status, errors, in flight."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {"tokens": 0.0, "ok": 0.0, "failed": 0.0, "errors": 0.0, "running": 0.0}
    for line in text.splitlines():
        if not all(label in line for label in LABELS):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("edgemeter_generation_tokens_total{"):
            out["tokens"] += value
        elif line.startswith("edgemeter_requests_total{"):
            out["ok" if 'status="200"' in line else "failed"] += value
        elif line.startswith("edgemeter_request_errors_total{"):
            out["errors"] += value
        elif line.startswith("edgemeter_num_requests_running{"):
            out["running"] += value
    return out


class Tally:
    def __init__(self):
        self.requests = self.tokens = self.errors = 0
        self.samples: list[str] = []  # the first few error messages

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(why)


async def client_loop(client: OpenAIClient, tally: Tally, deadline: float, tokens: int) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "soak"}], "max_tokens": tokens,
            "stream": True}
    while time.monotonic() < deadline:
        r = await client.chat(body, headers=HEADERS)
        tally.requests += 1
        received = len(r.content.split())  # fast_upstream sends one whitespace-ended stamp per token
        tally.tokens += received
        if not r.ok:
            tally.fail(r.error or f"HTTP {r.status}")
        elif r.usage is None or r.edgemeter is None:
            tally.fail("stream ended without the usage chunk")
        elif received != tokens or r.completion_tokens != tokens:
            tally.fail(f"{received} tokens received, {r.completion_tokens} in usage, {tokens} asked")


async def drive(base: str, clients: int, duration: float, tokens: int, warmup: float, pid: int) -> dict:
    tally = Tally()
    rss: dict[str, float] = {"start": rss_mib(pid)}
    peak = rss["start"]
    deadline = time.monotonic() + duration
    async with OpenAIClient(base, timeout_s=60.0, max_connections=clients) as client:
        tasks = [asyncio.create_task(client_loop(client, tally, deadline, tokens)) for _ in range(clients)]
        t0 = time.monotonic()
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=0.5)
            now = rss_mib(pid)
            peak = max(peak, now)
            if "after_warmup" not in rss and time.monotonic() - t0 >= warmup:
                rss["after_warmup"] = now
        for t in tasks:
            t.result()  # a crashed client loop is a bug in the soak itself: let it show
    rss.setdefault("after_warmup", rss["start"])
    rss["end"] = rss_mib(pid)
    rss["peak"] = peak
    return {"requests": tally.requests, "tokens_received": tally.tokens, "errors": tally.errors,
            "error_samples": tally.samples, "rss_mib": {k: round(v, 1) for k, v in rss.items()}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds before the RSS baseline is taken")
    p.add_argument("--tokens", type=int, default=64, help="tokens per streamed response")
    p.add_argument("--rss-slack-mib", type=float, default=16.0, help="allowed RSS growth after warm-up")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.clients < 1 or a.duration <= 0 or a.tokens < 1 or not 0 <= a.warmup < a.duration:
        p.error("need clients >= 1, tokens >= 1, duration > 0 and 0 <= warmup < duration")

    up_port, proxy_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="edgemeter-soak-") as tmp:
        cfg = Path(tmp) / "config.json"  # JSON is YAML: no writer needed
        cfg.write_text(json.dumps({
            "server": {"host": "127.0.0.1", "port": proxy_port},
            "defaults": {"mode": "hybrid", "network": "local"},
            "models": {"fast": {"backend": "upstream", "base_url": f"http://127.0.0.1:{up_port}/v1",
                                "model": "fast", "max_connections": max(512, a.clients)}}}))
        log_path = Path(tmp) / "proxy.log"
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "harness.load.fast_upstream", "--port", str(up_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            with open(log_path, "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg),
                                               "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT))
            upstream, proxy = procs
            wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream)
            wait_http(f"http://127.0.0.1:{proxy_port}/readyz", proxy)
            metrics_url = f"http://127.0.0.1:{proxy_port}/metrics"
            before = scrape(metrics_url)
            result = run_uvloop(drive(f"http://127.0.0.1:{proxy_port}/v1", a.clients, a.duration, a.tokens,
                                      a.warmup, proxy.pid))
            time.sleep(0.5)  # let the proxy close the connections the clients just dropped
            socks = sockets(proxy.pid, proxy_port, up_port)
            after = scrape(metrics_url)
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log_errors = [line for line in log_path.read_text(errors="replace").splitlines() if " ERROR " in line]

    delta = {k: after[k] - before[k] for k in ("tokens", "ok", "failed", "errors")}
    rss = result["rss_mib"]
    result.update({
        "clients": a.clients, "duration_s": a.duration, "warmup_s": a.warmup, "tokens_per_request": a.tokens,
        "metrics_generation_tokens": delta["tokens"], "metrics_requests_200": delta["ok"],
        "metrics_requests_failed": delta["failed"], "metrics_errors": delta["errors"],
        "in_flight_after": after["running"], "proxy_connections_after": socks,
        "proxy_log_errors": log_errors[:5],
        "tokens_per_s": round(result["tokens_received"] / a.duration),
    })
    checks = {
        "no errors": result["errors"] == 0 and delta["failed"] == 0 and delta["errors"] == 0 and not log_errors,
        "tokens in /metrics == tokens received": delta["tokens"] == result["tokens_received"]
        and delta["ok"] == result["requests"],
        "memory flat after warm-up": rss["end"] - rss["after_warmup"] < a.rss_slack_mib,
        # the upstream pool may stay warm: idle keep-alive connections, at most one per client
        "nothing left in flight": after["running"] == 0 and socks["clients"] == 0 and socks["upstream"] <= a.clients,
    }
    result["checks"] = checks
    print(f"soak: {a.clients} streaming clients x {a.duration:g} s through the proxy (hybrid, preset local), "
          f"{a.tokens} tokens per response")
    print(f"  requests {result['requests']}, tokens received {result['tokens_received']} "
          f"({result['tokens_per_s']}/s), errors {result['errors']}")
    print(f"  /metrics: generation tokens +{delta['tokens']:.0f}, requests 200 +{delta['ok']:.0f}, "
          f"failed +{delta['failed']:.0f}, in flight after {after['running']:.0f}")
    print(f"  proxy RSS MiB: start {rss['start']}, after {a.warmup:g} s warm-up {rss['after_warmup']}, "
          f"end {rss['end']}, peak {rss['peak']}")
    print(f"  proxy connections after: {socks['clients']} from clients, {socks['upstream']} idle to the upstream")
    for sample in result["error_samples"] + log_errors[:5]:
        print(f"  error: {sample}")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0 if all(checks.values()) else 1
