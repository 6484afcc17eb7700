"""Official MLLM scores against numbers computed by hand, and each lmms-eval departure they fix
(numbers in comments refer to "Known deviations" in README.md, "lmms-eval 0.7.3 departures")."""

from __future__ import annotations

import pytest

from eval.mllm.answer_parsing import (
    options_from_prompt,
    parse_choice,
    parse_naturalbench,
    parse_scienceqa_llava,
    parse_yes_no_llava,
)
from eval.mllm.scoring import (
    ORIGINAL_MMVP_KEY_FIXES,
    Sample,
    naturalbench_label,
    rule_verdict,
    score_cv_bench,
    score_hallusion,
    score_mmvp,
    score_naturalbench,
    score_pope,
    score_scienceqa,
)
from genhancer.runtime.errors import UserError


def S(doc: dict, response: str, prompt: str = "", split: str = "", i: int = 0) -> Sample:
    return Sample(i, response, doc, prompt, split)


# --- parsers: each table is a set of real-looking replies with the official reading by hand -------

# MMVP / CV-Bench (ours: their official graders are GPT-4 / Cambrian's; the rule must not read
# prose as a letter). Options: (A) blue, (B) red, (C) green.
CHOICE_TABLE = [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B) red", "B"),
    ("(B) red", "B"),
    ("B. red", "B"),
    ("B red", "B"),
    ("The answer is (B).", "B"),  # lmms-eval cv_bench: "T" (dev. 8)
    ("The answer is B.", "B"),
    ("The answer is a dog.", None),  # the article is not option A (lmms-eval mmvp: A)
    ("The answer is (a).", "A"),  # MMVP's own lowercase option spelling, in parentheses
    ("answer: c", None),  # a bare lowercase letter after the cue is not read
    ("Answer: C", "C"),  # lmms-eval cv_bench: "A"
    ("Option B is correct.", "B"),
    ("The answer is Blue", "A"),  # no letter B here: the option text blue
    ("red", "B"),
    ("The shapes are red.", "B"),
    ("I think it's red, not green", None),  # two option texts: no reading
    ("A dog is shown", None),  # mmvp/utils.py:55 would say A (dev. 9)
    ("It is a cat", None),
    ("Bob", None),
    ("crab ", None),
    ("Based on the image, (A)", None),  # no letter-first reading; option A text absent
    ("E", None),  # not an option
    ("", None),
]


@pytest.mark.parametrize("reply, want", CHOICE_TABLE)
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


# POPE: LLaVA eval_pope.py keeps the text before the first ".", drops commas, splits on spaces, and
# says "no" iff a word is exactly No, no or not; everything else is "yes".
POPE_TABLE = [
    ("Yes", "yes"),
    ("No", "no"),
    ("yes", "yes"),
    ("no", "no"),
    ("Yes, there is a dog in the image.", "yes"),  # lmms-eval: neither yes nor no (dev. 2)
    ("No, there is no dog.", "no"),
    ("There is no dog.", "no"),
    ("There is not a dog in the image.", "no"),
    ("No.", "no"),
    ("Yes. There is no cat.", "yes"),  # first sentence only
    ("There is a cat, not a dog.", "no"),
    ("no, it isn't", "no"),
    ("It does not.", "no"),
    ("NO", "yes"),  # the words are case-sensitive
    ("Not really.", "yes"),
    ("Nope", "yes"),
    ("I cannot tell.", "yes"),
    ("There is a no-parking sign.", "yes"),
    ("There's no\nperson", "yes"),  # split on spaces only: "no\nperson" is one word
    ("Yes,no", "yes"),  # the comma is dropped: "Yesno"
    ("", "yes"),  # an empty reply counts as "yes"
]


@pytest.mark.parametrize("reply, want", POPE_TABLE)
def test_yes_no_llava_rule(reply, want):
    assert parse_yes_no_llava(reply) == want


# NaturalBench: official extract_answer (naturalbench/utils.py:106, Baiqi-Li/NaturalBench example.py):
# the first whole word yes/A -> 1 or no/B -> 0, case-insensitive; -1 when neither.
NATURALBENCH_TABLE = [
    ("Yes", "yes_no", 1),
    ("No", "yes_no", 0),
    ("yes.", "yes_no", 1),
    ("NO", "yes_no", 0),
    ("No, yes", "yes_no", 0),
    ("Yes or no?", "yes_no", 1),
    ("There is no dog", "yes_no", 0),
    ("maybe", "yes_no", -1),
    ("nothing", "yes_no", -1),
    ("I know", "yes_no", -1),
    ("Yesterday", "yes_no", -1),
    ("A", "multiple_choice", 1),
    ("B", "multiple_choice", 0),
    ("(B)", "multiple_choice", 0),
    ("a", "multiple_choice", 1),
    ("It is a dog, so B", "multiple_choice", 1),  # the article counts, as in the official code (dev. 6)
    ("B. a cat", "multiple_choice", 0),
    ("Option B", "multiple_choice", 0),
    ("The answer is B", "multiple_choice", 0),
    ("Both", "multiple_choice", -1),
    ("C", "multiple_choice", -1),
    ("", "multiple_choice", -1),
]


@pytest.mark.parametrize("reply, kind, want", NATURALBENCH_TABLE)
def test_naturalbench_parser_is_the_official_one(reply, kind, want):
    assert parse_naturalbench(reply, kind) == want


# ScienceQA: LLaVA eval_science_qa.py: the reply is one of A-E; or "X. " at its start; or
# re.findall(r"The answer is ([A-Z]).") finds exactly one letter (the "." is any character);
# a letter past the question's choices is wrong. lmms-eval reads several of these differently (dev. 14).
SCIENCEQA_TABLE = [
    ("A", 3, "A"),
    ("C", 3, "C"),
    (" A ", 3, "A"),  # LLaVA's answer writer strips the reply
    ("D", 3, None),  # a letter of A-E, but the question has 3 choices
    ("B. cat", 3, "B"),
    ("B.", 3, None),  # lmms-eval: right
    ("B.cat", 3, None),
    ("a", 3, None),  # lmms-eval: right
    ("(A)", 3, None),
    ("Answer: A", 3, None),
    ("The answer is C.", 3, "C"),  # lmms-eval: wrong
    ("The answer is C, because the cat is brown.", 3, "C"),
    ("The answer is C", 3, None),  # at the very end: the pattern's "." needs one more character
    ("The answer is Cat.", 3, "C"),  # "." matches "a"
    ("the answer is C.", 3, None),  # case-sensitive
    ("The answer is (C).", 3, None),
    ("The answer is C. The answer is B.", 3, None),  # two matches
    ("The answer is A.The answer is A.", 3, None),
    ("E", 5, "E"),
    ("F", 6, None),  # the script's options stop at E
    ("E. dog", 4, None),
    ("A\nB", 3, None),
]


@pytest.mark.parametrize("reply, n, want", SCIENCEQA_TABLE)
def test_scienceqa_llava_parser(reply, n, want):
    assert parse_scienceqa_llava(reply, n) == want


# HallusionBench's rule judge (ours, offline stand-in for the GPT judge): the first whole word
# yes/no against gt_answer ("1" = yes); neither -> 2 (unclear).
RULE_TABLE = [
    ("Yes", "1", 1),
    ("Yes, it is.", "1", 1),
    ("No.", "1", 0),
    ("no", "0", 1),
    ("No, the bar is shorter.", "0", 1),
    ("YES", "0", 0),
    ("Yes and no", "0", 0),
    ("I cannot tell", "0", 2),
    ("Nothing is shown", "1", 2),
    ("", "1", 2),
]


@pytest.mark.parametrize("reply, gt, want", RULE_TABLE)
def test_rule_verdicts(reply, gt, want):
    assert rule_verdict(reply, gt) == want


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
    assert sc.counts == {"questions": 6, "pairs": 3, "pairs_both_right": 2, "rows_left_out": 0}


def test_mmvp_complete_run_divides_by_150_pairs():
    # 300 questions, all right, but one row's Index is 301 (a mislabelled row): 149 pairs can be
    # formed. Official: 149 / 150 pairs; dividing by the pairs seen would say 149 / 149 = 100.
    samples = [_mmvp(i, "(a)" if i % 2 else "(b)", "A" if i % 2 else "B") for i in range(1, 301)]
    samples[-1].doc["Index"] = 301
    sc = score_mmvp(samples)
    assert sc.metrics["pair_accuracy"] == pytest.approx(100 * 149 / 150)
    assert sc.counts["pairs"] == 150 and sc.counts["rows_left_out"] == 2
    assert sc.metrics["question_accuracy"] == 100.0


def test_mmvp_incomplete_pairs_are_reported_and_left_out():
    sc = score_mmvp([_mmvp(1, "(a)", "A"), _mmvp(2, "(b)", "B"), _mmvp(3, "(a)", "A")])  # --limit 3 (dev. 10)
    assert sc.metrics["pair_accuracy"] == 100.0 and sc.counts["pairs"] == 1
    assert sc.counts["rows_left_out"] == 1 and "1 incomplete pair" in sc.notes[0]


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
    # The real columns (no answer column): the expected answer is the position in the group.
    return [S({"Index": 4 * g + k, "Question_Type": qtype}, r, i=4 * g + k) for k, r in enumerate(replies)]


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
    assert sc.counts["rows_left_out"] == 2 and "incomplete group" in sc.notes[0]


def test_naturalbench_expected_answers_come_from_the_index_not_a_column_or_the_row_order():
    samples = _nb_group(0, ["Yes", "No", "No", "Yes"])
    for s, wrong in zip(samples, ("No", "Yes", "Yes", "No")):
        s.doc["answer"] = wrong  # any answer column is ignored, as by the official scorer
    shuffled = [samples[2], samples[0], samples[3], samples[1]]
    assert score_naturalbench(shuffled).metrics["G_Acc"] == 100.0
    assert naturalbench_label(4 * 7 + 0) == 1 and naturalbench_label(4 * 7 + 1) == 0
    assert naturalbench_label(4 * 7 + 2) == 0 and naturalbench_label(4 * 7 + 3) == 1


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


def test_pooled_pope_without_category_names_the_task_to_run_instead():
    sc = score_pope([S({"answer": "yes"}, "yes", split="all"), S({"answer": "no"}, "yes", split="all")])
    assert sc.metrics["all/accuracy"] == 50.0 and sc.metrics["all/yes_ratio"] == 100.0
    assert "pope_full" in sc.notes[0] and "pope_adv, pope_pop, pope_random" in sc.notes[0]


# --- HallusionBench -------------------------------------------------------------------------------


def _hb(cat: str, set_id: str, fig: str, q: str, gt: str, reply: str) -> Sample:
    doc = {"category": cat, "subcategory": "chart", "set_id": set_id, "figure_id": fig, "question_id": q}
    return S({**doc, "gt_answer": gt, "visual_input": "0" if fig == "0" and cat == "VS" else "1"}, reply)


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


class _Reply:
    def __init__(self, text: str | None, status: int = 200):
        self.text, self.status = text, status

    def raise_for_status(self):
        if self.status != 200:
            raise RuntimeError(f"HTTP {self.status}")

    def json(self):
        return {"choices": [{"message": {"content": self.text}}]}


def test_gpt_judge_reads_verdicts_the_official_way():
    from eval.mllm.run import gpt_verdicts

    replies = iter(["Correct", "incorrect.", "The answer is unclear", "correct"])
    seen = []

    def post(url, headers, json, timeout):
        seen.append(json["messages"][0]["content"])
        return _Reply(next(replies))

    samples = [_hb("VD", "0", "0", str(q), "1", "Yes") for q in range(4)]
    for s in samples:
        s.doc.update(question="Is it red?", gt_answer_details="It is red.")
    assert gpt_verdicts(samples, "key", post=post, wait_s=0) == [1, 0, 2, 1]
    assert "Question:Is it red?\nReference answer: It is red.\nPrediction answer:Yes\nOutput:" in seen[0]


def test_gpt_judge_failures_are_an_error_not_a_wrong_answer():
    from eval.mllm.run import gpt_verdicts

    calls = []

    def post(url, headers, json, timeout):
        calls.append(1)
        if len(calls) == 1:
            return _Reply("correct")  # sample 0: fine
        return _Reply(None, status=503)  # sample 1: three failed tries

    samples = [_hb("VD", "0", "0", str(q), "1", "Yes") for q in range(2)]
    with pytest.raises(UserError, match=r"failed on 1 of 2 question\(s\).*HTTP 503.*nothing recorded"):
        gpt_verdicts(samples, "key", post=post, wait_s=0)
    assert len(calls) == 1 + 3  # retried, then stopped: no silent "unclear"


# --- ScienceQA-IMG --------------------------------------------------------------------------------


def test_scienceqa_accuracy_by_hand():
    doc = {"choices": ["cat", "dog", "cow"], "answer": 1}
    replies = ["B", "B. dog", "The answer is B.", "b", "B.", "(B)"]
    sc = score_scienceqa([S(doc, r) for r in replies])
    assert sc.metrics["accuracy"] == 50.0 and sc.counts == {"questions": 6, "unparsed": 3}


# --- rows against the official sizes --------------------------------------------------------------


def _rows(task: str, n: int, split: str = "") -> list[Sample]:
    return [Sample(i, "", {}, split=split, source=task) for i in range(n)]


def test_official_sizes_make_a_complete_run():
    from eval.mllm.coverage import check_rows

    cv = check_rows("cv_bench", _rows("cv_bench_2d", 1438) + _rows("cv_bench_3d", 1200))
    assert cv.complete and cv.total == 2638 and cv.coverage().startswith("complete (2638 rows")
    splits = [("pope_random", "random"), ("pope_pop", "popular"), ("pope_adv", "adversarial")]
    pope = check_rows("pope", [s for t, sp in splits for s in _rows(t, 3000, sp)])
    assert pope.complete and pope.total == 9000
    assert check_rows("mmvp", _rows("genhancer_mmvp", 300)).complete
    hb = check_rows("hallusion_bench", _rows("hallusion_bench_image", 951))
    assert not hb.complete and hb.coverage().startswith("partial: 951 of 1129 rows")  # image split only
    assert check_rows("scienceqa_img", _rows("scienceqa", 4241), official_rows=4241).complete


def test_row_problems_are_counted_per_task():
    from eval.mllm.coverage import check_rows

    rows = _rows("pope_random", 3000, "random")
    del rows[10]  # a hole
    rows += _rows("pope_random", 2, "random")  # doc 0 and 1 again
    rows.append(Sample(3000, "", {}, split="random", source="pope_random"))  # past the 3,000 rows
    r = check_rows("pope", rows + _rows("pope", 5, "all"))
    assert r.duplicates == {"pope_random": 2} and r.missing["pope_random"] == 1
    assert r.extra["pope_random"] == 1 and not r.complete
    assert "part 'random' is in 2 logs (pope, pope_random)" in r.problems()
