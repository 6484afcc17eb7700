"""Paired statistics for every comparison the toolkit prints: one implementation.

A benchmark score is an average over a few hundred items (MMVP-VLM: 135 pairs, one pair is 0.74
points of the average), so a difference between two towers needs a measure of how sure it is.
Three tools, all on per-item results that both towers share:

* :func:`items_interval`: a percentile bootstrap over the resampling unit (a pair, a group,
  a question), stratified where the metric averages strata (MMVP-VLM averages its 9 patterns:
  each resample keeps 15 pairs a pattern), with a fixed seed so a board is reproducible;
* :func:`sign_test`: the exact two-sided sign test on units where the towers differ. On 0/1
  outcomes it is the exact McNemar test (a binomial test with p = 1/2 on the discordant units);
* :func:`paired_t` and :func:`mean_std`: across seeds of one configuration.

:class:`Items` is how a benchmark hands its per-unit results to the leaderboard (stored in each
``results.json`` record under ``items``); :func:`items_interval` and :func:`paired_items` are
the two questions a board asks of them. Used by the leaderboard (:mod:`eval.leaderboard`,
:mod:`eval.report`) and by the small-scale study (``eval.reproduce``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


# --- per-unit results of one metric ------------------------------------------------------------


@dataclass
class Items:
    """The per-unit results a metric is computed from, so it can be resampled and paired.

    The metric (before ``scale``) is the weighted mean of ``scores`` within each stratum,
    averaged over strata with ``stratum_weights`` (equal when absent): one formula covers a
    plain accuracy, MMVP-VLM's mean of 9 pattern accuracies and CV-Bench's
    ``((ADE + COCO) / 2 + 3D) / 2``.

    Attributes:
        unit: what one unit is (``pair``, ``group``, ``question``...): the resampling unit.
        ids: one id per unit, stable across models (paired tests match units by id).
        scores: per-unit score in [0, 1] (1/0 for right/wrong; a fraction for a group).
        weights: per-unit weight (e.g. questions in a group); all 1 when absent.
        strata: per-unit stratum (e.g. pattern); one stratum when absent.
        stratum_weights: weight of each stratum in the average; equal when absent.
        scale: factor from the statistic to the recorded value (100 for percent; -1 for a
            lower-is-better value kept as negated scores, so "better" in a paired test stays
            "higher score").
    """

    unit: str
    ids: list
    scores: list[float]
    weights: list[float] | None = None
    strata: list[str] | None = None
    stratum_weights: dict[str, float] | None = None
    scale: float = 100.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.scores)
        for name in ("ids", "weights", "strata"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"Items.{name} has {len(v)} entries for {n} scores")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "ids": list(self.ids), "scores": list(self.scores)}
        for name in ("weights", "strata", "stratum_weights"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["scale"] = self.scale
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Items | None:
        """The record's ``items`` back, or None when absent or malformed (old records)."""
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(
                unit=str(data["unit"]),
                ids=list(data["ids"]),
                scores=[float(x) for x in data["scores"]],
                weights=None if data.get("weights") is None else [float(x) for x in data["weights"]],
                strata=None if data.get("strata") is None else [str(x) for x in data["strata"]],
                stratum_weights=data.get("stratum_weights"),
                scale=float(data.get("scale", 100.0)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def value(self) -> float:
        """The metric these items give (times ``scale``)."""
        return self.scale * float(_stat(self._arrays(), None)[0])

    def _arrays(self):
        import numpy as np

        s = np.asarray(self.scores, dtype=np.float64)
        w = np.ones_like(s) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        labels = ["" for _ in self.scores] if self.strata is None else list(self.strata)
        names = list(dict.fromkeys(labels))
        sw = self.stratum_weights or {}
        return [
            (
                s[[i for i, g in enumerate(labels) if g == n]],
                w[[i for i, g in enumerate(labels) if g == n]],
                float(sw.get(n, 1.0)),
            )
            for n in names
        ]


def _stat(strata, draws):
    """The metric per resample: ``draws[k]`` indexes stratum k's units (None: the sample itself)."""
    import numpy as np

    total, wsum = 0.0, 0.0
    for k, (s, w, sw) in enumerate(strata):
        if draws is None:
            m = np.array([(s * w).sum() / w.sum()])
        else:
            d = draws[k]
            m = (s[d] * w[d]).sum(axis=1) / w[d].sum(axis=1)
        total = total + sw * m
        wsum += sw
    return total / wsum


def items_interval(
    items: Items, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the metric over ``items.unit`` (stratified, scaled).

    Each resample draws as many units as each stratum has, with replacement, from that
    stratum; the bounds are :func:`quantile` of the sorted resampled metrics. Numpy draws (``default_rng(seed)``),
    in chunks, so 50,000 units stay fast.
    """
    import numpy as np

    if not items.scores:
        raise ValueError("items_interval needs at least one unit")
    strata = items._arrays()
    rng = np.random.default_rng(seed)
    largest = max(len(s) for s, _, _ in strata)
    chunk = max(1, min(resamples, 4_000_000 // max(1, largest)))
    stats: list[float] = []
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        draws = [rng.integers(0, len(s), size=(b, len(s))) for s, _, _ in strata]
        stats.extend(float(x) for x in _stat(strata, draws))
        done += b
    stats.sort()
    alpha = (1.0 - level) / 2
    return items.scale * quantile(stats, alpha), items.scale * quantile(stats, 1.0 - alpha)


def paired_items(a: Items, b: Items) -> dict[str, Any] | None:
    """Sign test (exact McNemar on 0/1 units) of ``b`` against ``a`` on the units both scored.

    Units are matched by id; None when the two share no unit or use different units.
    Returns ``{"unit", "n", "better", "worse", "p"}`` (``better``: units where b beats a).
    """
    if a.unit != b.unit:
        return None
    sa = dict(zip(a.ids, a.scores, strict=True))
    common = [(sa[i], s) for i, s in zip(b.ids, b.scores, strict=True) if i in sa]
    if not common:
        return None
    better, worse, p = sign_test([x for x, _ in common], [y for _, y in common])
    return {"unit": a.unit, "n": len(common), "better": better, "worse": worse, "p": p}
