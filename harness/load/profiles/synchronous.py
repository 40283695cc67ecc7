"""synchronous: one request at a time."""
from __future__ import annotations

from harness.load.profiles import Spec, at_once

arrivals = at_once


async def benchmarks(opts, bench) -> list[dict]:
    return [await bench(Spec("synchronous"))]
