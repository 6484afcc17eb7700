"""Official scores of the six MLLM benchmarks, computed from per-sample records.

Every scorer is a pure function of :class:`Sample` records: the dataset row's columns (by their
real names, image left out) and the model's reply. They replace lmms-eval 0.7.3's aggregations
wherever those depart from the official protocols (``README.md``,
"lmms-eval 0.7.3 departures"; numbers below refer to that list). Values are percentages (0-100).

- MMVP (dev. 9, 10): pairs by the explicit ``Index`` (1-based: pair = (Index-1)//2), a pair counts
  when both questions are right; a complete run (300 questions) divides by the benchmark's 150
  pairs, a partial one by the complete pairs seen (in ``counts``, with the rows left out).
  Answers are parsed by :func:`~eval.mllm.answer_parsing.parse_choice` instead of the official
  GPT-4 grader. Answer key: ``lmms-lab-eval/MMVP`` already fixes the two swapped pairs of
  ``MMVP/MMVP`` (lmms-eval issue #1018); pass ``key_fixes=ORIGINAL_MMVP_KEY_FIXES`` for data
  copied from ``MMVP/MMVP``.
- CV-Bench (dev. 7, 8): accuracy per source; 2D = mean(ADE20K, COCO), 3D = Omni3D,
  overall = (2D + 3D) / 2 (Cambrian-1 App. C); robust letter parsing.
- NaturalBench (dev. 4, 5, 6): Acc, Q_Acc, I_Acc, G_Acc as in ``Baiqi-Li/NaturalBench``: group =
  ``Index // 4`` and the expected answer comes from the position ``Index % 4`` (q0_i0 yes/A, q0_i1
  no/B, q1_i0 no/B, q1_i1 yes/A), never from a column, exactly as the official scorer
  (``naturalbench/utils.py:9``); any subset of complete groups scores; Acc counts every sample seen.
- POPE (dev. 1, 2, 3): per split, LLaVA's yes/no rule, yes-ratio of the *predictions*.
- HallusionBench (dev. 11, 12, 13): aAcc/fAcc/qAcc with the official grouping over the ``image``
  and ``non_image`` splits together, verdicts from a
  rule-based yes/no judge by default (or any verdicts passed in, e.g. from the GPT judge).
- ScienceQA-IMG (dev. 14): LLaVA's parser.

Each :class:`Score` also keeps, per metric it can, the per-unit results (:class:`eval.stats.Items`:
pairs for MMVP, groups for NaturalBench, questions, figures or question groups otherwise), so the
leaderboard can put a bootstrap interval and a paired test beside the number. POPE's precision,
recall and F1 and HallusionBench's ``avg`` are not means over one kind of unit: no items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.clip.mmvp_vlm import PATTERN_KEYS
from eval.mllm.answer_parsing import (
    LETTERS,
    options_from_prompt,
    parse_choice,
    parse_naturalbench,
    parse_scienceqa_llava,
    parse_yes_no_first,
    parse_yes_no_llava,
)
from eval.stats import Items

#: 1-based ``Index`` pairs whose answers ``MMVP/MMVP`` has swapped (lmms-eval issue #1018).
ORIGINAL_MMVP_KEY_FIXES: tuple[tuple[int, int], ...] = ((99, 100), (279, 280))
MMVP_PAIRS = 150
NATURALBENCH_GROUPS = 1900
POPE_SPLITS = ("random", "popular", "adversarial")
POPE_POOLED_NOTE = (
    "rows of lmms-eval's pooled 'pope' task without their 'category' column (lmms-eval 0.7.3 logs "
    "drop doc) are scored as one 'all' split; for the paper's per-split F1 run the 'pope_full' "
    "group (tasks pope_adv, pope_pop, pope_random) instead"
)


@dataclass
class Sample:
    """One scored item: the dataset row's columns (those known), the reply, and the prompt shown."""

    doc_id: int
    response: str
    doc: dict[str, Any]
    prompt: str = ""
    split: str = ""
    source: str = ""  # the lmms-eval task (or log) it came from: part of the row key


@dataclass
class Score:
    """Metrics in percent, plus the counts they rest on and notes (e.g. incomplete pairs dropped)."""

    metrics: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    items: dict[str, Items] = field(default_factory=dict)  # metric -> its per-unit results


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else 0.0


def _row_id(s: Sample) -> str:
    """A unit id stable across models on one board: the row key the samples are de-duplicated by."""
    return f"{s.source}/{s.split}/{s.doc_id}"


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# --- MMVP -----------------------------------------------------------------------------------------


def _mmvp_options(s: Sample) -> list[str]:
    raw = s.doc.get("Options")
    if isinstance(raw, str) and raw:
        found = options_from_prompt(raw)
        if found:
            return found
    return options_from_prompt(s.prompt)


def score_mmvp(
    samples: Sequence[Sample],
    key_fixes: Iterable[tuple[int, int]] = (),
    patterns: Mapping[int, str] | None = None,
) -> Score:
    """Pair accuracy (the paper's MMVP column) and question accuracy.

    On the full benchmark the pair denominator is its 150 pairs; with a subset (``--limit``) only
    the complete pairs seen are scored, and ``counts["pairs"]`` says how many. With ``patterns``
    ({0-based pair: pattern key}, :mod:`eval.mllm.mmvp_patterns`), also the pair accuracy of each
    visual pattern over its complete pairs, as ``pattern/<key>`` (pairs the map lacks:
    ``pattern/unmapped``).
    """
    answer = {int(s.doc["Index"]): str(s.doc["Correct Answer"]).strip("() ").upper() for s in samples}
    for a, b in key_fixes:
        if a in answer and b in answer:
            answer[a], answer[b] = answer[b], answer[a]
    zero_based = any(int(s.doc["Index"]) == 0 for s in samples)
    complete_run = len(answer) == 2 * MMVP_PAIRS
    pairs: dict[int, list[bool]] = defaultdict(list)
    right = 0
    for s in samples:
        idx = int(s.doc["Index"])
        ok = parse_choice(s.response, _mmvp_options(s) or 2) == answer[idx]
        right += ok
        pairs[idx // 2 if zero_based else (idx - 1) // 2].append(ok)
    complete = {p: v for p, v in pairs.items() if len(v) == 2}
    both = sum(all(v) for v in complete.values())
    ids = sorted(pairs)
    items = {
        # a pair this run cannot form counts as wrong on a complete run (as the denominator does)
        "pair_accuracy": Items(
            "pair",
            ids if complete_run else sorted(complete),
            [float(all(pairs[p])) for p in (ids if complete_run else sorted(complete))],
        ),
        "question_accuracy": Items(
            "pair", ids, [sum(pairs[p]) / len(pairs[p]) for p in ids], weights=[len(pairs[p]) for p in ids]
        ),
    }
    # Official: correct pairs / 150 (tsb0601/MMVP evaluate_mllm.py); a pair this run cannot form
    # then counts as wrong instead of shrinking the denominator.
    den = MMVP_PAIRS if complete_run else len(complete)
    left_out = sum(len(v) for v in pairs.values() if len(v) != 2)
    notes = []
    if len(complete) < len(pairs):
        notes.append(f"{len(pairs) - len(complete)} incomplete pair(s) left out of pair accuracy")
    if zero_based:
        notes.append("Index is 0-based here; pairs taken as Index // 2")
    metrics = {"pair_accuracy": _pct(both, den), "question_accuracy": _pct(right, len(samples))}
    if patterns is not None:
        of = {p: patterns.get(p, "unmapped") for p in complete}
        for key in [*PATTERN_KEYS, "unmapped"]:
            ids = sorted(p for p in complete if of[p] == key)
            if ids:
                metrics[f"pattern/{key}"] = _pct(sum(all(complete[p]) for p in ids), len(ids))
                items[f"pattern/{key}"] = Items("pair", ids, [float(all(complete[p])) for p in ids])
    return Score(
        metrics,
        {"questions": len(samples), "pairs": den, "pairs_both_right": both, "rows_left_out": left_out},
        notes,
        items,
    )


# --- CV-Bench -------------------------------------------------------------------------------------

CV_SOURCES = ("ADE20K", "COCO", "Omni3D")


def _cv_options(s: Sample) -> list[str] | int:
    found = options_from_prompt(str(s.doc.get("prompt") or s.prompt))
    if found:
        return found
    choices = s.doc.get("choices")
    return [str(c) for c in choices] if isinstance(choices, list | tuple) and choices else 26


def score_cv_bench(samples: Sequence[Sample]) -> Score:
    """Per-source accuracy; 2D = mean(ADE20K, COCO); 3D = Omni3D; overall = (2D + 3D) / 2.

    A source absent from the samples leaves out the figures that need it (lmms-eval's unused
    ``cv_bench/utils.py:67`` raises KeyError instead). ``micro`` is lmms-eval's number, for comparison.
    """
    per: dict[str, list[bool]] = defaultdict(list)
    ids: dict[str, list] = defaultdict(list)
    for s in samples:
        gt = str(s.doc["answer"]).strip("() ").upper()
        per[str(s.doc["source"])].append(parse_choice(s.response, _cv_options(s)) == gt)
        ids[str(s.doc["source"])].append(_row_id(s))
    acc = {src: _pct(sum(v), len(v)) for src, v in per.items()}
    m = {src: acc[src] for src in CV_SOURCES if src in acc}
    if "ADE20K" in acc and "COCO" in acc:
        m["2D"] = (acc["ADE20K"] + acc["COCO"]) / 2
    if "Omni3D" in acc:
        m["3D"] = acc["Omni3D"]
    if "2D" in m and "3D" in m:
        m["overall"] = (m["2D"] + m["3D"]) / 2
    m["micro"] = _pct(sum(sum(v) for v in per.values()), len(samples))
    unknown = sorted(set(acc) - set(CV_SOURCES))
    notes = [f"unknown source(s) {unknown} counted in micro only"] if unknown else []

    def items(sources: Sequence[str], weights: dict[str, float] | None = None) -> Items:
        srcs = [x for x in sources if x in per]
        return Items(
            "question",
            [i for x in srcs for i in ids[x]],
            [float(v) for x in srcs for v in per[x]],
            strata=[x for x in srcs for _ in per[x]] if weights is not None else None,
            stratum_weights=weights or None,
        )

    parts = {src: items([src]) for src in CV_SOURCES if src in m}
    if "2D" in m:
        parts["2D"] = items(("ADE20K", "COCO"), {"ADE20K": 1.0, "COCO": 1.0})
    if "3D" in m:
        parts["3D"] = items(("Omni3D",))
    if "overall" in m:
        parts["overall"] = items(CV_SOURCES, {"ADE20K": 0.25, "COCO": 0.25, "Omni3D": 0.5})
    parts["micro"] = items(list(per))
    return Score(m, {src: len(v) for src, v in per.items()}, notes, parts)


# --- NaturalBench ---------------------------------------------------------------------------------


#: Expected labels by position in a group of four: q0_i0, q0_i1, q1_i0, q1_i1 (1 = yes/A, 0 = no/B).
NATURALBENCH_EXPECTED = (1, 0, 0, 1)


def naturalbench_label(index: int) -> int:
    """Expected label of the row with this ``Index``: fixed by its position in the group of four, as
    the official scorer fixes it (the dataset's answer column is never read)."""
    return NATURALBENCH_EXPECTED[int(index) % 4]


def score_naturalbench(samples: Sequence[Sample]) -> Score:
    """Acc over all samples; Q_Acc, I_Acc, G_Acc over the complete 4-sample groups seen.

    Group = ``Index // 4``; position ``Index % 4`` is q0_i0, q0_i1, q1_i0, q1_i1 (the official
    layout). Q_Acc: a question right on both images; I_Acc: an image right on both questions;
    G_Acc: all four right (``Baiqi-Li/NaturalBench`` ``example.py``).
    """
    groups: dict[int, dict[int, bool]] = defaultdict(dict)
    right = 0
    for s in samples:
        idx = int(s.doc["Index"])
        ok = parse_naturalbench(s.response, str(s.doc["Question_Type"])) == naturalbench_label(idx)
        right += ok
        groups[idx // 4][idx % 4] = ok
    full = [g for g in groups.values() if len(g) == 4]
    q = sum(g[0] and g[1] for g in full) + sum(g[2] and g[3] for g in full)
    i = sum(g[0] and g[2] for g in full) + sum(g[1] and g[3] for g in full)
    gr = sum(all(g.values()) for g in full)
    keys = sorted(groups)
    fkeys = [k for k in keys if len(groups[k]) == 4]
    g = groups
    items = {
        "Acc": Items(
            "group", keys, [sum(g[k].values()) / len(g[k]) for k in keys], weights=[len(g[k]) for k in keys]
        ),
        "Q_Acc": Items("group", fkeys, [((g[k][0] and g[k][1]) + (g[k][2] and g[k][3])) / 2 for k in fkeys]),
        "I_Acc": Items("group", fkeys, [((g[k][0] and g[k][2]) + (g[k][1] and g[k][3])) / 2 for k in fkeys]),
        "G_Acc": Items("group", fkeys, [float(all(g[k].values())) for k in fkeys]),
    }
    notes = []
    if len(full) < len(groups):
        notes.append(f"{len(groups) - len(full)} incomplete group(s) left out of Q/I/G accuracy")
    return Score(
        {
            "Acc": _pct(right, len(samples)),
            "Q_Acc": _pct(q, 2 * len(full)),
            "I_Acc": _pct(i, 2 * len(full)),
            "G_Acc": _pct(gr, len(full)),
        },
        {
            "samples": len(samples),
            "groups": len(full),
            "rows_left_out": sum(len(g) for g in groups.values() if len(g) != 4),
        },
        notes,
        {k: v for k, v in items.items() if v.scores},
    )


# --- POPE -----------------------------------------------------------------------------------------


def pope_split(s: Sample) -> str:
    """The POPE set of a sample: its ``category`` column (random/popular/adversarial), else ``split``."""
    cat = str(s.doc.get("category") or "").lower()
    return cat if cat in POPE_SPLITS else (s.split or "all")


def score_pope(samples: Sequence[Sample]) -> Score:
    """Per split: accuracy, precision, recall, F1 and yes-ratio of the predictions (LLaVA rule),
    as ``<split>/<metric>``; ``f1_mean`` is the mean F1 over the splits present (LLaVA-1.5's number)."""
    by: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by[pope_split(s)].append(s)
    m: dict[str, float] = {}
    counts: dict[str, int] = {}
    items: dict[str, Items] = {}
    order = [k for k in POPE_SPLITS if k in by] + sorted(k for k in by if k not in POPE_SPLITS)
    for split in order:
        tp = fp = tn = fn = 0
        right, said_yes = [], []
        for s in by[split]:
            pred = parse_yes_no_llava(s.response)
            gt = str(s.doc["answer"]).strip().lower()
            right.append(float((pred == "yes") == (gt == "yes")))
            said_yes.append(float(pred == "yes"))
            if pred == "yes":
                tp, fp = tp + (gt == "yes"), fp + (gt != "yes")
            else:
                tn, fn = tn + (gt != "yes"), fn + (gt == "yes")
        n = tp + fp + tn + fn
        p, r = tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0
        m[f"{split}/accuracy"] = _pct(tp + tn, n)
        m[f"{split}/precision"] = 100 * p
        m[f"{split}/recall"] = 100 * r
        m[f"{split}/f1"] = 100 * (2 * p * r / (p + r) if p + r else 0.0)
        m[f"{split}/yes_ratio"] = _pct(tp + fp, n)
        counts[split] = n
        ids = [_row_id(s) for s in by[split]]
        items[f"{split}/accuracy"] = Items("question", ids, right)
        items[f"{split}/yes_ratio"] = Items("question", ids, said_yes)
    m["f1_mean"] = _mean(m[f"{k}/f1"] for k in order)
    return Score(m, counts, [POPE_POOLED_NOTE] if "all" in by else [], items)


# --- HallusionBench -------------------------------------------------------------------------------

#: Verdicts as in the official judge: 0 incorrect, 1 correct, 2 unclear.
Verdict = int


def rule_verdict(response: str, gt_answer: str) -> Verdict:
    """Rule-based judge: the first yes/no word of the reply against ``gt_answer`` ("1" yes, "0" no)."""
    said = parse_yes_no_first(response)
    if said is None:
        return 2
    return 1 if (said == "yes") == (str(gt_answer).strip() == "1") else 0


def _hb_correct(doc: dict, verdict: Verdict) -> bool:
    # Official assign_correctness: a VS question without its figure may also answer "unclear".
    if doc["category"] == "VS" and str(doc["figure_id"]) == "0":
        return verdict in (1, 2)
    return verdict == 1


def _hb_id(d: dict) -> str:
    return "/".join(str(d.get(k)) for k in ("category", "subcategory", "set_id", "figure_id", "question_id"))


def score_hallusion(samples: Sequence[Sample], verdicts: Sequence[Verdict] | None = None) -> Score:
    """aAcc (per question), fAcc (per figure, all its questions right; VS without figure excluded),
    qAcc (per question across its figures, all right) and their mean ``avg`` (the paper's column).

    ``verdicts`` (0/1/2 per sample) default to :func:`rule_verdict`.
    """
    if verdicts is None:
        verdicts = [rule_verdict(s.response, s.doc["gt_answer"]) for s in samples]
    if len(verdicts) != len(samples):
        raise ValueError(f"{len(verdicts)} verdicts for {len(samples)} samples")
    fig: dict[tuple, list[bool]] = defaultdict(list)
    que: dict[tuple, list[bool]] = defaultdict(list)
    right = 0
    per_question: list[float] = []
    for s, v in zip(samples, verdicts):
        d = s.doc
        ok = _hb_correct(d, v)
        right += ok
        per_question.append(float(ok))
        base = (d["category"], d["subcategory"], str(d["set_id"]))
        if not (d["category"] == "VS" and str(d["figure_id"]) == "0"):
            fig[(*base, str(d["figure_id"]))].append(ok)
        que[(*base, str(d["question_id"]))].append(ok)
    m = {
        "aAcc": _pct(right, len(samples)),
        "fAcc": _pct(sum(all(v) for v in fig.values()), len(fig)),
        "qAcc": _pct(sum(all(v) for v in que.values()), len(que)),
    }
    m["avg"] = (m["aAcc"] + m["fAcc"] + m["qAcc"]) / 3
    unclear = sum(v == 2 for v in verdicts)
    items = {
        "aAcc": Items("question", [_hb_id(s.doc) for s in samples], per_question),
        "fAcc": Items("figure", ["/".join(k) for k in fig], [float(all(v)) for v in fig.values()]),
        "qAcc": Items("question group", ["/".join(k) for k in que], [float(all(v)) for v in que.values()]),
    }
    return Score(
        m,
        {"questions": len(samples), "figures": len(fig), "question_groups": len(que), "unclear": unclear},
        [],
        {k: v for k, v in items.items() if v.scores},
    )


# --- ScienceQA-IMG --------------------------------------------------------------------------------


def _sqa_n_options(s: Sample) -> int:
    choices = s.doc.get("choices")
    if isinstance(choices, list | tuple) and choices:
        return len(choices)
    return len(options_from_prompt(s.prompt)) or 26


def score_scienceqa(samples: Sequence[Sample]) -> Score:
    """Accuracy with LLaVA's parser (``answer`` is the 0-based index of the right choice)."""
    per = [
        float(parse_scienceqa_llava(s.response, _sqa_n_options(s)) == LETTERS[int(s.doc["answer"])])
        for s in samples
    ]
    right = sum(per)
    failed = sum(parse_scienceqa_llava(s.response, _sqa_n_options(s)) is None for s in samples)
    items = {"accuracy": Items("question", [_row_id(s) for s in samples], per)} if samples else {}
    return Score(
        {"accuracy": _pct(right, len(samples))}, {"questions": len(samples), "unparsed": failed}, [], items
    )


SCORERS: dict[str, Callable[..., Score]] = {
    "mmvp": score_mmvp,
    "cv_bench": score_cv_bench,
    "naturalbench": score_naturalbench,
    "pope": score_pope,
    "hallusion_bench": score_hallusion,
    "scienceqa_img": score_scienceqa,
}
