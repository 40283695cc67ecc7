from math import comb

import pytest

from harness.agents.passk import mean_pass_at_k, pass_at_k
from harness.common.stats import bootstrap_ci, percentile, std


@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 5), (20, 0, 5), (5, 5, 5), (200, 13, 10), (7, 1, 7)])
def test_pass_at_k_matches_the_binomial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the pass rate
    assert pass_at_k(2, 1, 2) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(1000, 1, 100) == pytest.approx(0.1)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_mean_pass_at_k_skips_tasks_with_too_few_samples():
    assert mean_pass_at_k([(4, 1), (4, 0), (1, 1)], 2) == pytest.approx(0.25)
    assert mean_pass_at_k([(1, 1)], 2) is None


def test_summary_statistics():
    xs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(xs, 50) == 2.5 and percentile(xs, 100) == 4.0
    assert std(xs) == pytest.approx(1.2909944)
    lo, hi = bootstrap_ci(xs)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci([2.0, 2.0]) == (2.0, 2.0)
