"""``python -m harness bench overhead``: what the proxy itself costs, against a fast upstream.

Three processes: this client, ``harness.load.fast_upstream`` and the proxy (``python -m proxy``
on a temporary config: mode hybrid, preset local, so the simulated network adds nothing).
Every scenario is measured directly and through the proxy in alternating batches (the
order flips every round) so that machine noise falls on both paths alike:

  small   non-streamed, ``--small-tokens`` tokens as fast as the upstream can
  stream  streamed, ``--stream-tokens`` tokens as fast as the upstream can (throughput)
  paced   streamed, ``--paced-tokens`` tokens ``--paced-itl-ms`` apart (latency under load)

each at every ``--concurrency``. Reported: added TTFT and end-to-end latency (p50, p99 of
proxy minus the same percentile direct); per-chunk latency, arrival at the client minus
the send time the upstream stamped in the chunk, both ways; throughput both ways and
their ratio; the proxy's CPU-seconds per 1,000 streamed tokens (/proc utime + stime) and
chunks per proxy CPU-second (what one core sustains); and measurement fidelity: the
proxy's own TTFT (its ``edgemeter`` record) and ITL (its /metrics histogram) against the
client's.

``--peer nginx`` adds a third path in the same interleaved batches: a local nginx (one
process, ``proxy_buffering off``, keep-alive to the upstream) in front of the same upstream,
what a reverse proxy that only forwards bytes costs on this machine. Without nginx installed
the run goes on without it and says so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.common.client import OpenAIClient
from harness.common.procs import free_port, run_uvloop, stop, wait_http
from harness.common.stats import percentile
from harness.load.generator import Limits, Sample, machine, run
from harness.load.outputs.console import table
from harness.load.profiles import Spec

HEADERS = {"X-Edgemeter-Mode": "hybrid", "X-Edgemeter-Network": "local"}
TICK = os.sysconf("SC_CLK_TCK")
ITL_METRIC = "edgemeter_inter_token_latency_seconds"
# The targets for one proxy process.
TARGET_ADDED_SMALL_P50_MS = 0.3
TARGET_ADDED_CHUNK_P99_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.5
TARGET_FIDELITY_MS = 1.0
# Against the nginx peer in the same run (issue 22): added small-request p50 within this of nginx's.
TARGET_PEER_SMALL_P50_MS = 0.3
# nginx as a byte-forwarding reverse proxy: no response buffering (SSE goes out as it comes),
# HTTP/1.1 keep-alive to the upstream (nginx docs, ngx_http_upstream_module "keepalive").
NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream fast {{ server 127.0.0.1:{up_port}; keepalive {keepalive}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(cmd: list[str], log: Path, ready_url: str, env: dict | None = None, timeout: float = 60.0) -> subprocess.Popen:
    """Start a server process and wait until ``ready_url`` answers 200."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(ready_url, proc, timeout)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise
    return proc


@dataclass
class Scenario:
    name: str
    stream: bool
    tokens: int
    itl_ms: float
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.name} c={self.concurrency}"


@dataclass
class Path_:
    """What one path (direct or proxy) measured over a scenario's batches."""
    samples: list[Sample] = field(default_factory=list)  # counted: sent after any ramp-up
    every: list[Sample] = field(default_factory=list)    # all, as the proxy's histograms see them
    chunk_lat: list[float] = field(default_factory=list)
    seconds: float = 0.0       # from the first counted send to the last counted completion
    wall: float = 0.0          # whole batches, ramp-up included: what the CPU figures cover
    wall_tokens: int = 0
    proxy_cpu: float = 0.0
    upstream_cpu: float = 0.0
    client_cpu: float = 0.0

    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.result.ok]

    def tokens(self) -> int:
        return sum(s.output_tokens for s in self.ok())

    def pct(self, what: str, q: float) -> float | None:
        xs = {"ttft": [s.ttft for s in self.ok() if s.ttft is not None],
              "e2e": [s.result.e2e_s for s in self.ok()], "chunk": self.chunk_lat}[what]
        return percentile(xs, q)


class Bench:
    def __init__(self, args, upstream: subprocess.Popen, proxy: subprocess.Popen, up_url: str, proxy_url: str,
                 nginx: subprocess.Popen | None = None, nginx_url: str | None = None):
        self.a = args
        self.upstream, self.proxy, self.nginx = upstream, proxy, nginx
        self.up_url, self.proxy_url, self.nginx_url = up_url, proxy_url, nginx_url

    async def batch(self, client: OpenAIClient, sc: Scenario, seconds: float, into: Path_ | None,
                    headers: dict, middle: subprocess.Popen | None = None) -> None:
        """``middle``: the process between client and upstream whose CPU the path books (the proxy's
        by default, idle on the direct path)."""
        middle = middle or self.proxy
        """One batch of ``seconds`` of requests. Unpaced scenarios keep ``concurrency`` requests in
        flight. Paced ones arrive at the constant rate that holds ``concurrency`` streams open, so
        starts are staggered as in steady serving; the first stream duration is ramp-up, and only
        requests sent and chunks stamped after it count."""
        ramp = sc.tokens * sc.itl_ms / 1000
        if ramp:
            spec, limits = Spec("constant", sc.concurrency / ramp, sc.concurrency), Limits(None, seconds, 0, ramp)
        else:
            spec, limits = Spec("concurrent", cap=sc.concurrency), Limits(None, seconds)
        lat = into.chunk_lat if into is not None else []
        t0 = time.perf_counter()
        counted_from, counted_to = t0 + ramp, t0 + ramp + seconds

        def on_delta(arrived: float, delta: dict) -> None:
            sent = float(delta["content"])  # the upstream's stamp
            if counted_from <= sent <= counted_to:
                lat.append(arrived - sent)

        def body(i: int) -> dict:
            return {"model": "fast", "messages": [{"role": "user", "content": "How fast is the proxy?"}],
                    "max_tokens": sc.tokens, "stream": sc.stream, "itl_ms": sc.itl_ms}
        cpu0 = (cpu_s(middle.pid), cpu_s(self.upstream.pid), time.process_time())
        samples = await run(client, spec, body, limits, headers=headers, on_delta=on_delta if sc.stream else None)
        cpu1 = (cpu_s(middle.pid), cpu_s(self.upstream.pid), time.process_time())
        if into is not None:
            into.wall += time.perf_counter() - t0
            into.wall_tokens += sum(s.output_tokens for s in samples if s.result.ok)
            counted = [s for s in samples if not s.warmup]
            into.samples += counted
            into.every += samples
            into.seconds += max(s.done for s in counted) - min(s.sent for s in counted)
            into.proxy_cpu += cpu1[0] - cpu0[0]
            into.upstream_cpu += cpu1[1] - cpu0[1]
            into.client_cpu += cpu1[2] - cpu0[2]

    def itl_histogram(self) -> dict[str, float]:
        """The proxy's ITL histogram for the benchmark's labels: cumulative bucket counts by
        upper bound, and ``sum``."""
        with urllib.request.urlopen(self.proxy_url.removesuffix("/v1") + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            if fam.name != ITL_METRIC:
                continue
            for s in fam.samples:
                if s.labels.get("mode") != "hybrid" or s.labels.get("model") != "fast":
                    continue
                key = s.labels["le"] if s.name.endswith("_bucket") else "sum" if s.name.endswith("_sum") else None
                if key is not None:
                    out[key] = out.get(key, 0.0) + s.value
        return out

    async def scenario(self, direct: OpenAIClient, proxied: OpenAIClient, sc: Scenario,
                       peer: OpenAIClient | None = None) -> dict:
        a = self.a
        clients = {"direct": (direct, {}, None), "proxy": (proxied, HEADERS, None)}
        if peer is not None:
            clients["nginx"] = (peer, {}, self.nginx)
        paths = {name: Path_() for name in clients}
        for name, (client, headers, middle) in clients.items():  # warm-up: connections, caches, the interpreter
            await self.batch(client, sc, a.warmup_s, None, headers, middle)
        hist0 = self.itl_histogram()
        names = list(clients)
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # each path leads in turn
            for name in order:
                client, headers, middle = clients[name]
                await self.batch(client, sc, a.batch_s, paths[name], headers, middle)
        hist1 = self.itl_histogram()
        itl_hist = {key: hist1.get(key, 0.0) - hist0.get(key, 0.0) for key in hist1}
        out = summarize(sc, paths["direct"], paths["proxy"], itl_hist)
        if "nginx" in paths:
            out.update(peer_fields(sc, paths["direct"], paths["nginx"], "nginx"))
        return out


def summarize(sc: Scenario, d: Path_, p: Path_, itl_hist: dict[float, float]) -> dict:
    out = {"scenario": sc.name, "stream": sc.stream, "tokens": sc.tokens, "itl_ms": sc.itl_ms,
           "concurrency": sc.concurrency}
    for path_name, path in (("direct", d), ("proxy", p)):
        out[f"{path_name}_requests"] = len(path.ok())
        out[f"{path_name}_failed"] = len(path.samples) - len(path.ok())
        out[f"{path_name}_req_per_s"] = len(path.ok()) / path.seconds if path.seconds else None
        out[f"{path_name}_chunks_per_s"] = path.tokens() / path.seconds if path.seconds and sc.stream else None
        for what in ("ttft", "e2e", "chunk"):
            for q in (50, 99):
                v = path.pct(what, q)
                out[f"{path_name}_{what}_p{q}_ms"] = None if v is None else v * 1000
    for what in ("ttft", "e2e", "chunk"):
        for q in (50, 99):
            dv, pv = out[f"direct_{what}_p{q}_ms"], out[f"proxy_{what}_p{q}_ms"]
            out[f"added_{what}_p{q}_ms"] = None if dv is None or pv is None else pv - dv
    rate = ("chunks_per_s" if sc.stream else "req_per_s")
    out["throughput_ratio"] = (out[f"proxy_{rate}"] / out[f"direct_{rate}"]) if out[f"direct_{rate}"] else None
    out["proxy_cpu_s"] = p.proxy_cpu
    tokens = p.wall_tokens
    out["proxy_cpu_s_per_1k_tokens"] = p.proxy_cpu / tokens * 1000 if tokens else None
    out["chunks_per_proxy_cpu_s"] = tokens / p.proxy_cpu if sc.stream and p.proxy_cpu else None
    out["proxy_cpu_share"] = p.proxy_cpu / p.wall if p.wall else None
    # What the paths would sustain if these processes had the machine to themselves: each
    # process's CPU per unit of work bounds it, one core per process, all cores in total.
    # Robust to other work on a shared machine, which the measured rates are not.
    for path_name, path in (("direct", d), ("proxy", p)):
        out[f"{path_name}_capacity"] = capacity(sc, path, path is p)
    out["capacity_ratio"] = (out["proxy_capacity"] / out["direct_capacity"]
                             if out["proxy_capacity"] and out["direct_capacity"] else None)
    for path_name, path in (("direct", d), ("proxy", p)):
        out[f"{path_name}_upstream_cpu_share"] = path.upstream_cpu / path.wall if path.wall else None
        out[f"{path_name}_client_cpu_share"] = path.client_cpu / path.wall if path.wall else None
    out.update(fidelity(p, itl_hist) if sc.stream else {})
    return out


def capacity(sc: Scenario, path: Path_, proxied: bool) -> float | None:
    """The rate a path would sustain from its processes' CPU per unit of work alone: one core per
    process, all cores in total (``proxied``: the process in the middle counts too)."""
    work = path.wall_tokens if sc.stream else len([s for s in path.every if s.result.ok])
    per = [c / work for c in (path.client_cpu, path.upstream_cpu, path.proxy_cpu if proxied else 0.0)] if work else []
    return min((os.cpu_count() or 1) / sum(per), 1 / max(per)) if per and sum(per) else None


def peer_fields(sc: Scenario, d: Path_, n: Path_, name: str) -> dict:
    """A peer proxy's figures beside the direct path's, under ``name``_ keys, as summarize's."""
    out = {}
    rate = "chunks" if sc.stream else "req"
    for path_name, path in (("direct", d), (name, n)):
        out[f"{path_name}_rate"] = ((path.tokens() if sc.stream else len(path.ok())) / path.seconds
                                    if path.seconds else None)
    out[f"{name}_failed"] = len(n.samples) - len(n.ok())
    out[f"{name}_{rate}_per_s"] = out.pop(f"{name}_rate")
    direct_rate = out.pop("direct_rate")
    out[f"{name}_throughput_ratio"] = out[f"{name}_{rate}_per_s"] / direct_rate if direct_rate else None
    for what in ("ttft", "e2e", "chunk"):
        for q in (50, 99):
            dv, nv = d.pct(what, q), n.pct(what, q)
            out[f"{name}_{what}_p{q}_ms"] = _ms(nv)
            out[f"{name}_added_{what}_p{q}_ms"] = None if dv is None or nv is None else (nv - dv) * 1000
    out[f"chunks_per_{name}_cpu_s"] = n.wall_tokens / n.proxy_cpu if sc.stream and n.proxy_cpu else None
    peer, direct = capacity(sc, n, True), capacity(sc, d, False)
    out[f"{name}_capacity_ratio"] = peer / direct if peer and direct else None
    return out


def fidelity(p: Path_, itl_hist: dict[str, float]) -> dict:
    """The proxy's own measurements against the client's, over every proxied request.

    TTFT: the ``edgemeter`` record's ttft_s against the client's, per request. ITL: per request,
    the record's tpot_s (its mean gap) against the mean of the client's gaps; over all tokens,
    the histogram's count and mean against the client's, and its shape: for each bucket bound
    b holding 5-95 % of the observations, the client's quantile at that share should sit at b.
    The buckets are 2.5-25 ms wide around typical gaps, so they cannot show a 1 ms tail."""
    ok = [s for s in p.every if s.result.ok and s.result.edgemeter]
    ttft_gap = [s.ttft - s.result.edgemeter["ttft_s"] for s in ok
                if s.ttft is not None and s.result.edgemeter.get("ttft_s") is not None]
    tpot_gap = [abs(sum(s.result.itl_s) / len(s.result.itl_s) - s.result.edgemeter["tpot_s"]) for s in ok
                if s.result.itl_s and s.result.edgemeter.get("tpot_s") is not None]
    client_itl = sorted(x for s in ok for x in s.result.itl_s)
    total = itl_hist.get("+Inf", 0.0)
    worst, worst_at = 0.0, None
    for le, count in itl_hist.items():
        if le in ("sum", "+Inf") or not 0.05 <= (count / total if total else 0) <= 0.95:
            continue
        miss = percentile(client_itl, count / total * 100) - float(le)
        if abs(miss) > abs(worst):
            worst, worst_at = miss, float(le)
    return {"ttft_client_minus_proxy_p50_ms": _ms(percentile(ttft_gap, 50)),
            "ttft_client_minus_proxy_p99_ms": _ms(percentile(ttft_gap, 99)),
            "tpot_abs_diff_p50_ms": _ms(percentile(tpot_gap, 50)),
            "tpot_abs_diff_p99_ms": _ms(percentile(tpot_gap, 99)),
            "itl_client_count": len(client_itl), "itl_proxy_count": total,
            "itl_client_mean_ms": _ms(sum(client_itl) / len(client_itl)) if client_itl else None,
            "itl_proxy_mean_ms": _ms(itl_hist.get("sum", 0.0) / total) if total else None,
            "itl_client_p99_ms": _ms(percentile(client_itl, 99)),
            "itl_histogram_max_miss_ms": _ms(worst), "itl_histogram_max_miss_at_ms": _ms(worst_at)}


def _ms(v):
    return None if v is None else v * 1000


def report(rows: list[dict], info: dict) -> str:
    lines = [f"# Proxy overhead ({info['created']})", "",
             f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, {info['machine']['system']}, "
             f"Python {info['machine']['python']}; 1-minute load average {info['loadavg']['before']:.1f} before, "
             f"{info['loadavg']['after']:.1f} after (other work on the machine shows there). "
             f"Command: `{info['command']}`", "",
             "## Latency added by the proxy (proxy minus direct, same percentile; ms)", "",
             table(["scenario", "TTFT p50", "TTFT p99", "E2E p50", "E2E p99", "chunk p50", "chunk p99",
                    "direct E2E p50", "direct chunk p99", "proxy chunk p99"],
                   [[r["scenario"] + f" c={r['concurrency']}", r["added_ttft_p50_ms"], r["added_ttft_p99_ms"],
                     r["added_e2e_p50_ms"], r["added_e2e_p99_ms"], r["added_chunk_p50_ms"], r["added_chunk_p99_ms"],
                     r["direct_e2e_p50_ms"], r["direct_chunk_p99_ms"], r["proxy_chunk_p99_ms"]] for r in rows]),
             "", "## Throughput and proxy CPU", "",
             table(["scenario", "direct req/s", "proxy req/s", "direct chunks/s", "proxy chunks/s", "proxy/direct",
                    "CPU-bound proxy/direct", "proxy CPU-s per 1k tokens", "chunks per proxy CPU-s",
                    "proxy CPU share"],
                   [[r["scenario"] + f" c={r['concurrency']}", r["direct_req_per_s"], r["proxy_req_per_s"],
                     r["direct_chunks_per_s"], r["proxy_chunks_per_s"], r["throughput_ratio"], r["capacity_ratio"],
                     r["proxy_cpu_s_per_1k_tokens"], r["chunks_per_proxy_cpu_s"], r["proxy_cpu_share"]]
                    for r in rows]),
             "", "CPU-bound proxy/direct: the rate each path would sustain from its processes' CPU per unit of "
             "work alone (one core per process, all cores in total), a figure other load on the machine "
             "does not move. CPU share: CPU-seconds per second of the batches."]
    streamed = [r for r in rows if r["stream"]]
    if streamed:
        lines += ["", "## Fidelity: the proxy's own measurements against the client's (ms)", "",
                  table(["scenario", "TTFT client-proxy p50", "TTFT client-proxy p99", "TPOT abs diff p50",
                         "TPOT abs diff p99", "ITL mean client", "ITL mean proxy", "ITL CDF max miss",
                         "at bucket", "ITL count client/proxy"],
                        [[r["scenario"] + f" c={r['concurrency']}", r["ttft_client_minus_proxy_p50_ms"],
                          r["ttft_client_minus_proxy_p99_ms"], r["tpot_abs_diff_p50_ms"], r["tpot_abs_diff_p99_ms"],
                          r["itl_client_mean_ms"], r["itl_proxy_mean_ms"], r["itl_histogram_max_miss_ms"],
                          r["itl_histogram_max_miss_at_ms"], f"{r['itl_client_count']}/{r['itl_proxy_count']:.0f}"]
                         for r in streamed]),
                  "", "TTFT and TPOT per request: the proxy's record against the client's view of the same "
                  "request. ITL CDF max miss: over histogram bounds holding 5-95 % of the gaps, how far the "
                  "client's quantile at the proxy's share sits from the bound."]
    if any("nginx_throughput_ratio" in r for r in rows):
        lines += ["", "## Beside nginx (same run, same upstream; ms)", "",
                  table(["scenario", "Edgemeter added E2E p50", "nginx added E2E p50", "Edgemeter chunk p99",
                         "nginx chunk p99", "Edgemeter/direct", "nginx/direct", "CPU-bound Edgemeter/direct",
                         "CPU-bound nginx/direct", "chunks per Edgemeter CPU-s",
                         "chunks per nginx CPU-s"],
                        [[r["scenario"] + f" c={r['concurrency']}", r["added_e2e_p50_ms"], r["nginx_added_e2e_p50_ms"],
                          r["proxy_chunk_p99_ms"], r["nginx_chunk_p99_ms"], r["throughput_ratio"],
                          r["nginx_throughput_ratio"], r["capacity_ratio"], r["nginx_capacity_ratio"],
                          r["chunks_per_proxy_cpu_s"], r["chunks_per_nginx_cpu_s"]]
                         for r in rows if "nginx_throughput_ratio" in r]),
                  "", "Throughput: streamed chunks per second for streams, requests per second otherwise, "
                  "each over the direct path's in the same batches."]
    elif info.get("peer_missing"):
        lines += ["", f"Peer: {info['peer_missing']}"]
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(rows)]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict]) -> list[str]:
    def find(name, c):
        return next((r for r in rows if r["scenario"] == name and r["concurrency"] == c), None)

    def verdict(ok):
        return "met" if ok else "MISSED"
    out = []
    if r := find("small", 1):
        v = r["added_e2e_p50_ms"]
        out.append(f"added p50 latency, small non-streamed request, c=1: {v:.3f} ms "
                   f"(target <= {TARGET_ADDED_SMALL_P50_MS}): {verdict(v <= TARGET_ADDED_SMALL_P50_MS)}")
    if r := find("paced", 256):
        v = r["added_chunk_p99_ms"]
        out.append(f"added per-chunk latency p99, 256 paced streams: {v:.3f} ms "
                   f"(target <= {TARGET_ADDED_CHUNK_P99_MS}): {verdict(v <= TARGET_ADDED_CHUNK_P99_MS)}")
    if r := find("stream", 64):
        v = r["throughput_ratio"]
        out.append(f"streamed chunk throughput at c=64, proxy/direct: {v:.2f} "
                   f"(target >= {TARGET_THROUGHPUT_RATIO}): {verdict(v >= TARGET_THROUGHPUT_RATIO)}")
    if (r := find("small", 1)) and r.get("nginx_added_e2e_p50_ms") is not None:
        v, peer = r["added_e2e_p50_ms"], r["nginx_added_e2e_p50_ms"]
        out.append(f"added p50, small non-streamed request, c=1: Edgemeter {v:.3f} ms, nginx {peer:.3f} ms, "
                   f"difference {v - peer:.3f} ms (target <= {TARGET_PEER_SMALL_P50_MS}): "
                   f"{verdict(v - peer <= TARGET_PEER_SMALL_P50_MS)}")
    if (r := find("stream", 64)) and r.get("nginx_throughput_ratio") is not None:
        v, peer = r["throughput_ratio"], r["nginx_throughput_ratio"]
        out.append(f"streamed chunk throughput at c=64 over direct: Edgemeter {v:.2f}, nginx {peer:.2f} "
                   f"(target: Edgemeter >= nginx): {verdict(v >= peer)}; CPU-bound, which load on the machine "
                   f"moves less: Edgemeter {r['capacity_ratio']:.2f}, nginx {r['nginx_capacity_ratio']:.2f}")
    if (r := find("paced", 256)) and r.get("nginx_chunk_p99_ms") is not None:
        out.append(f"per-chunk p99, 256 paced streams: Edgemeter {r['proxy_chunk_p99_ms']:.3f} ms, nginx "
                   f"{r['nginx_chunk_p99_ms']:.3f} ms, direct {r['direct_chunk_p99_ms']:.3f} ms (reported)")
    for r in rows:
        if r["scenario"] == "paced":
            t, m = r["ttft_client_minus_proxy_p99_ms"], r["tpot_abs_diff_p99_ms"]
            out.append(f"fidelity c={r['concurrency']}: TTFT client-proxy p99 {t:.3f} ms, TPOT abs diff "
                       f"p99 {m:.3f} ms (target <= {TARGET_FIDELITY_MS}): "
                       f"{verdict(t <= TARGET_FIDELITY_MS and m <= TARGET_FIDELITY_MS)}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness bench overhead", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="small,stream,paced", help="any of small, stream, paced")
    p.add_argument("--concurrency", default="1,64,256", help="comma-separated levels")
    p.add_argument("--rounds", type=int, default=3, help="direct/proxy batch pairs per scenario")
    p.add_argument("--batch-s", type=float, default=2.0, help="seconds of requests per batch")
    p.add_argument("--warmup-s", type=float, default=0.5, help="uncounted batch per path before each scenario")
    p.add_argument("--small-tokens", type=int, default=16)
    p.add_argument("--stream-tokens", type=int, default=256)
    p.add_argument("--paced-tokens", type=int, default=24)
    p.add_argument("--paced-itl-ms", type=float, default=50.0,
                   help="gap between tokens of a paced stream (50 ms: 20 tokens/s, a busy server)")
    p.add_argument("--proxy-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment for the proxy process (repeatable)")
    p.add_argument("--peer", choices=["nginx"], help="also measure this reverse proxy in the same run")
    p.add_argument("--out", help="directory for overhead.json and overhead.md")
    return p


async def _run(a, bench: Bench, scenarios: list[Scenario]) -> list[dict]:
    conns = max(s.concurrency for s in scenarios) + 8
    async with OpenAIClient(bench.up_url, max_connections=conns) as direct, \
            OpenAIClient(bench.proxy_url, max_connections=conns) as proxied, \
            OpenAIClient(bench.nginx_url or bench.up_url, max_connections=conns) as peer:
        rows = []
        for sc in scenarios:
            print(f"-- {sc.label} ...", file=sys.stderr, flush=True)
            rows.append(await bench.scenario(direct, proxied, sc, peer if bench.nginx else None))
        return rows


def start_nginx(tmp: Path, up_port: int, keepalive: int) -> tuple[subprocess.Popen | None, str | None, str | None]:
    """nginx on a free port in front of the upstream, as the current user, its config and temp
    paths in ``tmp``; (process, base URL, None), or (None, None, why not) when not installed."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if binary is None:
        return None, None, "nginx is not installed (Debian: apt-get install nginx); measured without it"
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, up_port=up_port, port=port, keepalive=keepalive))
    url = f"http://127.0.0.1:{port}/v1"
    # -e: the error log before the config is read (the packaged default path needs root)
    proc = start([binary, "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")],
                 tmp / "nginx.log", f"{url}/models")
    return proc, url, None


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    levels = [int(x) for x in a.concurrency.split(",")]
    shapes = {"small": (False, a.small_tokens, 0.0), "stream": (True, a.stream_tokens, 0.0),
              "paced": (True, a.paced_tokens, a.paced_itl_ms)}
    names = [s.strip() for s in a.scenarios.split(",")]
    if unknown := [n for n in names if n not in shapes]:
        print(f"overhead: unknown scenario {unknown[0]!r} (small, stream, paced)", file=sys.stderr)
        return 2
    scenarios = [Scenario(n, *shapes[n], c) for n in names for c in levels]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgemeter-overhead-") as tmp:
        tmp = Path(tmp)
        up_port, proxy_port = free_port(), free_port()
        up_url, proxy_url = f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{proxy_port}/v1"
        cfg = tmp / "proxy.yaml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "server": {"host": "127.0.0.1", "port": proxy_port},
            "defaults": {"mode": "hybrid", "network": "local"},
            "models": {"fast": {"backend": "upstream", "base_url": up_url, "model": "fast",
                                "max_connections": max(levels) * 2}}}))
        env = dict(os.environ)
        env.update(kv.split("=", 1) for kv in a.proxy_env)
        upstream = start([sys.executable, "-m", "harness.load.fast_upstream", "--port", str(up_port)],
                         tmp / "upstream.log", f"{up_url}/models")
        try:
            proxy = start([sys.executable, "-m", "proxy", "--config", str(cfg), "--log-level", "WARNING"],
                          tmp / "proxy.log", f"http://127.0.0.1:{proxy_port}/readyz", env)
            nginx, nginx_url, peer_missing = (start_nginx(tmp, up_port, max(levels) * 2) if a.peer
                                              else (None, None, None))
            if peer_missing:
                print(f"overhead: {peer_missing}", file=sys.stderr)
            try:
                rows = run_uvloop(_run(a, Bench(a, upstream, proxy, up_url, proxy_url, nginx, nginx_url), scenarios))
            finally:
                for proc in (proxy, nginx):
                    if proc is not None:
                        stop(proc)
        finally:
            stop(upstream)
    info = {"created": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
            "loadavg": {"before": load_before[0], "after": os.getloadavg()[0]},
            "command": " ".join(["python -m harness bench overhead", *argv]),
            "cores": os.cpu_count(), "peer_missing": peer_missing}
    text = report(rows, info)
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "overhead.json").write_text(json.dumps({**info, "results": rows}, indent=1))
        (out / "overhead.md").write_text(text)
        print(f"wrote {out / 'overhead.json'} and {out / 'overhead.md'}")
    return 0
