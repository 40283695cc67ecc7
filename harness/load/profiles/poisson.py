"""poisson: ``--rate R`` requests/s with exponential gaps; ``--burstiness`` != 1 draws gamma
gaps of the same mean instead, as vllm bench serve does (below 1: burstier)."""
from __future__ import annotations

import itertools
import random
from typing import Iterator

from harness.load.profiles import Spec, need_rate


def arrivals(rate: float | None, *, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    rate = need_rate("poisson", rate)
    rng = random.Random(seed)
    return itertools.accumulate(rng.gammavariate(burstiness, 1 / (rate * burstiness)) for _ in itertools.count())


async def benchmarks(opts, bench) -> list[dict]:
    if not opts.rate:
        raise ValueError("profile poisson needs --rate")
    return [await bench(Spec("poisson", opts.rate, opts.max_concurrency, opts.burstiness))]
