"""The seed statistics against scipy on worked examples."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from studies.report import stats

# Test errors (%) of two configurations over 5 seeds; element i of each is seed i.
A = [2.31, 2.05, 2.48, 2.20, 2.36]
B = [2.02, 1.97, 2.21, 2.24, 2.01]


def test_summary_is_the_t_interval_of_the_mean():
    summary = stats.summarize(A)
    low, high = scipy_stats.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=scipy_stats.sem(A))
    assert summary.n == 5
    assert summary.mean == pytest.approx(np.mean(A))
    assert summary.sd == pytest.approx(np.std(A, ddof=1))
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high))


def test_summary_of_one_seed_has_no_spread():
    summary = stats.summarize([1.5])
    assert summary.n == 1 and summary.mean == 1.5
    assert math.isnan(summary.sd) and math.isnan(summary.ci_low)


def test_paired_t_matches_scipy():
    result = stats.paired(A, B)
    expected = scipy_stats.ttest_rel(B, A)
    ci = expected.confidence_interval(0.95)
    assert result.n == 5
    assert result.mean == pytest.approx(np.mean(np.subtract(B, A)))
    assert result.p_t == pytest.approx(expected.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))


def test_exact_sign_flip_matches_scipy_permutation_test():
    def mean_difference(x, y, axis):
        return np.mean(x - y, axis=axis)

    expected = scipy_stats.permutation_test(
        (B, A), mean_difference, permutation_type="samples", vectorized=True, alternative="two-sided",
        n_resamples=np.inf,
    )
    assert stats.paired(A, B).p_sign_flip == pytest.approx(expected.pvalue)


def test_sign_flip_by_hand():
    # Differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach |mean| 2.
    assert stats.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    # 1, -1, 2: the 8 signed sums are 2, -2, 4, 0, 0, -4, 2, -2; six reach |sum| >= 2.
    assert stats.sign_flip_p([1.0, -1.0, 2.0]) == pytest.approx(6 / 8)


def test_three_seeds_cannot_reach_five_percent_with_sign_flips():
    assert stats.paired([1, 2, 3], [2, 3.5, 5]).p_sign_flip == pytest.approx(0.25)


def test_resolved_means_the_interval_excludes_zero():
    assert stats.paired(A, B).resolved == (stats.paired(A, B).ci_high < 0)
    assert not stats.paired([1.0, 2.0, 3.0], [1.1, 1.9, 3.05]).resolved


def test_seeds_needed_reaches_the_power_by_noncentral_t():
    n = stats.seeds_needed(mean=0.1, sd=0.2)
    assert n is not None

    def power(count):
        critical = scipy_stats.t.ppf(0.975, count - 1)
        nc = 0.5 * math.sqrt(count)
        return scipy_stats.nct.sf(critical, count - 1, nc) + scipy_stats.nct.cdf(-critical, count - 1, nc)

    assert power(n) >= 0.8 > power(n - 1)
    # Normal approximation for a check of scale: ((1.96 + 0.84) / 0.5)^2 = 31.4, t needs a bit more.
    assert 31 <= n <= 36
    assert stats.seeds_needed(mean=0.0, sd=0.2) is None
    assert stats.seeds_needed(mean=0.1, sd=0.0) is None


def test_paired_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired([1, 2], [1, 2, 3])
