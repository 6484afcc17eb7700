"""eval.stats: the bootstrap interval against exact enumeration, the sign test against scipy."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from scipy.stats import binomtest

from eval.stats import Items, items_interval, mean_std, paired_items, paired_t, quantile, sign_test


def _exact_quantiles(values: list[Fraction], probs: list[Fraction], level: float = 0.95):
    """2.5 % / 97.5 % inverted-CDF quantiles of an exactly enumerated distribution, and how far
    each threshold is from a jump of the CDF (a Monte Carlo estimate must not sit on a jump)."""
    dist: dict[Fraction, Fraction] = {}
    for v, p in zip(values, probs, strict=True):
        dist[v] = dist.get(v, Fraction(0)) + p
    out, margins = [], []
    for q in ((1 - level) / 2, 1 - (1 - level) / 2):
        cdf = Fraction(0)
        for v in sorted(dist):
            before = cdf
            cdf += dist[v]
            if cdf >= Fraction(q).limit_denominator(1000):
                out.append(float(v))
                margins.append(min(abs(float(cdf) - q), abs(float(before) - q)))
                break
    return out, min(margins)


def test_interval_equals_exact_enumeration_unstratified():
    scores = [1, 1, 1, 1, 0, 0]  # 4 of 6 right
    n = len(scores)
    # every one of the 6^6 equally likely resamples, by hand
    values = [Fraction(sum(scores[i] for i in draw), n) for draw in itertools.product(range(n), repeat=n)]
    (lo, hi), margin = _exact_quantiles(values, [Fraction(1, n**n)] * len(values))
    assert (lo, hi) == (pytest.approx(2 / 6), 1.0)  # P(mean <= 1/6) = 0.0178, P(<= 2/6) = 0.100
    assert margin > 0.005  # 20,000 resamples estimate the CDF to about 0.001
    got = items_interval(Items("question", list(range(n)), scores), resamples=20_000, seed=3)
    assert got == (pytest.approx(100 * lo), pytest.approx(100 * hi))


def test_interval_equals_exact_enumeration_stratified_and_weighted():
    # Strata of 3 and 4 units, stratum "b" weighted 3x (as CV-Bench's 3D half): metric =
    # (1 * mean_a + 3 * mean_b) / 4; stratified resampling keeps 3 and 4 units per stratum.
    a, b = [1, 0, 0], [1, 1, 1, 0]
    values, probs = [], []
    for da in itertools.product(range(3), repeat=3):
        for db in itertools.product(range(4), repeat=4):
            ma = Fraction(sum(a[i] for i in da), 3)
            mb = Fraction(sum(b[i] for i in db), 4)
            values.append((ma + 3 * mb) / 4)
            probs.append(Fraction(1, 27 * 256))
    (lo, hi), margin = _exact_quantiles(values, probs)
    assert (lo, hi) == (pytest.approx(13 / 48), pytest.approx(44 / 48))
    assert margin > 0.005
    items = Items(
        "question",
        ids=list(range(7)),
        scores=a + b,
        strata=["a"] * 3 + ["b"] * 4,
        stratum_weights={"a": 1.0, "b": 3.0},
    )
    assert items.value() == pytest.approx(100 * (1 / 3 + 3 * 3 / 4) / 4)
    got = items_interval(items, resamples=20_000, seed=1)
    assert got == (pytest.approx(100 * lo), pytest.approx(100 * hi))
    # hand check of the enumeration itself: the lowest value is 0 (all-zero draws in both strata)
    assert min(values) == 0 and max(values) == 1


def test_weighted_units_give_the_question_accuracy():
    # groups of 4 and 2 questions: 3/4 and 0/2 right -> 3 of 6 questions
    items = Items("group", ["g1", "g2"], [0.75, 0.0], weights=[4, 2])
    assert items.value() == pytest.approx(50.0)


def test_interval_is_seeded_and_contains_the_value():
    items = Items("pair", list(range(40)), [i % 3 == 0 for i in range(40)])
    one = items_interval(items, resamples=500, seed=7)
    assert one == items_interval(items, resamples=500, seed=7)
    assert one[0] <= items.value() <= one[1]


def test_quantile_is_the_inverted_cdf():
    xs = [1.0, 2.0, 3.0, 4.0]
    assert quantile(xs, 0.25) == 1.0  # CDF reaches 0.25 at 1
    assert quantile(xs, 0.26) == 2.0
    assert quantile(xs, 1.0) == 4.0


def test_sign_test_is_exact_mcnemar_against_scipy():
    before = [True] * 3 + [False] * 9 + [True] * 20 + [False] * 8
    after = [False] * 3 + [True] * 9 + [True] * 20 + [False] * 8
    up, down, p = sign_test(before, after)
    assert (up, down) == (9, 3)
    assert p == pytest.approx(binomtest(3, 12, 0.5).pvalue, rel=1e-12)
    for k, n in [(0, 1), (5, 10), (1, 20), (7, 30)]:
        before = [True] * k + [False] * (n - k)
        after = [False] * k + [True] * (n - k)
        assert sign_test(before, after)[2] == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-12)
    assert sign_test([True], [True]) == (0, 0, 1.0)


def test_paired_items_matches_units_by_id():
    a = Items("pair", ["p1", "p2", "p3", "p4"], [1, 0, 0, 1])
    b = Items("pair", ["p4", "p3", "p2", "p9"], [0, 1, 1, 1])  # other order, p9 unmatched
    got = paired_items(a, b)
    assert got is not None
    assert (got["n"], got["better"], got["worse"]) == (3, 2, 1)
    assert got["p"] == pytest.approx(binomtest(1, 3, 0.5).pvalue)
    assert paired_items(a, Items("group", ["p1"], [1])) is None


def test_items_json_round_trip_and_old_records():
    items = Items("pair", [1, 2], [1.0, 0.0], strata=["x", "y"])
    back = Items.from_json(items.to_json())
    assert back is not None and back.value() == items.value() == 50.0
    assert Items.from_json(None) is None
    assert Items.from_json({"unit": "pair"}) is None  # malformed: treated as absent


def test_mean_std():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and math.isclose(s, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_paired_t_against_scipy():
    from scipy.stats import ttest_1samp

    diffs = [1.0, 2.0, 3.0, -0.5]
    assert paired_t(diffs) == pytest.approx(ttest_1samp(diffs, 0.0).pvalue, rel=1e-12)
    assert math.isclose(paired_t([1.0, 2.0, 3.0]), 0.07417990022744858, rel_tol=1e-6)
    assert math.isnan(paired_t([1.0])) and math.isnan(paired_t([0.0, 0.0]))
    assert paired_t([2.0, 2.0]) == 0.0  # a constant non-zero difference
