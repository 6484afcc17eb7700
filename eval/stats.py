"""Paired statistics for every comparison the toolkit prints: one implementation.

A benchmark score is an average over a few hundred items (MMVP-VLM: 135 pairs, one pair is 0.74
points of the average), so a difference between two towers needs a measure of how sure it is.
Three tools, all on per-item results that both towers share:

* :func:`bootstrap_interval`: a percentile bootstrap over the resampling unit (a pair, a group,
  a question), optionally stratified (MMVP-VLM averages its 9 patterns: each resample keeps
  15 pairs a pattern), with a fixed seed so a board is reproducible;
* :func:`sign_test`: the exact two-sided sign test on units where the towers differ. On 0/1
  outcomes it is the exact McNemar test (a binomial test with p = 1/2 on the discordant units);
* :func:`paired_t` and :func:`mean_std`: across seeds of one configuration.

Used by the leaderboard (:mod:`eval.report`) and by the small-scale study (``eval.reproduce``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence

#: Bootstrap resamples drawn for a board's intervals.
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def paired_t(diffs: Sequence[float]) -> float:
    """Two-sided paired t-test p-value on per-seed differences; nan when undefined."""
    n = len(diffs)
    if n < 2:
        return float("nan")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return float("nan") if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    try:
        from scipy import stats

        return float(2 * stats.t.sf(abs(t), n - 1))
    except ImportError:  # pragma: no cover
        return float("nan")


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of ``k`` successes in ``n`` fair coin flips (symmetric: twice the tail)."""
    if n == 0:
        return 1.0
    lo = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(lo + 1)) / 2**n
    return min(1.0, 2 * tail)


def sign_test(before: Sequence[float], after: Sequence[float]) -> tuple[int, int, float]:
    """Units better after / better before, and the exact two-sided binomial p on them.

    ``before`` and ``after`` score the same units in the same order (booleans or unit scores);
    ties drop out. On booleans this is the exact McNemar test.
    """
    up = sum(1 for b, a in zip(before, after, strict=True) if a > b)
    down = sum(1 for b, a in zip(before, after, strict=True) if b > a)
    return up, down, binomial_two_sided(up, up + down)


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """The smallest value whose empirical CDF reaches ``q`` (the inverted-CDF quantile)."""
    n = len(sorted_xs)
    # Rounded before the ceiling so 0.025 * 2000 is 50, not 50.000000000000004.
    idx = max(1, math.ceil(round(q * n, 9)))
    return sorted_xs[min(n, idx) - 1]


def stratified_mean(scores: Sequence[float], strata: Sequence[Hashable] | None) -> float:
    """The mean over units, or the mean of per-stratum means when ``strata`` is given."""
    if strata is None:
        return sum(scores) / len(scores)
    groups: dict[Hashable, list[float]] = {}
    for s, g in zip(scores, strata, strict=True):
        groups.setdefault(g, []).append(s)
    return sum(sum(v) / len(v) for v in groups.values()) / len(groups)


def bootstrap_interval(
    scores: Sequence[float],
    strata: Sequence[Hashable] | None = None,
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    statistic: Callable[[Sequence[float], Sequence[Hashable] | None], float] = stratified_mean,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over units (in the units of ``scores``).

    Each resample draws as many units as there are, with replacement, from within each stratum
    (so every pattern keeps its size); ``random.Random(seed)`` makes the interval reproducible.
    """
    if not scores:
        raise ValueError("bootstrap_interval needs at least one unit")
    rng = random.Random(seed)
    labels = list(strata) if strata is not None else [None] * len(scores)
    by_stratum: dict[Hashable, list[float]] = {}
    for s, g in zip(scores, labels, strict=True):
        by_stratum.setdefault(g, []).append(s)
    stats: list[float] = []
    for _ in range(resamples):
        draw: list[float] = []
        keys: list[Hashable] = []
        for g, units in by_stratum.items():
            draw.extend(rng.choices(units, k=len(units)))
            keys.extend([g] * len(units))
        stats.append(statistic(draw, keys if strata is not None else None))
    stats.sort()
    alpha = (1.0 - level) / 2
    return quantile(stats, alpha), quantile(stats, 1.0 - alpha)
