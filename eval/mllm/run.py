"""Run one MLLM benchmark for one model through lmms-eval's own task code, keep the per-sample
logs, and score them officially (:mod:`eval.mllm.scoring`).

Audit folder per (model, benchmark, cache key)::

    AUDIT/responses.jsonl        every finished reply, appended as it comes (resume after a crash)
    AUDIT/samples_<task>.jsonl   lmms-eval's per-sample records (doc without images, target, resps)
    AUDIT/harness.json           lmms-eval's own aggregate numbers, for comparison
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from eval.config import HALLUSION_JUDGE_MODEL
from eval.mllm.coverage import RowReport, check_rows, group_official_rows, task_info
from eval.mllm.lmms_model import ResponseLog
from eval.mllm.samples import dedupe, to_samples
from eval.mllm.scoring import ORIGINAL_MMVP_KEY_FIXES, SCORERS, Sample, Score
from eval.mllm.tasks import TaskSet
from genhancer.runtime.errors import UserError


@dataclass
class ScoreSettings:
    """Choices that change official numbers (recorded with them)."""

    mmvp_answer_key: str = "lmms-lab-eval"
    hallusion_judge: str = "rule"
    hallusion_api_key: str = ""
    hallusion_judge_model: str = HALLUSION_JUDGE_MODEL
    mmvp_patterns: dict[int, str] | None = None  # {0-based pair: pattern}: MMVP per pattern

    def judge(self) -> str:
        """The HallusionBench judge as recorded: ``rule``, or ``gpt:<dated model>``."""
        return f"gpt:{self.hallusion_judge_model}" if self.hallusion_judge == "gpt" else "rule"


def lmms_eval_version() -> str:

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


#: The official judge's prompt (tianyi-lab/HallusionBench, as lmms-eval's
#: ``hallusion_bench/utils.py:34-41`` builds it): question, reference answer, the reply.
HB_JUDGE_PROMPT = (
    "Imagine you are an intelligent teacher. Thoroughly read the question, reference answer and the "
    "prediction answer to ensure a clear understanding of the information provided. Assess the "
    "correctness of the predictions. If the prediction answer does not conflict with the reference "
    "answer, please generate \u201ccorrect\u201d. If the prediction answer conflict with the reference "
    "answer, please generate \u201cincorrect\u201d. If the prediction answer is unclear about the answer, "
    'please generate "unclear". \n\n Question:{question}\nReference answer: {reference}\n'
    "Prediction answer:{reply}\nOutput:"
)
OPENAI_CHAT_URL = "https://api.openai.com/v1/chat/completions"


def judge_verdict(text: str) -> int:
    """The official reading of a judge reply: "incorrect" -> 0, else "correct" -> 1, else 2 (unclear)."""
    low = text.lower()
    return 0 if "incorrect" in low else 1 if "correct" in low else 2


def gpt_verdicts(
    samples: list[Sample],
    api_key: str,
    post: Callable[..., Any] | None = None,
    url: str = OPENAI_CHAT_URL,
    retries: int = 3,
    wait_s: float = 5.0,
    model: str = HALLUSION_JUDGE_MODEL,
) -> list[int]:
    """HallusionBench verdicts from the official GPT-4 judge, one request per sample.

    ``model`` is a dated snapshot (the official code's unpinned ``gpt-4`` drifts with the alias).

    lmms-eval's ``evaluate_by_chatgpt`` turns a failed request into "unclear" (offline: every
    sample, silently) and can reuse the previous sample's reply (``hallusion_bench/utils.py:56``)
    or a stale cache file (``evaluate_hb.py:59-65``). Here a request that still fails after
    ``retries`` makes the whole judgement an error naming the count, so no number is recorded
    from a verdict that was never given. ``post`` is ``requests.post``-like (tests pass a fake).
    """
    if post is None:
        import requests

        post = requests.post
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    verdicts: list[int] = []
    failures: list[tuple[int, str]] = []
    for s in samples:
        prompt = HB_JUDGE_PROMPT.format(
            question=s.doc.get("question", ""), reference=s.doc.get("gt_answer_details", ""), reply=s.response
        )
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
        text, error = None, ""
        for attempt in range(retries):
            try:
                resp = post(url, headers=headers, json=payload, timeout=30)
                resp.raise_for_status()
                text = str(resp.json()["choices"][0]["message"]["content"])
                break
            except Exception as exc:  # network, HTTP status, malformed reply: all count as a failure
                error = f"{type(exc).__name__}: {exc}"
                if attempt < retries - 1:
                    time.sleep(wait_s)
        if text is None:
            failures.append((s.doc_id, error))
            continue
        verdicts.append(judge_verdict(text))
    if failures:
        doc_id, error = failures[0]
        raise UserError(
            f"HallusionBench GPT judge failed on {len(failures)} of {len(samples)} question(s) "
            f"(first: doc {doc_id}, {error}); nothing recorded. Rerun (replies are kept) or use "
            "lmms.hallusion_judge=rule"
        )
    return verdicts


def score_samples(benchmark: str, samples: list[Sample], settings: ScoreSettings | None = None) -> Score:
    """Official score of one benchmark's samples (NaturalBench: one mode's samples)."""
    settings = settings or ScoreSettings()
    if benchmark == "mmvp":
        fixes = ORIGINAL_MMVP_KEY_FIXES if settings.mmvp_answer_key == "original" else ()
        return SCORERS["mmvp"](samples, fixes, settings.mmvp_patterns)
    if benchmark == "hallusion_bench" and settings.hallusion_judge == "gpt":
        verdicts = gpt_verdicts(samples, settings.hallusion_api_key, model=settings.hallusion_judge_model)
        return SCORERS["hallusion_bench"](samples, verdicts)
    return SCORERS[benchmark](samples)


def metric_records(benchmark: str, score: Score, prefix: str = "") -> list[dict[str, Any]]:
    return [
        {
            "metric": f"{prefix}{k}",
            "value": v,
            "counts": score.counts,
            "notes": score.notes,
            "items": score.items[k].to_json() if k in score.items else None,
        }
        for k, v in score.metrics.items()
    ]


def naturalbench_prefix(task: str, likelihood: bool | None = None) -> str:
    """Metric prefix of a NaturalBench log: "" for highest-likelihood answers (the paper's Table 2),
    ``gen_`` for generated ones. Our ``..._lik`` task is likelihood; otherwise ``likelihood`` says
    (from the run's ``choice_mode``), generation when unknown."""
    if task.endswith("_lik") or likelihood:
        return ""
    return "gen_"


def score_tasks(
    benchmark: str,
    samples_by_task: Mapping[str, list[Sample]],
    settings: ScoreSettings | None = None,
    prefixes: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, RowReport]]]:
    """Score one benchmark's samples from one or more tasks, keyed by (task, split, doc_id).

    Tasks are grouped by metric prefix (NaturalBench mode, ScienceQA-FULL apart from IMG); each
    group's rows are checked (:func:`~eval.mllm.coverage.check_rows`), de-duplicated and scored,
    and every record carries the group's coverage (``rows``, ``official_rows``, ``complete``...).
    """
    grouped: dict[str, list[Sample]] = {}
    for task, samples in samples_by_task.items():
        if prefixes is not None and task in prefixes:
            prefix = prefixes[task]
        elif benchmark == "naturalbench":
            prefix = naturalbench_prefix(task)
        else:
            info = task_info(task)
            prefix = info.group if info is not None else ""
        grouped.setdefault(prefix, []).extend(samples)
    out: list[dict[str, Any]] = []
    reports = []
    for prefix, samples in grouped.items():
        if not samples:
            continue
        score = score_samples(benchmark, dedupe(samples), settings)
        report = check_rows(
            benchmark,
            samples,
            left_out=int(score.counts.get("rows_left_out", 0)),
            official_rows=group_official_rows(benchmark, prefix),
        )
        for r in metric_records(benchmark, score, prefix):
            out.append({**r, **report.fields(), "coverage": report.coverage()})
        reports.append((prefix, report))
    return out, reports


def run_benchmark(
    model: Any,
    benchmark: str,
    tasks: TaskSet,
    audit_dir: str | Path,
    limit: int | None = None,
    settings: ScoreSettings | None = None,
) -> list[dict[str, Any]]:
    """Evaluate ``model`` (a :class:`~eval.mllm.lmms_model.GenhancerLlava`) on ``benchmark``'s tasks.

    Returns metric dicts (``metric``, ``value``, ``counts``, ``notes``, ``tasks``, ``task_versions``,
    ``lmms_eval_version``, ``audit``). Replies already in ``audit_dir/responses.jsonl`` are reused.
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

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
    out, _ = score_tasks(benchmark, per_task, settings)
    extra = {
        "tasks": names,
        "task_versions": versions,
        "lmms_eval_version": lmms_eval_version(),
        "audit": str(audit),
    }
    return [{**r, **extra} for r in out]
