"""Summary statistics for repeated measurements: mean, std, percentiles, bootstrap CIs, and
paired comparisons of two configurations on the same tasks (McNemar's exact test, a paired
bootstrap of the difference)."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def std(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (n-1)."""
    if len(xs) < 2:
        return 0.0 if xs else None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def bootstrap_ci(xs: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean."""
    if not xs:
        return None
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2 * 100
    return percentile(means, tail), percentile(means, 100 - tail)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired pass/fail outcomes. ``b``: pairs only the first
    configuration passed, ``c``: only the second. Under "no difference" each discordant pair is a
    fair coin, so b ~ Binomial(b + c, 1/2) and p = 2 P(X <= min(b, c)), capped at 1
    (McNemar 1947; the exact form as in Fagerland, Lydersen & Laake 2013, BMC Med Res Methodol 13:91)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers; one division at the end


def paired_bootstrap_diff(a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                          seed: int = 0) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) over paired items (a[i] and b[i] measured on the same task), with a
    percentile bootstrap CI that resamples the pairs, so task difficulty cancels out."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    if not a:
        return None
    d = [x - y for x, y in zip(a, b)]
    ci = bootstrap_ci(d, level=level, resamples=resamples, seed=seed)
    return mean(d), ci[0], ci[1]


def cluster_bootstrap_ci(clusters: Sequence[Sequence[float]], *, level: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the pooled mean, resampling whole clusters.

    An agent benchmark's attempts are not independent: the samples and repeats of one task
    share its difficulty, so resampling attempts understates the spread (a task solved 3 of 3
    times counts as 3 independent successes). Resampling tasks, each with all its attempts,
    is the cluster bootstrap (Davison & Hinkley 1997, "Bootstrap Methods and their
    Application", §3.8; Field & Welsh 2007, JRSS B 69(3), "Bootstrapping clustered data").
    With one attempt per cluster it draws exactly what ``bootstrap_ci`` draws."""
    clusters = [list(c) for c in clusters if len(c)]
    if not clusters:
        return None
    rng = random.Random(seed)
    sums, sizes = [sum(c) for c in clusters], [len(c) for c in clusters]
    idx = range(len(clusters))
    stats = []
    for _ in range(resamples):
        pick = rng.choices(idx, k=len(clusters))
        stats.append(sum(sums[i] for i in pick) / sum(sizes[i] for i in pick))
    stats.sort()
    tail = (1 - level) / 2 * 100
    return percentile(stats, tail), percentile(stats, 100 - tail)


def pass_at_k_ci(counts: Sequence[tuple[int, int]], k: int, estimator, *, level: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap CI of mean pass@k over tasks: each task's (n samples, c passed) gives one
    ``estimator(n, c, k)`` value (harness.agents.passk.pass_at_k), and tasks are resampled.
    Tasks with fewer than k samples are left out, as in the point estimate."""
    return cluster_bootstrap_ci([[estimator(n, c, k)] for n, c in counts if n >= k], level=level,
                                resamples=resamples, seed=seed)
