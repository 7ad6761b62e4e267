"""The seed statistics against scipy on worked examples."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

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


def test_resolved_means_the_interval_excludes_zero_with_three_seeds_or_more():
    assert stats.paired(A, B).resolved == (stats.paired(A, B).ci_high < 0)
    assert not stats.paired([1.0, 2.0, 3.0], [1.1, 1.9, 3.05]).resolved
    # Two seeds whose interval excludes 0 are still not resolved.
    two = stats.paired([1.0, 2.0], [1.5, 2.51])
    assert two.ci_low > 0 and not two.resolved


def test_intervals_stay_within_the_range_of_the_quantity():
    summary = stats.summarize([99.5, 99.9, 100.0], bounds=(0.0, 100.0))
    unbounded = stats.summarize([99.5, 99.9, 100.0])
    assert unbounded.ci_high > 100 and summary.ci_high == 100.0 and summary.ci_low == unbounded.ci_low
    assert stats.summarize([0.0, 0.2, 1.5], bounds=(0.0, 100.0)).ci_low == 0.0


def test_power_matches_statsmodels_where_it_is_finite():
    analysis = TTestPower()
    for effect, n in [(0.5, 10), (1.0, 3), (2.0, 5), (0.2, 40)]:
        assert stats.power(effect, n) == pytest.approx(analysis.power(effect_size=effect, nobs=n, alpha=0.05))


def test_seeds_needed_reaches_the_power_by_noncentral_t():
    n = stats.seeds_needed(mean=0.1, sd=0.2)
    assert stats.power(0.5, n) >= 0.8 > stats.power(0.5, n - 1)
    # statsmodels solves for the same n (as a real number, rounded up here).
    assert n == math.ceil(TTestPower().solve_power(effect_size=0.5, alpha=0.05, power=0.8))
    assert stats.seeds_needed(mean=0.0, sd=0.2) is None
    assert stats.seeds_needed(mean=0.1, sd=0.0) is None


def test_a_large_effect_at_three_seeds_is_already_powered():
    """A large effect at n = 3 (mean 0.353, sd 0.0503: 7 sd), where statsmodels' power can be NaN
    (scipy's noncentral t lower tail); ours is the two upper tails."""
    effect = 0.353 / 0.0503
    upper = scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, 2), 2, effect * math.sqrt(3))
    assert stats.power(effect, 3) == pytest.approx(upper, abs=1e-9) and stats.power(effect, 3) > 0.999
    assert stats.seeds_needed(0.353, 0.0503) == 3
    # The smallest difference 3 seeds resolve with 80% power at this sd, against statsmodels.
    detectable = TTestPower().solve_power(nobs=3, alpha=0.05, power=0.8) * 0.0503
    assert stats.detectable_difference(0.0503, 3) == pytest.approx(detectable, rel=1e-6)


def test_power_stays_finite_at_extreme_noncentralities():
    for effect, n in [(50.0, 3), (1e3, 2), (1e3, 1000), (1e-9, 3)]:
        assert 0.0 <= stats.power(effect, n) <= 1.0
    assert stats.power(1e3, 3) == 1.0 and stats.power(1e-9, 3) == pytest.approx(0.05, abs=1e-6)


def test_the_seeds_needed_are_a_range_over_the_sds_interval():
    low, high = stats.sd_interval(0.0503, 3)
    # chi-square with 2 df: sd * sqrt(2 / 7.378) and sd * sqrt(2 / 0.0506)
    assert low == pytest.approx(0.0503 * math.sqrt(2 / scipy_stats.chi2.ppf(0.975, 2)))
    assert high == pytest.approx(0.0503 * math.sqrt(2 / scipy_stats.chi2.ppf(0.025, 2)))
    assert 0.5 < low / 0.0503 < 0.53 and 6.2 < high / 0.0503 < 6.3
    result = stats.paired([0.0, 0.0, 0.0], [0.303, 0.353, 0.403])
    assert result.seeds_low == stats.seeds_needed(result.mean, stats.sd_interval(result.sd, 3)[0]) == 3
    assert result.seeds_high == stats.seeds_needed(result.mean, stats.sd_interval(result.sd, 3)[1]) > 3


def test_holm_against_statsmodels_and_by_hand():
    p = [0.01, 0.04, 0.03, 0.5]
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    # By hand: sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> running max 0.09, 0.5.
    assert stats.holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    # A missing p-value counts as 1: by hand 0.01, 0.04, 1 times 3, 2, 1.
    assert stats.holm([0.01, math.nan, 0.04]) == pytest.approx([0.03, 1.0, 0.08])
    assert stats.holm([]).size == 0


def test_paired_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired([1, 2], [1, 2, 3])
