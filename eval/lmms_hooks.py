"""Aggregation hooks our generated task YAMLs name (``!function eval.lmms_hooks.<fn>``).

They replace two built-in aggregations that cannot run offline or on a subset (see
:mod:`eval.mllm_tasks`) and give the harness's own results table sensible numbers. They see only
what the built-in ``process_results`` emitted, so NaturalBench's expected answers come from the
row position here, as in lmms-eval (``naturalbench/utils.py:9``); the leaderboard's recorded
numbers come from :mod:`eval.mllm_scoring` on the full per-sample logs instead. Scales follow the
built-in tasks: NaturalBench 0-1, HallusionBench 0-100.
"""

from __future__ import annotations

from eval.mllm_scoring import Sample, score_hallusion, score_naturalbench

_NB_EXPECTED = ("yes", "no", "no", "yes")  # q0_i0, q0_i1, q1_i0, q1_i1 (naturalbench/utils.py:9)


def _nb(results: list[dict], metric: str) -> float:
    samples = []
    for r in results:
        idx, label = int(r["id"]), int(r["score"])
        said = {1: "yes", 0: "no"}.get(label, "")
        doc = {"Index": idx, "Question_Type": "yes_no", "answer": _NB_EXPECTED[idx % 4]}
        samples.append(Sample(idx, said, doc))
    return score_naturalbench(samples).metrics[metric] / 100 if samples else 0.0


def naturalbench_acc(results: list[dict]) -> float:
    return _nb(results, "Acc")


def naturalbench_q_acc(results: list[dict]) -> float:
    return _nb(results, "Q_Acc")


def naturalbench_i_acc(results: list[dict]) -> float:
    return _nb(results, "I_Acc")


def naturalbench_g_acc(results: list[dict]) -> float:
    return _nb(results, "G_Acc")


def _hb(results: list[dict], metric: str) -> float:
    samples = [Sample(i, str(r.get("model_prediction", "")), r) for i, r in enumerate(results)]
    return score_hallusion(samples).metrics[metric] if samples else 0.0


def hallusion_aacc(results: list[dict]) -> float:
    return _hb(results, "aAcc")


def hallusion_facc(results: list[dict]) -> float:
    return _hb(results, "fAcc")


def hallusion_qacc(results: list[dict]) -> float:
    return _hb(results, "qAcc")
