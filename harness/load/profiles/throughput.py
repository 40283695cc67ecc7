"""throughput: as many requests in flight as ``--max-concurrency`` allows: saturation."""
from __future__ import annotations

from harness.load.profiles import Spec, at_once

DEFAULT_CAP = 256
arrivals = at_once


def cap(opts) -> int:
    return opts.max_concurrency or DEFAULT_CAP


async def benchmarks(opts, bench) -> list[dict]:
    return [await bench(Spec("throughput", cap=cap(opts)))]
