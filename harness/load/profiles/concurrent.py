"""concurrent: ``--concurrency N`` requests in flight, each slot refilled when its request ends."""
from __future__ import annotations

from harness.load.profiles import Spec, at_once

arrivals = at_once


async def benchmarks(opts, bench) -> list[dict]:
    if not opts.concurrency:
        raise ValueError("profile concurrent needs --concurrency")
    return [await bench(Spec("concurrent", cap=opts.concurrency))]
