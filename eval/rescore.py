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
refreshes ``DIR/leaderboard.md``. POPE splits come from each row's ``category`` or the file name
(``pope_adv``/``pope_pop``/``pope_random``); NaturalBench logs of our ``..._lik`` task are the
likelihood mode (metrics ``Acc``...), others generation (``gen_Acc``...). Exit code 2 with a
one-line message on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

from enhance.errors import UserError


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


def rescore(benchmark: str, files: list[str | Path], settings=None) -> list[dict]:
    """Metric dicts (``metric``, ``value``, ``counts``, ``notes``) of one benchmark from sample logs."""
    from eval.mllm_run import metric_records, score_samples
    from eval.mllm_samples import dedupe, read_jsonl, to_samples
    from eval.mllm_scoring import SCORERS

    if benchmark not in SCORERS:
        raise UserError(f"unknown MLLM benchmark '{benchmark}'; choose from: {', '.join(SCORERS)}")
    paths = [Path(f) for f in files]
    if benchmark == "naturalbench":
        modes: dict[str, list] = {}
        for p in paths:
            prefix = "" if "naturalbench_lik" in p.name else "gen_"
            modes.setdefault(prefix, []).extend(to_samples(benchmark, read_jsonl(p), p.name))
        out = []
        for prefix, samples in modes.items():
            out += metric_records(benchmark, score_samples(benchmark, dedupe(samples), settings), prefix)
        return out
    samples = [s for p in paths for s in to_samples(benchmark, read_jsonl(p), p.name)]
    if not samples:
        raise UserError("the sample files hold no rows")
    return metric_records(benchmark, score_samples(benchmark, dedupe(samples), settings))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from eval.config import load_config
        from eval.mllm_run import ScoreSettings

        cfg = load_config(args.preset, args.config, args.overrides)
        lm = cfg.lmms
        key = os.environ.get("OPENAI_API_KEY", "") if lm.hallusion_judge == "gpt" else ""
        if lm.hallusion_judge == "gpt" and not key:
            raise UserError("lmms.hallusion_judge=gpt needs OPENAI_API_KEY in the environment")
        files = [Path(f) for f in args.samples]
        for f in files:
            if not f.is_file():
                raise UserError(f"no such samples file: {f}")
        results = rescore(args.benchmark, files, ScoreSettings(lm.mmvp_answer_key, lm.hallusion_judge, key))
        model = args.model or files[0].resolve().parent.name
        print(f"{args.benchmark} ({model}; {len(files)} file(s)), official scoring, percent:")
        for r in results:
            print(f"  {r['metric']:24s} {r['value']:6.2f}")
        shown = {}
        for r in results:
            shown[str(r["counts"])] = r
        for r in shown.values():
            print(f"  counts: {r['counts']}" + "".join(f"\n  note: {n}" for n in r["notes"]))
        if args.output_dir:
            from eval.leaderboard import ResultsStore, _version
            from eval.report import render_markdown

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
                    "answer_key": {
                        "mmvp": lm.mmvp_answer_key,
                        "hallusion_bench": f"judge={lm.hallusion_judge}",
                    }.get(args.benchmark),
                    "model_kind": "mllm",
                    "cache_key": f"rescore:{digest}",
                    "genhancer_version": _version(),
                    "time": now,
                }
                for r in results
            ]
            store.replace(model, args.benchmark, records)
            store.save()
            (out / "leaderboard.md").write_text(render_markdown(store.records))
            print(f"recorded in {out / 'results.json'}")
        return 0
    except UserError as exc:
        print(f"leaderboard rescore: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
