"""The clustered bootstrap and pass@k CI on constructed data whose answers are known."""
from __future__ import annotations

import pytest

from harness.agents.passk import pass_at_k
from harness.common.stats import bootstrap_ci, cluster_bootstrap_ci, pass_at_k_ci


def test_tasks_that_all_score_the_same_leave_no_spread_however_their_attempts_vary():
    # every task solved in 1 of 2 attempts: each resample of tasks has accuracy exactly 0.5,
    # while resampling the 20 attempts as if independent gives a wide interval
    clusters = [[0.0, 1.0]] * 10
    assert cluster_bootstrap_ci(clusters) == (0.5, 0.5)
    lo, hi = bootstrap_ci([x for c in clusters for x in c])
    assert hi - lo > 0.3


def test_attempts_that_move_together_count_as_one_task_each():
    # 3 repeats that always agree carry one task's information: the clustered CI over 8 tasks
    # is exactly the attempt bootstrap over the 8 task values (same seed, same draws)
    tasks = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert cluster_bootstrap_ci([[v] * 3 for v in tasks], seed=3) == bootstrap_ci(tasks, seed=3)
    naive = bootstrap_ci([v for v in tasks for _ in range(3)], seed=3)
    clustered = cluster_bootstrap_ci([[v] * 3 for v in tasks], seed=3)
    assert clustered[1] - clustered[0] > naive[1] - naive[0]


def test_unequal_clusters_are_pooled_by_attempt():
    # the statistic is the pooled mean: a resample of both clusters once is 3/4, not (1 + 0.5) / 2
    ci = cluster_bootstrap_ci([[1.0, 1.0], [1.0, 0.0]], level=0.0, resamples=1, seed=0)
    assert ci[0] in (1.0, 0.75, 0.5)  # {a,a}, {a,b} or {b,b}
    assert cluster_bootstrap_ci([]) is None and cluster_bootstrap_ci([[]]) is None


def test_pass_at_k_ci_resamples_tasks():
    # every task 2 of 4: pass@2 = 1 - C(2,2)/C(4,2) = 5/6 in every resample
    assert pass_at_k_ci([(4, 2)] * 6, 2, pass_at_k) == pytest.approx((5 / 6, 5 / 6))
    # half the tasks always pass, half never: pass@k is 1 or 0 per task, the CI that of 0/1 values
    counts = [(4, 4), (4, 0)] * 5
    assert pass_at_k_ci(counts, 3, pass_at_k, seed=1) == bootstrap_ci([1.0, 0.0] * 5, seed=1)
    assert pass_at_k_ci([(1, 1)], 2, pass_at_k) is None  # no task has k samples
