"""Run one MLLM benchmark for one model through lmms-eval's own task code, keep the per-sample
logs, and score them officially (:mod:`eval.mllm_scoring`).

Audit folder per (model, benchmark, cache key)::

    AUDIT/responses.jsonl        every finished reply, appended as it comes (resume after a crash)
    AUDIT/samples_<task>.jsonl   lmms-eval's per-sample records (doc without images, target, resps)
    AUDIT/harness.json           lmms-eval's own aggregate numbers, for comparison
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.mllm_samples import dedupe, to_samples
from eval.mllm_scoring import ORIGINAL_MMVP_KEY_FIXES, SCORERS, Sample, Score
from eval.mllm_tasks import TaskSet


@dataclass
class ScoreSettings:
    """Choices that change official numbers (recorded with them)."""

    mmvp_answer_key: str = "lmms-lab-eval"
    hallusion_judge: str = "rule"
    hallusion_api_key: str = ""


def lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")


def _jsonable(doc: dict) -> dict:
    return {
        k: (
            v
            if isinstance(v, str | int | float | bool | list | dict | type(None))
            else f"<{type(v).__name__}>"
        )
        for k, v in doc.items()
    }


def write_samples(path: Path, rows: list[dict]) -> Path:
    """One lmms-eval sample record per line, ``doc`` kept (images replaced by a type marker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            out = {k: v for k, v in row.items() if k != "doc"}
            out["doc"] = _jsonable(row.get("doc") or {})
            out["input"] = row["arguments"][0] if row.get("arguments") else row.get("input", "")
            f.write(json.dumps(out, default=str, ensure_ascii=False) + "\n")
    return path


def gpt_verdicts(samples: list[Sample], api_key: str) -> list[int]:
    """HallusionBench verdicts from lmms-eval's GPT-4 judge, one request per sample and no cache file
    reused, so neither a stale cache (``evaluate_hb.py:59-65``) nor the previous sample's reply
    (``hallusion_bench/utils.py:56``) can leak into a verdict."""
    import tempfile

    from lmms_eval.tasks.hallusion_bench import utils as hb

    hb.API_KEY = api_key
    hb.headers = {**getattr(hb, "headers", {}), "Authorization": f"Bearer {api_key}"}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(samples):
            row = {**s.doc, "model_prediction": s.response}
            judged = hb.evaluate_by_chatgpt(
                [row], "model_prediction", "verdict", load_json=False, save_json_path=f"{tmp}/{i}.json"
            )
            out.append(int(judged[0]["verdict"]))
    return out


def score_samples(benchmark: str, samples: list[Sample], settings: ScoreSettings | None = None) -> Score:
    """Official score of one benchmark's samples (NaturalBench: one mode's samples)."""
    settings = settings or ScoreSettings()
    if benchmark == "mmvp":
        fixes = ORIGINAL_MMVP_KEY_FIXES if settings.mmvp_answer_key == "original" else ()
        return SCORERS["mmvp"](samples, fixes)
    if benchmark == "hallusion_bench" and settings.hallusion_judge == "gpt":
        return SCORERS["hallusion_bench"](samples, gpt_verdicts(samples, settings.hallusion_api_key))
    return SCORERS[benchmark](samples)


def metric_records(benchmark: str, score: Score, prefix: str = "") -> list[dict[str, Any]]:
    return [
        {"metric": f"{prefix}{k}", "value": v, "counts": score.counts, "notes": score.notes}
        for k, v in score.metrics.items()
    ]


def run_benchmark(
    model: Any,
    benchmark: str,
    tasks: TaskSet,
    audit_dir: str | Path,
    limit: int | None = None,
    settings: ScoreSettings | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` (a :class:`~eval.lmms_model.GenhancerLlava`) on ``benchmark``'s tasks.

    Returns metric dicts (``metric``, ``value``, ``counts``, ``notes``, ``tasks``, ``task_versions``,
    ``lmms_eval_version``, ``audit``). Replies already in ``audit_dir/responses.jsonl`` are reused.
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from eval.lmms_model import ResponseLog

    audit = Path(audit_dir)
    audit.mkdir(parents=True, exist_ok=True)
    model.responses = ResponseLog(audit / "responses.jsonl")
    names = tasks.names(benchmark)
    tm = TaskManager("WARNING", include_path=str(tasks.root), include_defaults=False)
    with contextlib.redirect_stdout(sys.stderr):  # task code prints (naturalbench/utils.py:140)
        res = simple_evaluate(
            model=model,
            tasks=names,
            task_manager=tm,
            limit=limit,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="WARNING",
        )
    harness = {
        t: {k: v for k, v in res["results"].get(t, {}).items() if "stderr" not in k and k != "alias"}
        for t in names
    }
    (audit / "harness.json").write_text(json.dumps(harness, indent=2, default=str) + "\n")
    versions = {}
    for t in names:
        meta = res.get("configs", {}).get(t, {}).get("metadata")
        meta = meta[0] if isinstance(meta, list) and meta else meta
        versions[t] = (meta or {}).get("version") if isinstance(meta, dict) else None
    per_task = {}
    for t in names:
        rows = res["samples"][t]
        write_samples(audit / f"samples_{t}.jsonl", rows)
        per_task[t] = to_samples(benchmark, rows, t)
    out: list[dict[str, Any]] = []
    if benchmark == "naturalbench":
        for t in names:
            prefix = "" if t.endswith("_lik") else "gen_"
            out += metric_records(benchmark, score_samples(benchmark, per_task[t], settings), prefix)
    else:
        samples = dedupe([s for t in names for s in per_task[t]])
        out += metric_records(benchmark, score_samples(benchmark, samples, settings))
    extra = {
        "tasks": names,
        "task_versions": versions,
        "lmms_eval_version": lmms_eval_version(),
        "audit": str(audit),
    }
    return [{**r, **extra} for r in out]
