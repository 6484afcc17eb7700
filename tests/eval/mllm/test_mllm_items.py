"""Per-unit results kept by the MLLM scorers: units named as the benchmark pairs/groups them, and
every metric recomputed from its items equal to the scorer's own number."""

from __future__ import annotations

import pytest

from eval.mllm.scoring import (
    Sample,
    score_cv_bench,
    score_hallusion,
    score_mmvp,
    score_naturalbench,
    score_pope,
    score_scienceqa,
)


def _check(score) -> dict[str, str]:
    for metric, items in score.items.items():
        assert items.value() == pytest.approx(score.metrics[metric]), metric
    return {m: it.unit for m, it in score.items.items()}


def test_mmvp_items_are_pairs():
    doc = lambda i, a: {"Index": i, "Options": "(a) x (b) y", "Correct Answer": a}  # noqa: E731
    samples = [
        Sample(0, "A", doc(1, "(a)")),
        Sample(1, "B", doc(2, "(b)")),
        Sample(2, "A", doc(3, "(a)")),
        Sample(3, "A", doc(4, "(b)")),  # pair 1: one of two right
    ]
    sc = score_mmvp(samples)
    assert _check(sc) == {"pair_accuracy": "pair", "question_accuracy": "pair"}
    assert sc.items["pair_accuracy"].scores == [1.0, 0.0]
    assert sc.items["question_accuracy"].scores == [1.0, 0.5]


def test_naturalbench_items_are_groups():
    expected = ["Yes", "No", "No", "Yes"]
    samples = [Sample(k, r, {"Index": k, "Question_Type": "yes_no"}) for k, r in enumerate(expected)]
    samples += [
        Sample(4 + k, r, {"Index": 4 + k, "Question_Type": "yes_no"}) for k, r in enumerate(["Yes"] * 4)
    ]
    samples += [Sample(8, "Yes", {"Index": 8, "Question_Type": "yes_no"})]  # an incomplete group
    sc = score_naturalbench(samples)
    assert set(_check(sc).values()) == {"group"}
    assert sc.items["G_Acc"].ids == [0, 1] and sc.items["Acc"].ids == [0, 1, 2]
    assert sc.items["Acc"].weights == [4, 4, 1]


def test_cv_bench_overall_items_carry_the_official_weights():
    def cv(src, ans, reply, i):
        return Sample(i, reply, {"source": src, "answer": ans, "prompt": "(A) one\n(B) two"})

    samples = [
        cv("ADE20K", "(A)", "A", 0),
        cv("ADE20K", "(A)", "B", 1),
        cv("COCO", "(B)", "B", 2),
        cv("Omni3D", "(A)", "A", 3),
        cv("Omni3D", "(A)", "B", 4),
        cv("Omni3D", "(B)", "B", 5),
    ]
    sc = score_cv_bench(samples)
    assert set(_check(sc).values()) == {"question"}
    assert sc.items["overall"].stratum_weights == {"ADE20K": 0.25, "COCO": 0.25, "Omni3D": 0.5}


def test_pope_hallusion_scienceqa_items():
    pope = [
        Sample(i, r, {"answer": a, "category": "random"})
        for i, (a, r) in enumerate([("yes", "yes"), ("no", "yes")])
    ]
    sc = score_pope(pope)
    units = _check(sc)
    assert units == {"random/accuracy": "question", "random/yes_ratio": "question"}  # F1: no items
    hb = [
        Sample(
            0,
            "Yes",
            {
                "category": "VD",
                "subcategory": "c",
                "set_id": "0",
                "figure_id": "0",
                "question_id": "0",
                "gt_answer": "1",
            },
        ),
        Sample(
            1,
            "Yes",
            {
                "category": "VD",
                "subcategory": "c",
                "set_id": "0",
                "figure_id": "1",
                "question_id": "0",
                "gt_answer": "0",
            },
        ),
    ]
    assert _check(score_hallusion(hb)) == {"aAcc": "question", "fAcc": "figure", "qAcc": "question group"}
    sqa = [
        Sample(0, "A", {"answer": 0, "choices": ["x", "y"]}),
        Sample(1, "A", {"answer": 1, "choices": ["x", "y"]}),
    ]
    assert _check(score_scienceqa(sqa)) == {"accuracy": "question"}
