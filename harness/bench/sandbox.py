"""Per-call cost of the sandbox: ``python -m harness bench sandbox [--calls N] [--unsafe-no-sandbox]``.

Prints the median and p90 latency of a trivial job on a warm worker (calls spaced so a
replacement is ready, as between an agent's model turns), the rate of back-to-back calls
(bounded by starting replacements), and, for comparison, starting a fresh interpreter per
call with no isolation at all.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from harness.agents.sandbox import Sandbox
from harness.common.stats import percentile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness bench sandbox")
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--unsafe-no-sandbox", action="store_true", help="the same pool with no isolation, for comparison")
    args = p.parse_args(argv)
    with Sandbox(args.pool, unsafe=args.unsafe_no_sandbox) as sb:
        print(f"isolation: {', '.join(sb.isolation)}")
        warm = []
        for _ in range(args.calls):
            time.sleep(0.2)  # let the replacement worker finish starting
            t = time.perf_counter()
            r = sb.run("pass")
            warm.append(time.perf_counter() - t)
            assert r.ok, r
        t = time.perf_counter()
        for _ in range(args.calls):
            sb.run("pass")
        b2b = (time.perf_counter() - t) / args.calls
    fresh = []
    for _ in range(args.calls):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        fresh.append(time.perf_counter() - t)
    print(f"warm worker, per call:     p50 {percentile(warm, 50) * 1e3:.1f} ms, p90 {percentile(warm, 90) * 1e3:.1f} ms")
    print(f"back-to-back, per call:    {b2b * 1e3:.1f} ms (pool of {args.pool})")
    print(f"fresh interpreter per call: p50 {percentile(fresh, 50) * 1e3:.1f} ms (no isolation)")
    return 0
