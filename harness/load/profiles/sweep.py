"""sweep: synchronous, then throughput, then ``--sweep-size`` rates evenly in between, sent
with ``--arrival``'s schedule (constant or poisson)."""
from __future__ import annotations

import sys

from harness.load.profiles import Spec, throughput


async def benchmarks(opts, bench) -> list[dict]:
    results = [await bench(Spec("synchronous")), await bench(Spec("throughput", cap=throughput.cap(opts)))]
    lo, hi = (results[0]["request_throughput"] or 0), (results[1]["request_throughput"] or 0)
    if hi <= lo:
        print("sweep: throughput did not exceed synchronous; no rates in between", file=sys.stderr)
        return results
    step = (hi - lo) / (opts.sweep_size + 1)
    for k in range(1, opts.sweep_size + 1):
        results.append(await bench(Spec(opts.arrival, lo + k * step, opts.max_concurrency, opts.burstiness)))
    return results
