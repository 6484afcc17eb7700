"""Aggregation hooks our generated task YAMLs name (``!function eval.mllm.hooks.<fn>``).

They replace two built-in aggregations that cannot run offline or on a subset (see
:mod:`eval.mllm.tasks`) and give the harness's own results table sensible numbers. They see only
what the built-in ``process_results`` emitted: NaturalBench's parsed label (1 yes/A, 0 no/B,
-1 neither) and ``Index``, whose position in its group fixes the expected answer
(:func:`eval.mllm.scoring.naturalbench_label`). The leaderboard's recorded numbers come from
:mod:`eval.mllm.scoring` on the full per-sample logs instead. Scales follow the built-in tasks:
NaturalBench 0-1, HallusionBench 0-100.
"""

from __future__ import annotations

from typing import Any

from eval.mllm.scoring import Sample, score_hallusion, score_naturalbench


def hb_doc_to_visual(doc: dict[str, Any]) -> list:
    """HallusionBench's image, or no visual for a ``non_image`` row (its ``image`` is None)."""
    image = doc.get("image")
    return [image.convert("RGB")] if image is not None else []


def _nb(results: list[dict], metric: str) -> float:
    samples = []
    for r in results:
        idx, label = int(r["id"]), int(r["score"])
        said = {1: "yes", 0: "no"}.get(label, "")
        samples.append(Sample(idx, said, {"Index": idx, "Question_Type": "yes_no"}))
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
