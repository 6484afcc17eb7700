"""Read lmms-eval per-sample logs (``--log_samples`` JSONL, or ``results["samples"]``) into
:class:`~eval.mllm.scoring.Sample` records, for any model's run.

lmms-eval 0.7.3 writes ``doc_id``, ``target``, ``resps``/``filtered_resps``, ``input`` (the
prompt) and each metric's ``process_results`` payload, but drops ``doc``
(``loggers/evaluation_tracker.py:286``); older versions and our own audit logs keep it. So a
row's columns come from ``doc`` when present, otherwise from what the payloads, the target and
the prompt still say; :data:`NEEDS` lists the columns each scorer needs, and a log that lacks
them fails naming the column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eval.mllm.answer_parsing import LETTERS, options_from_prompt
from eval.mllm.coverage import task_info, task_name
from eval.mllm.scoring import POPE_SPLITS, Sample
from genhancer.runtime.errors import UserError

#: Dataset columns each benchmark's scorer reads.
NEEDS: dict[str, tuple[str, ...]] = {
    "mmvp": ("Index", "Correct Answer"),
    "cv_bench": ("answer", "source"),
    "naturalbench": ("Index", "Question_Type"),  # expected answers come from Index % 4
    "pope": ("answer",),
    "hallusion_bench": ("category", "subcategory", "set_id", "figure_id", "question_id", "gt_answer"),
    "scienceqa_img": ("answer",),
}
_POPE_TASK_SPLIT = {"adv": "adversarial", "pop": "popular", "random": "random"}


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such samples file: {p}")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise UserError(f"{p}:{n} is not a JSON line") from None
    return rows


def response_of(row: dict) -> str:
    """The model's reply: the filtered response, unwrapped from lmms-eval's nesting."""
    r: Any = row.get("filtered_resps", row.get("resps"))
    while isinstance(r, list | tuple):
        r = r[0] if r else ""
    return "" if r is None else str(r)


def prompt_of(row: dict) -> str:
    if isinstance(row.get("input"), str):
        return row["input"]
    args = row.get("arguments")
    if isinstance(args, list | tuple) and args:
        first = args[0]
        if isinstance(first, list | tuple) and first:  # saved by older versions: [[ctx, gen_kwargs], ...]
            first = first[0]
        if isinstance(first, str):
            return first
    return ""


def pope_split_from_name(name: str) -> str:
    """POPE set from a task or file name (``pope_adv`` / ``..._samples_pope_random.jsonl``), or ""."""
    low = name.lower()
    for key, split in _POPE_TASK_SPLIT.items():
        if f"pope_{key}" in low or split in low:
            return split
    return ""


def _payload(row: dict, *keys: str) -> dict:
    for k in keys:
        if isinstance(row.get(k), dict):
            return row[k]
    return {}


def _rebuild_doc(benchmark: str, row: dict, prompt: str) -> dict:
    """Columns recovered from a 0.7.3 log row without ``doc``."""
    target = row.get("target")
    if benchmark == "mmvp":
        p = _payload(row, "mmvp_accuracy", "mmvp_pair_accuracy")
        doc: dict = {}
        if "index" in p:
            doc["Index"] = int(p["index"]) + 1  # process_results stores Index - 1 (mmvp/utils.py:157)
        gt = p.get("gt") or target
        if gt:
            doc["Correct Answer"] = f"({str(gt).strip('()').lower()})"
        opts = options_from_prompt(prompt)
        if opts:
            doc["Options"] = " ".join(f"({LETTERS[i].lower()}) {o}" for i, o in enumerate(opts))
        return doc
    if benchmark == "cv_bench":
        p = _payload(row, "cv_bench_acc")
        doc = {k: p[k] for k in ("type", "task", "source") if k in p}
        if "id" in p:
            doc["idx"] = p["id"]
        gt = p.get("gt_content") or target
        if gt:
            doc["answer"] = f"({str(gt).strip('()')})"
        return doc
    if benchmark == "naturalbench":
        p = _payload(
            row, "naturalbench_G_ACC", "naturalbench_Acc", "naturalbench_Q_ACC", "naturalbench_I_ACC"
        )
        # No answer: the target is the literal "answer" when the copy has no such column
        # (api/task.py doc_to_target), and the official scorer never reads one.
        doc = {"Index": p.get("id", row.get("doc_id"))}
        if "Please answer Yes or No." in prompt:
            doc["Question_Type"] = "yes_no"
        elif "Please output the letter" in prompt:
            doc["Question_Type"] = "multiple_choice"
        return doc
    if benchmark == "pope":
        p = _payload(row, "pope_accuracy", "pope_f1_score")
        doc = {"question_id": p.get("question_id")}
        gt = p.get("ground_truth") or target
        if gt is not None:
            doc["answer"] = str(gt)
        return doc
    if benchmark == "hallusion_bench":
        p = _payload(row, "aAcc", "qAcc", "fAcc")
        return {k: v for k, v in p.items() if k != "model_prediction"}
    if benchmark == "scienceqa_img":
        opts = options_from_prompt(prompt)
        doc = {"choices": opts} if opts else {}
        if isinstance(target, str) and target.strip() in LETTERS:
            doc["answer"] = LETTERS.index(target.strip())
        return doc
    raise UserError(f"unknown MLLM benchmark '{benchmark}'")


def _split_of(benchmark: str, task: str) -> str:
    """The split a task's rows belong to, when the task says (POPE set, HallusionBench part)."""
    info = task_info(task)
    if info is not None and len(info.parts) == 1 and benchmark in ("pope", "hallusion_bench"):
        return info.parts[0]
    return pope_split_from_name(task) if benchmark == "pope" else ""


def to_samples(benchmark: str, rows: Iterable[dict], source: str = "") -> list[Sample]:
    """Sample records of one benchmark from log rows.

    ``source`` is the log file or task name; its task (:func:`eval.mllm.coverage.task_name`) is
    part of every row's key and gives POPE's split when the row has no ``category``.
    """
    if benchmark not in NEEDS:
        raise UserError(f"unknown MLLM benchmark '{benchmark}'; choose from: {', '.join(NEEDS)}")
    task = task_name(source) if source else ""
    info = task_info(task)
    if info is not None and info.benchmark != benchmark:
        raise UserError(f"{source} is a log of lmms-eval task '{task}' ({info.benchmark}), not {benchmark}")
    split = _split_of(benchmark, task)
    out = []
    for row in rows:
        prompt = prompt_of(row)
        doc = row.get("doc") if isinstance(row.get("doc"), dict) else None
        doc = dict(doc) if doc is not None else _rebuild_doc(benchmark, row, prompt)
        if benchmark == "pope" and str(doc.get("category") or "").lower() not in POPE_SPLITS and not split:
            split = "all"  # lmms-eval's pooled pope task, logged without doc
        missing = [c for c in NEEDS[benchmark] if doc.get(c) is None]
        if missing:
            raise UserError(
                f"{source or 'samples'}: doc {row.get('doc_id')} lacks {missing} for {benchmark}; "
                "is this a log of that benchmark?"
            )
        out.append(Sample(int(row.get("doc_id", len(out))), response_of(row), doc, prompt, split, task))
    return out


def dedupe(samples: list[Sample]) -> list[Sample]:
    """One sample per (task, split, doc_id), the last one winning; call it only after
    :func:`eval.mllm.coverage.check_rows` has counted (and reported) the duplicates."""
    seen: dict[tuple[str, str, int], Sample] = {}
    for s in samples:
        seen[(s.source, s.split, s.doc_id)] = s
    return list(seen.values())
