"""MMVP-VLM scoring by hand: similarity matrices in, pattern accuracies out (ties included)."""

from __future__ import annotations

import pytest

from eval.clip.mmvp_vlm import score_pairs, statement_correct

# sims[statement][image]; statement 0 describes image 0, statement 1 image 1.
BOTH_RIGHT = [[2.0, 1.0], [0.5, 3.0]]
FIRST_WRONG = [[1.0, 2.0], [0.5, 3.0]]
SECOND_WRONG = [[2.0, 1.0], [3.0, 0.5]]
SAME_IMAGE_WINS = [[5.0, 1.0], [4.0, 1.0]]  # the typical CLIP failure: one image wins both
TIE_FIRST = [[1.0, 1.0], [0.0, 1.0]]
TIE_SECOND = [[2.0, 1.0], [1.5, 1.5]]


@pytest.mark.parametrize(
    "sims, expected",
    [
        (BOTH_RIGHT, (True, True)),
        (FIRST_WRONG, (False, True)),
        (SECOND_WRONG, (True, False)),
        (SAME_IMAGE_WINS, (True, False)),
        (TIE_FIRST, (False, True)),
        (TIE_SECOND, (True, False)),
    ],
)
def test_statement_correct_by_hand(sims, expected):
    assert statement_correct(sims) == expected


def test_large_logits_do_not_overflow():
    # CLIP logits are scaled by 100; the softmax must stay finite.
    assert statement_correct([[1000.0, 999.0], [-500.0, -499.5]]) == (True, True)


def test_two_pattern_fixture_by_hand():
    # pattern A: 3 pairs (right, tie in statement 2, right) -> 2/3 = 66.7
    # pattern B: 2 pairs (one image wins both, right) -> 1/2 = 50.0
    sims = [BOTH_RIGHT, TIE_SECOND, BOTH_RIGHT, SAME_IMAGE_WINS, BOTH_RIGHT]
    patterns = ["A", "A", "A", "B", "B"]
    score = score_pairs(sims, patterns)
    assert score.per_pattern == {"A": 66.7, "B": 50.0}
    assert score.average == round((200 / 3 + 50) / 2, 1) == 58.3
    assert score.pair_correct == [True, False, True, False, True]
    assert score.statement_correct[1] == (True, False)
    assert score.metrics() == {"A": 66.7, "B": 50.0, "average": 58.3}


def test_all_ties_score_zero():
    # A constant model gets nothing (the official script would credit the second statement).
    score = score_pairs([[[0.0, 0.0], [0.0, 0.0]]] * 4, ["A", "A", "B", "B"])
    assert score.per_pattern == {"A": 0.0, "B": 0.0} and score.average == 0.0


def test_average_is_mean_of_patterns_not_of_pairs():
    score = score_pairs([BOTH_RIGHT, BOTH_RIGHT, BOTH_RIGHT, FIRST_WRONG], ["A", "B", "B", "B"])
    assert score.per_pattern == {"A": 100.0, "B": 66.7}
    assert score.average == 83.3  # pairs would give 75.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        score_pairs([BOTH_RIGHT], ["A", "B"])
