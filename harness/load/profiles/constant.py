"""constant: ``--rate R`` requests/s, evenly spaced (open loop)."""
from __future__ import annotations

import itertools
from typing import Iterator

from harness.load.profiles import Spec, need_rate


def arrivals(rate: float | None, **_) -> Iterator[float]:
    rate = need_rate("constant", rate)
    return (i / rate for i in itertools.count())


async def benchmarks(opts, bench) -> list[dict]:
    if not opts.rate:
        raise ValueError("profile constant needs --rate")
    return [await bench(Spec("constant", opts.rate, opts.max_concurrency, opts.burstiness))]
