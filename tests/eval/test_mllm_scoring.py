"""Official MLLM scores against numbers computed by hand, and each lmms-eval departure they fix
(numbers in comments refer to "Known deviations" in shared/reference/lmms-eval-notes.md)."""

from __future__ import annotations

import pytest

from eval.answer_parsing import (
    options_from_prompt,
    parse_choice,
    parse_naturalbench,
    parse_scienceqa_llava,
    parse_yes_no_llava,
)
from eval.mllm_scoring import (
    ORIGINAL_MMVP_KEY_FIXES,
    Sample,
    rule_verdict,
    score_cv_bench,
    score_hallusion,
    score_mmvp,
    score_naturalbench,
    score_pope,
    score_scienceqa,
)


def S(doc: dict, response: str, prompt: str = "", split: str = "", i: int = 0) -> Sample:
    return Sample(i, response, doc, prompt, split)


# --- parsers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, want",
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) red", "B"),
        ("(B) red", "B"),
        ("B. red", "B"),
        ("B red", "B"),
        ("The answer is (B).", "B"),  # lmms-eval cv_bench: "T" (dev. 8)
        ("Answer: C", "C"),  # lmms-eval cv_bench: "A"
        ("red", "B"),
        ("The shapes are red.", "B"),
        ("A dog is shown", None),  # mmvp/utils.py:55 would say A (dev. 9)
        ("It is a cat", None),
        ("Bob", None),
        ("crab ", None),
        ("Based on the image, (A)", None),  # no letter-first reading; option A text absent
        ("E", None),  # not an option
        ("", None),
    ],
)
def test_parse_choice(reply, want):
    assert parse_choice(reply, ["blue", "red", "green"]) == want


def test_parse_choice_prefers_the_longest_option_text():
    assert parse_choice("It is dark red", ["red", "dark red"]) == "B"
    assert parse_choice("red or blue", ["red", "blue"]) is None


def test_options_from_prompt_reads_both_layouts():
    mmvp = "Is the dog facing left?\nA. yes\nB. no\nAnswer with the option's letter from the given choices directly."
    assert options_from_prompt(mmvp) == ["yes", "no"]
    cv = "Note: ...\n\nHow many? Select from the following choices.\n(A) one\n(B) two\n(C) three"
    assert options_from_prompt(cv) == ["one", "two", "three"]
    assert options_from_prompt("(a) long tusks (b) short tusks") == ["long tusks", "short tusks"]
    assert options_from_prompt("no options here") == []


def test_yes_no_llava_rule():
    assert (
        parse_yes_no_llava("Yes, there is a dog.") == "yes"
    )  # exact-match "yes" fails in lmms-eval (dev. 2)
    assert parse_yes_no_llava("No, there isn't.") == "no"
    assert parse_yes_no_llava("There is not a cat. Yes.") == "no"  # first sentence only
    assert parse_yes_no_llava("") == "yes"  # official: anything without a negation is "yes"


def test_naturalbench_parser_is_the_official_one():
    assert parse_naturalbench("Yes, it is.", "yes_no") == 1
    assert parse_naturalbench("no", "yes_no") == 0
    assert parse_naturalbench("maybe", "yes_no") == -1
    assert parse_naturalbench("It is a dog, so B", "multiple_choice") == 1  # the article counts (dev. 6)
    assert parse_naturalbench("B", "multiple_choice") == 0


def test_scienceqa_llava_parser():
    assert parse_scienceqa_llava("A", 3) == "A"
    assert parse_scienceqa_llava("B. cat", 3) == "B"
    assert parse_scienceqa_llava("The answer is C.", 3) == "C"  # lmms-eval: wrong (dev. 14)
    assert parse_scienceqa_llava("a", 3) is None  # lmms-eval: right
    assert parse_scienceqa_llava("A.", 3) is None  # lmms-eval: right
    assert parse_scienceqa_llava("(A)", 3) is None
    assert parse_scienceqa_llava("D", 3) is None


# --- MMVP -----------------------------------------------------------------------------------------


def _mmvp(index: int, answer: str, reply: str) -> Sample:
    doc = {"Index": index, "Question": "q", "Options": "(a) long (b) short", "Correct Answer": answer}
    return S(doc, reply, i=index - 1)


def test_mmvp_pair_accuracy_by_hand():
    # pair 0 (Index 1,2): both right; pair 1 (3,4): one right; pair 2 (5,6): both right via option text.
    samples = [
        _mmvp(1, "(a)", "A"),
        _mmvp(2, "(b)", "(B) short"),
        _mmvp(3, "(a)", "A"),
        _mmvp(4, "(b)", "It is a cat"),  # lmms-eval reads "a" -> A, also wrong here; ours: None
        _mmvp(5, "(b)", "short"),
        _mmvp(6, "(a)", "The tusks are long."),
    ]
    sc = score_mmvp(samples)
    assert sc.metrics["pair_accuracy"] == pytest.approx(100 * 2 / 3)
    assert sc.metrics["question_accuracy"] == pytest.approx(100 * 5 / 6)
    assert sc.counts == {"questions": 6, "pairs": 3, "pairs_both_right": 2}


def test_mmvp_incomplete_pairs_are_reported_and_left_out():
    sc = score_mmvp([_mmvp(1, "(a)", "A"), _mmvp(2, "(b)", "B"), _mmvp(3, "(a)", "A")])  # --limit 3 (dev. 10)
    assert sc.metrics["pair_accuracy"] == 100.0 and sc.counts["pairs"] == 1
    assert "1 incomplete pair" in sc.notes[0]


def test_mmvp_answer_key_fixes_swap_the_known_pairs():
    samples = [_mmvp(99, "(a)", "A"), _mmvp(100, "(b)", "B")]
    assert score_mmvp(samples).metrics["pair_accuracy"] == 100.0
    fixed = score_mmvp(samples, ORIGINAL_MMVP_KEY_FIXES)  # MMVP/MMVP copies carry the swapped key
    assert fixed.metrics["pair_accuracy"] == 0.0 and fixed.metrics["question_accuracy"] == 0.0


def test_mmvp_zero_based_index_pairs_rows_0_and_1():
    samples = [_mmvp(1, "(a)", "A"), _mmvp(2, "(b)", "B")]
    for s, idx in zip(samples, (0, 1)):
        s.doc["Index"] = idx
    sc = score_mmvp(samples)
    assert sc.counts["pairs"] == 1 and "0-based" in sc.notes[-1]


# --- CV-Bench -------------------------------------------------------------------------------------


def _cv(source: str, answer: str, reply: str) -> Sample:
    prompt = "How many? Select from the following choices.\n(A) one\n(B) two\n(C) three"
    return S(
        {"source": source, "answer": answer, "prompt": prompt, "choices": ["one", "two", "three"]}, reply
    )


def test_cv_bench_official_overall_by_hand():
    # The notes' example: ADE 3/3, COCO 0/1, Omni3D 1/2 -> micro 4/6, official ((100+0)/2 + 50)/2 = 50.
    samples = [
        _cv("ADE20K", "(A)", "A"),
        _cv("ADE20K", "(B)", "The answer is (B)."),
        _cv("ADE20K", "(C)", "three"),
        _cv("COCO", "(A)", "Based on the image, (B)"),
        _cv("Omni3D", "(B)", "B) two"),
        _cv("Omni3D", "(A)", "C"),
    ]
    m = score_cv_bench(samples).metrics
    assert (m["ADE20K"], m["COCO"], m["Omni3D"]) == (100.0, 0.0, 50.0)
    assert m["2D"] == 50.0 and m["3D"] == 50.0 and m["overall"] == 50.0
    assert m["micro"] == pytest.approx(100 * 4 / 6)


def test_cv_bench_missing_source_leaves_out_overall_instead_of_crashing():
    m = score_cv_bench([_cv("ADE20K", "(A)", "A"), _cv("Omni3D", "(A)", "B")]).metrics
    assert m["ADE20K"] == 100.0 and m["3D"] == 0.0 and "2D" not in m and "overall" not in m


# --- NaturalBench ---------------------------------------------------------------------------------


def _nb_group(g: int, replies: list[str], qtype: str = "yes_no") -> list[Sample]:
    answers = ("Yes", "No", "No", "Yes") if qtype == "yes_no" else ("A", "B", "B", "A")
    return [
        S({"Index": 4 * g + k, "Question_Type": qtype, "answer": answers[k]}, r, i=4 * g + k)
        for k, r in enumerate(replies)
    ]


def test_naturalbench_four_metrics_by_hand():
    samples = (
        _nb_group(0, ["Yes", "No", "No", "Yes"])  # all right
        + _nb_group(1, ["Yes", "Yes", "No", "Yes"])  # q0 wrong on i1: q1 ok, i0 ok
        + _nb_group(2, ["B", "B", "B", "A"], "multiple_choice")  # q0_i0 wrong: q1 ok, i1 ok
    )
    sc = score_naturalbench(samples)
    # Acc 10/12; Q: g0 2, g1 1, g2 1 -> 4/6; I: g0 2, g1 1, g2 1 -> 4/6; G: 1/3
    assert sc.metrics["Acc"] == pytest.approx(100 * 10 / 12)
    assert sc.metrics["Q_Acc"] == pytest.approx(100 * 4 / 6)
    assert sc.metrics["I_Acc"] == pytest.approx(100 * 4 / 6)
    assert sc.metrics["G_Acc"] == pytest.approx(100 / 3)


def test_naturalbench_subset_scores_instead_of_asserting_7600_rows():
    samples = _nb_group(0, ["Yes", "No", "No", "Yes"]) + _nb_group(1, ["Yes", "No"])  # --limit 6 (dev. 5)
    sc = score_naturalbench(samples)
    assert sc.metrics["Acc"] == 100.0 and sc.metrics["G_Acc"] == 100.0 and sc.counts["groups"] == 1
    assert "incomplete group" in sc.notes[0]


def test_naturalbench_uses_the_answer_column_not_the_row_position():
    samples = _nb_group(0, ["Yes", "No", "No", "Yes"])
    shuffled = [samples[2], samples[0], samples[3], samples[1]]
    assert score_naturalbench(shuffled).metrics["G_Acc"] == 100.0


# --- POPE -----------------------------------------------------------------------------------------


def _pope(answer: str, reply: str, split: str = "random") -> Sample:
    return S({"answer": answer, "category": split, "question_id": "1"}, reply)


def test_pope_always_no_has_yes_ratio_zero():
    samples = [_pope("yes", "No"), _pope("yes", "No"), _pope("no", "No"), _pope("no", "No")]
    m = score_pope(samples).metrics  # lmms-eval: yes_ratio 0.5 from the ground truth (dev. 1)
    assert m["random/yes_ratio"] == 0.0 and m["random/accuracy"] == 50.0
    assert m["random/precision"] == 0.0 and m["random/recall"] == 0.0 and m["random/f1"] == 0.0


def test_pope_per_split_metrics_by_hand():
    samples = [
        _pope("yes", "Yes, there is a dog."),  # TP (lmms-eval: neither yes nor no, dev. 2)
        _pope("yes", "No, there isn't."),  # FN
        _pope("no", "Yes."),  # FP
        _pope("no", "no"),  # TN
        _pope("yes", "yes", "adversarial"),  # TP
        _pope("no", "There is not.", "adversarial"),  # TN
    ]
    sc = score_pope(samples)
    m = sc.metrics
    assert m["random/accuracy"] == 50.0 and m["random/precision"] == 50.0 and m["random/recall"] == 50.0
    assert m["random/f1"] == 50.0 and m["random/yes_ratio"] == 50.0
    assert m["adversarial/f1"] == 100.0 and m["adversarial/yes_ratio"] == 50.0
    assert m["f1_mean"] == 75.0 and sc.counts == {"random": 4, "adversarial": 2}
    assert not any(k.startswith("popular") for k in m)


def test_pope_split_from_the_task_when_category_is_unknown():
    s = S({"answer": "yes"}, "yes", split="popular")
    assert "popular/f1" in score_pope([s]).metrics


# --- HallusionBench -------------------------------------------------------------------------------


def _hb(cat: str, set_id: str, fig: str, q: str, gt: str, reply: str) -> Sample:
    doc = {"category": cat, "subcategory": "chart", "set_id": set_id, "figure_id": fig, "question_id": q}
    return S({**doc, "gt_answer": gt, "visual_input": "0" if fig == "0" and cat == "VS" else "1"}, reply)


def test_rule_verdicts():
    assert rule_verdict("Yes, it is.", "1") == 1
    assert rule_verdict("No.", "1") == 0
    assert rule_verdict("I cannot tell", "0") == 2


def test_hallusion_three_metrics_by_hand():
    samples = [
        # VD set 0: figures 0 and 1, questions 0 and 1
        _hb("VD", "0", "0", "0", "1", "Yes"),
        _hb("VD", "0", "0", "1", "0", "No"),
        _hb("VD", "0", "1", "0", "0", "No"),
        _hb("VD", "0", "1", "1", "1", "No"),  # wrong
        # VS set 1: figure 0 (no figure: "unclear" also counts) and figure 1
        _hb("VS", "1", "0", "0", "1", "Unsure"),  # verdict 2 -> correct here
        _hb("VS", "1", "1", "0", "0", "Yes"),  # wrong
    ]
    sc = score_hallusion(samples)
    m = sc.metrics
    # aAcc: 4/6 right. fAcc: figures VD0-0 ok, VD0-1 no, VS1-1 no (VS fig 0 excluded) -> 1/3.
    # qAcc: VD0-q0 ok (yes,no), VD0-q1 no, VS1-q0 no -> 1/3.
    assert m["aAcc"] == pytest.approx(100 * 4 / 6)
    assert m["fAcc"] == pytest.approx(100 / 3) and m["qAcc"] == pytest.approx(100 / 3)
    assert m["avg"] == pytest.approx((m["aAcc"] + m["fAcc"] + m["qAcc"]) / 3)
    assert sc.counts["unclear"] == 1 and sc.counts["figures"] == 3


def test_hallusion_takes_external_verdicts():
    samples = [_hb("VD", "0", "0", "0", "1", "whatever")]
    assert score_hallusion(samples, [1]).metrics["aAcc"] == 100.0
    with pytest.raises(ValueError):
        score_hallusion(samples, [1, 0])


# --- ScienceQA-IMG --------------------------------------------------------------------------------


def test_scienceqa_accuracy_by_hand():
    doc = {"choices": ["cat", "dog", "cow"], "answer": 1}
    replies = ["B", "B. dog", "The answer is B.", "b", "B.", "(B)"]
    sc = score_scienceqa([S(doc, r) for r in replies])
    assert sc.metrics["accuracy"] == 50.0 and sc.counts == {"questions": 6, "unparsed": 3}
