"""Statistics over seeds: summaries with t intervals, paired comparisons, and the seeds needed.

Every study trains each configuration once per seed, and the engine gives the same seed the same
data order and augmentation stream, so two configurations are compared seed by seed (paired):
the per-seed differences d_1..d_n are what is summarised. Reported for each comparison:
- the mean difference and its 95% confidence interval from Student's t with n - 1 degrees of
  freedom (the interval of a paired t-test);
- two p-values for "no difference": the paired t-test's, and the exact two-sided sign-flip
  permutation test's (all 2^n sign patterns of the differences; no normality assumed, but with
  n seeds it cannot go below 2 / 2^n, i.e. 0.25 with 3 seeds);
- the seeds a paired t-test would need to resolve the observed difference (two-sided, 5% level,
  80% power), from the observed mean and sd of the differences: the noncentral t power.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
POWER = 0.8
MAX_SEEDS_SEARCHED = 1000
# Beyond this many seeds the sign-flip test samples patterns instead of enumerating them.
EXACT_SIGN_FLIP_MAX_N = 20
SIGN_FLIP_SAMPLES = 200_000


@dataclass(frozen=True)
class Summary:
    """Mean, sample sd (n - 1) and the t interval of the mean over n seeds (NaN where n < 2)."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


def summarize(values, confidence: float = CONFIDENCE) -> Summary:
    data = np.asarray(values, dtype=float)
    data = data[~np.isnan(data)]
    n = len(data)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def sign_flip_p(differences) -> float:
    """Two-sided p of the paired sign-flip permutation test: the share of sign patterns whose
    mean difference is at least as far from 0 as the observed one. Exact up to
    EXACT_SIGN_FLIP_MAX_N differences, a seeded sample of patterns beyond."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if n <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(SIGN_FLIP_SAMPLES, n))
    means = np.abs(signs @ d) / n
    # A relative tolerance, so patterns equal to the observed one up to rounding count as equal.
    return float(np.mean(means >= observed * (1 - 1e-12) - 1e-15))


@dataclass(frozen=True)
class Paired:
    """b - a over n paired seeds."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_t: float
    p_sign_flip: float
    seeds_needed: int | None  # None: not reached within MAX_SEEDS_SEARCHED, or no spread

    @property
    def resolved(self) -> bool:
        """The interval excludes 0."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


def seeds_needed(mean: float, sd: float, alpha: float = 1 - CONFIDENCE, power: float = POWER) -> int | None:
    """Smallest n whose two-sided paired t-test at level alpha has the given power for a true
    difference `mean` with per-seed sd `sd` (noncentral t). None when the sd is 0 or NaN, or
    the mean is 0, or no n up to MAX_SEEDS_SEARCHED reaches it."""
    if not (sd > 0) or mean == 0 or math.isnan(mean):
        return None
    effect = abs(mean) / sd
    for n in range(2, MAX_SEEDS_SEARCHED + 1):
        df = n - 1
        critical = stats.t.ppf(1 - alpha / 2, df)
        noncentrality = effect * math.sqrt(n)
        achieved = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
        if achieved >= power:
            return n
    return None


def paired(a, b, confidence: float = CONFIDENCE) -> Paired:
    """Compare b against a, element i of each being the same seed."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = b - a
    summary = summarize(d, confidence)
    if summary.n < 2:
        return Paired(summary.n, summary.mean, math.nan, math.nan, math.nan, math.nan, sign_flip_p(d), None)
    if summary.sd == 0:
        p_t = 1.0 if summary.mean == 0 else 0.0
    else:
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
    return Paired(summary.n, summary.mean, summary.sd, summary.ci_low, summary.ci_high, p_t, sign_flip_p(d),
                  seeds_needed(summary.mean, summary.sd))
