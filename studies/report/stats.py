"""Statistics over seeds: summaries with t intervals, paired comparisons, multiplicity and power.

Every study trains each configuration once per seed, and the engine gives the same seed the same
data order and augmentation stream, so two configurations are compared seed by seed (paired):
the per-seed differences d_1..d_n are what is summarised. Reported for each comparison:
- the mean difference and its 95% confidence interval from Student's t with n - 1 degrees of
  freedom (the interval of a paired t-test), clipped to the range the quantity can take;
- two p-values for "no difference": the paired t-test's, and the exact two-sided sign-flip
  permutation test's (all 2^n sign patterns of the differences; no normality assumed, but with
  n seeds it cannot go below 2 / 2^n, i.e. 0.25 with 3 seeds);
- Holm's step-down adjustment of the paired t p-values over a study's declared primary
  comparisons (statsmodels' `multipletests`), which bounds the chance of any false finding among
  them at 5%;
- power as what the data can and cannot say: the smallest true difference the current n
  resolves with 80% power (two-sided paired t at 5%), and the seeds a difference of the observed
  size would need, as a range over the 95% interval of the sd (the sd of 3 seeds is known only
  to within a factor of about 0.5x-6.3x; plugging it in as if known overstates what we know).
Power is the noncentral t's two tails, each as an upper tail (P(T < -c | nc) = P(T > c | -nc)):
scipy's lower-tail cdf returns NaN for large noncentralities, where the power is all but 1.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
MAX_SEEDS_SEARCHED = 1000
# Nothing is called resolved with fewer seeds: two points give an sd with one degree of freedom.
MIN_SEEDS = 3
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


def summarize(values, confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> Summary:
    """`bounds`: the range the quantity can take (e.g. 0-100 for an accuracy in %); the interval is
    clipped to it (a t interval of values near a bound reaches past it)."""
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
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Summary(n, mean, sd, low, high)


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


def power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (paired) t-test at level `alpha` with n observations for a
    true standardised difference `effect` (mean / sd)."""
    if n < 2:
        return math.nan
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = abs(effect) * math.sqrt(n)
    upper = stats.nct.sf(critical, df, noncentrality)
    # The far tail is below 1e-9 wherever scipy cannot compute it; it adds nothing then.
    lower = np.nan_to_num(stats.nct.sf(critical, df, -noncentrality), nan=0.0)
    if np.isnan(upper):  # a noncentrality too large for scipy: power is 1 to double precision
        upper = 1.0
    return float(min(1.0, upper + lower))


def seeds_needed(mean: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """Smallest n (at least MIN_SEEDS) whose two-sided paired t-test at level alpha has the target
    power for a true difference `mean` with per-seed sd `sd`. None when the mean is 0 or NaN, the
    sd is not positive, or no n up to MAX_SEEDS_SEARCHED reaches it."""
    if not (sd > 0) or not (abs(mean) > 0):
        return None
    effect = abs(mean) / sd
    if power(effect, MAX_SEEDS_SEARCHED, alpha) < target:
        return None
    if power(effect, MIN_SEEDS, alpha) >= target:
        return MIN_SEEDS
    low, high = MIN_SEEDS, MAX_SEEDS_SEARCHED  # power(low) falls short of the target, power(high) reaches it
    while high - low > 1:  # power grows with n
        middle = (low + high) // 2
        if power(effect, middle, alpha) >= target:
            high = middle
        else:
            low = middle
    return high


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest true difference (in the unit of `sd`) that n paired seeds resolve with the
    target power, given the per-seed sd of the differences."""
    if n < 2 or not (sd > 0):
        return math.nan
    effect = optimize.brentq(lambda d: power(d, n, alpha) - target, 1e-6, 100.0)
    return float(effect * sd)


def sd_interval(sd: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The 95% interval of a normal sample's sd from its sample sd (chi-square, n - 1 df)."""
    if n < 2 or not (sd >= 0):
        return math.nan, math.nan
    df = n - 1
    tail = (1 - confidence) / 2
    return (sd * math.sqrt(df / stats.chi2.ppf(1 - tail, df)), sd * math.sqrt(df / stats.chi2.ppf(tail, df)))


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
    # The smallest true difference this n resolves with 80% power, at the observed sd.
    detectable: float
    # Seeds for 80% power at the observed difference, at the low and high ends of the sd's 95%
    # interval (None: not reached within MAX_SEEDS_SEARCHED, or no spread or no difference).
    seeds_low: int | None
    seeds_high: int | None

    @property
    def resolved(self) -> bool:
        """The interval excludes 0, with at least MIN_SEEDS seeds (not adjusted for multiplicity)."""
        return bool(self.n >= MIN_SEEDS and (self.ci_low > 0 or self.ci_high < 0))


def paired(a, b, confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> Paired:
    """Compare b against a, element i of each being the same seed; `bounds`: the range of the
    difference (e.g. -100..100 for accuracies in %)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    d = b - a
    summary = summarize(d, confidence, bounds)
    if summary.n < 2:
        return Paired(summary.n, summary.mean, math.nan, math.nan, math.nan, math.nan, sign_flip_p(d), math.nan,
                      None, None)
    if summary.sd == 0:
        p_t = 1.0 if summary.mean == 0 else 0.0
    else:
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
    sd_low, sd_high = sd_interval(summary.sd, summary.n, confidence)
    # A smaller sd needs fewer seeds: the low end of the range comes from the low end of the sd.
    return Paired(summary.n, summary.mean, summary.sd, summary.ci_low, summary.ci_high, p_t, sign_flip_p(d),
                  detectable_difference(summary.sd, summary.n), seeds_needed(summary.mean, sd_low),
                  seeds_needed(summary.mean, sd_high))


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values. A missing p-value (NaN: a comparison that could not be answered)
    counts as 1: it stays in the family, so a missing answer never shrinks it."""
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)
    return multipletests(p, alpha=ALPHA, method="holm")[1] if p.size else p
