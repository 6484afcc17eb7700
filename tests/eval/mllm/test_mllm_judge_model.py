"""The HallusionBench GPT judge is a dated snapshot from the config, sent in every request and
recorded; the rule judge stays the offline default."""

from __future__ import annotations

import pytest

from eval.config import HALLUSION_JUDGE_MODEL, load_config
from eval.mllm.run import ScoreSettings, gpt_verdicts, score_samples
from eval.mllm.scoring import Sample
from genhancer.runtime.errors import UserError


class _Reply:
    def raise_for_status(self):
        pass

    def json(self):
        return {"choices": [{"message": {"content": "correct"}}]}


def _sample() -> Sample:
    doc = {"category": "VD", "subcategory": "c", "set_id": "0", "figure_id": "0", "question_id": "0"}
    return Sample(0, "Yes", {**doc, "gt_answer": "1", "question": "q", "gt_answer_details": "yes"})


def test_default_is_the_rule_judge_and_a_dated_gpt_model():
    cfg = load_config()
    assert cfg.lmms.hallusion_judge == "rule"
    assert cfg.lmms.hallusion_judge_model == HALLUSION_JUDGE_MODEL == "gpt-4-0613"
    assert ScoreSettings().judge() == "rule"
    assert ScoreSettings(hallusion_judge="gpt").judge() == "gpt:gpt-4-0613"


def test_the_configured_model_is_the_one_requested():
    models = []

    def post(url, headers, json, timeout):
        models.append(json["model"])
        return _Reply()

    assert gpt_verdicts([_sample()], "key", post=post, wait_s=0) == [1]
    assert gpt_verdicts([_sample()], "key", post=post, wait_s=0, model="gpt-4-1106-preview") == [1]
    assert models == ["gpt-4-0613", "gpt-4-1106-preview"]


def test_rule_judge_needs_no_network():
    sc = score_samples("hallusion_bench", [_sample()], ScoreSettings())
    assert sc.metrics["aAcc"] == 100.0


def test_empty_judge_model_is_a_config_error():
    with pytest.raises(UserError, match="hallusion_judge_model"):
        load_config(overrides=["lmms.hallusion_judge_model="])
