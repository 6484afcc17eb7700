"""``leaderboard rescore``: official metrics from lmms-eval per-sample logs, without re-running a model.

Examples::

    lmms-eval --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf \\
              --tasks pope_full --log_samples --output_path out/
    leaderboard rescore --benchmark pope --samples out/llava-hf__llava-1.5-7b-hf/*_samples_pope_*.jsonl
    leaderboard rescore --benchmark mmvp --samples run/samples_mmvp.jsonl --model llava15 \\
              --output-dir runs/board --set lmms.mmvp_answer_key=original

Reads the JSONL files lmms-eval writes with ``--log_samples`` (any model, any run; also our own
audit logs under ``DIR/mllm/``), prints the metrics with their counts, and with ``--output-dir``
records them in ``DIR/results.json`` (one record per number, ``"source": "rescore"``) and
refreshes ``DIR/leaderboard.md``.

Rows are keyed by (task, split, doc_id), the task read from the file name
(``<date>_samples_<task>.jsonl``), so logs of several tasks (``cv_bench_2d`` + ``cv_bench_3d``,
``pope_adv`` + ``pope_pop`` + ``pope_random``, HallusionBench's image + non_image) add up without
losing a row. Duplicate rows (a log given twice, ``pope`` with ``pope_random``), missing rows (a
hole in a log's doc ids, an MMVP question without its pair, a NaturalBench row without its group)
and extra rows (doc ids past the task's official size) are printed with counts and stop the
command (exit 2) unless --allow-partial. A run whose rows add up to the benchmark's official size
is recorded as complete, any other as partial (``"complete": false`` and a note in
leaderboard.md).

POPE splits come from each row's ``category`` or the task; a pooled ``pope`` log without
``category`` is scored as one split "all", with a note to run ``pope_full`` instead. NaturalBench
logs of our ``..._lik`` task, or of a run with ``--model_args ...,choice_mode=likelihood`` (read
from the ``<date>_results.json`` beside the log), are the likelihood mode (metrics ``Acc``...),
others generation (``gen_Acc``...). ScienceQA-FULL logs (task ``scienceqa``) are scored apart from
the IMG subset (metrics ``full/accuracy``). Exit code 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from eval.config import load_config
from eval.leaderboard import RECORD_VERSION, ResultsStore, _version, annotate_uncertainty
from eval.mllm.coverage import task_name
from eval.mllm.mmvp_patterns import read_pattern_map
from eval.mllm.run import ScoreSettings, naturalbench_prefix, score_tasks
from eval.mllm.samples import read_jsonl, to_samples
from eval.mllm.scoring import SCORERS
from eval.report import render_markdown
from genhancer.runtime.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leaderboard rescore",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--benchmark",
        required=True,
        help="mmvp, cv_bench, naturalbench, pope, hallusion_bench, scienceqa_img",
    )
    p.add_argument(
        "--samples", nargs="+", action="extend", required=True, metavar="FILE", help="JSONL sample logs"
    )
    p.add_argument("--model", help="model name for the records (default: the log folder's name)")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="score logs with duplicate, missing or extra rows anyway (still reported, recorded as partial)",
    )
    p.add_argument("--output-dir", help="record the numbers in DIR/results.json and DIR/leaderboard.md")
    p.add_argument("--preset", help="named preset (scoring keys under lmms.*)")
    p.add_argument("--config", help="YAML file overriding the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. lmms.mmvp_answer_key=original")  # fmt: skip
    return p


def _files_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def likelihood_run(path: Path) -> bool | None:
    """Whether the lmms-eval run that wrote ``path`` answered by likelihood: ``choice_mode=likelihood``
    in the model_args of the ``<date>_results.json`` beside it; None when there is no such file."""
    date = path.name.split("_samples_")[0] if "_samples_" in path.name else ""
    results = path.with_name(f"{date}_results.json")
    if not date or not results.is_file():
        return None
    try:
        args = json.loads(results.read_text()).get("config", {}).get("model_args", "")
    except (ValueError, AttributeError):
        return None
    if isinstance(args, dict):
        return str(args.get("choice_mode", "")) == "likelihood"
    return "choice_mode=likelihood" in str(args)


def rescore(
    benchmark: str, files: list[str | Path], settings=None, allow_partial: bool = False
) -> tuple[list[dict[str, Any]], list]:
    """Metric dicts (``metric``, ``value``, ``counts``, ``notes``, coverage fields) of one benchmark
    from sample logs, and the row report of each score group.

    Raises UserError naming the counts when rows are duplicate, missing or extra, unless
    ``allow_partial``.
    """

    if benchmark not in SCORERS:
        raise UserError(f"unknown MLLM benchmark '{benchmark}'; choose from: {', '.join(SCORERS)}")
    by_task: dict[str, list] = {}
    prefixes: dict[str, str] = {}
    for p in (Path(f) for f in files):
        task = task_name(p)
        by_task.setdefault(task, []).extend(to_samples(benchmark, read_jsonl(p), p.name))
        if benchmark == "naturalbench":
            prefix = naturalbench_prefix(task, likelihood_run(p))
            if prefixes.setdefault(task, prefix) != prefix:
                raise UserError(
                    f"logs of task '{task}' mix likelihood and generated answers; rescore them apart"
                )
    if not any(by_task.values()):
        raise UserError("the sample files hold no rows")
    out, reports = score_tasks(benchmark, by_task, settings, prefixes or None)
    problems = [f"{prefix or 'main'}: {p}" for prefix, r in reports for p in r.problems()]
    if problems and not allow_partial:
        raise UserError(
            "rows do not add up: "
            + "; ".join(problems)
            + " (nothing recorded; --allow-partial scores them anyway)"
        )
    return out, reports


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.preset, args.config, args.overrides)
        lm = cfg.lmms
        key = os.environ.get("OPENAI_API_KEY", "") if lm.hallusion_judge == "gpt" else ""
        if lm.hallusion_judge == "gpt" and not key:
            raise UserError("lmms.hallusion_judge=gpt needs OPENAI_API_KEY in the environment")
        files = [Path(f) for f in args.samples]
        for f in files:
            if not f.is_file():
                raise UserError(f"no such samples file: {f}")
        settings = ScoreSettings(lm.mmvp_answer_key, lm.hallusion_judge, key, lm.hallusion_judge_model)
        if args.benchmark == "mmvp" and lm.mmvp_patterns:
            settings.mmvp_patterns = read_pattern_map(lm.mmvp_patterns)
        results, reports = rescore(args.benchmark, files, settings, args.allow_partial)
        model = args.model or files[0].resolve().parent.name
        print(f"{args.benchmark} ({model}; {len(files)} file(s)), official scoring, percent:")
        for r in results:
            print(f"  {r['metric']:24s} {r['value']:6.2f}")
        shown = {}
        for r in results:
            shown[str(r["counts"])] = r
        for r in shown.values():
            print(f"  counts: {r['counts']}" + "".join(f"\n  note: {n}" for n in r["notes"]))
        for prefix, report in reports:
            print(f"  rows{' (' + prefix.rstrip('/_') + ')' if prefix else ''}: {report.coverage()}")
            for problem in report.problems():
                print(f"  warning: {problem}", file=sys.stderr)
        if args.output_dir:
            out = Path(args.output_dir)
            store = ResultsStore(out / "results.json")
            digest = _files_digest(files)
            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            records = [
                {
                    "model": model,
                    "benchmark": args.benchmark,
                    "metric": r["metric"],
                    "value": r["value"],
                    "dataset": "samples: " + ", ".join(f.name for f in files),
                    "revision": digest,
                    "seed": None,
                    "source": "rescore",
                    "samples": [str(f) for f in files],
                    "counts": r["counts"],
                    "notes": r["notes"],
                    **{
                        k: r[k]
                        for k in ("rows", "official_rows", "complete", "rows_per_task", "row_problems")
                    },
                    "coverage": r["coverage"],
                    "answer_key": {
                        "mmvp": lm.mmvp_answer_key,
                        "hallusion_bench": f"judge={settings.judge()}",
                    }.get(args.benchmark),
                    **({"judge": settings.judge()} if args.benchmark == "hallusion_bench" else {}),
                    "items": r.get("items"),
                    "model_kind": "mllm",
                    "cache_key": f"rescore:{digest}",
                    "genhancer_version": _version(),
                    "record_version": RECORD_VERSION,
                    "time": now,
                }
                for r in results
            ]
            store.replace(model, args.benchmark, records)
            annotate_uncertainty(store.records, cfg.uncertainty)
            store.save()
            (out / "leaderboard.md").write_text(render_markdown(store.records))
            print(f"recorded in {out / 'results.json'}")
        return 0
    except UserError as exc:
        print(f"leaderboard rescore: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
