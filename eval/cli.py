"""``leaderboard``: score CLIP-style encoders (MMVP-VLM, zero-shot, probes) and LLaVA models (MMVP,
CV-Bench, NaturalBench, POPE, HallusionBench, ScienceQA-IMG through lmms-eval) beside the paper.

Examples::

    leaderboard --preset tiny --output-dir runs/board            # offline, CPU, toy fixtures
    leaderboard --preset tiny --clip original=genhancer-tiny:clip enhanced=runs/tiny/export/hf \\
                --output-dir runs/board
    leaderboard --clip original=openai/clip-vit-large-patch14 enhanced=runs/oai224/export/hf \\
                --benchmarks mmvp_vlm --data-root /data/bench --output-dir runs/board
    leaderboard --clip siglip=google/siglip-so400m-patch14-224 --benchmarks mmvp_vlm \\
                --set mmvp_vlm.source=MMVP/MMVP_VLM --output-dir runs/board
    leaderboard --preset tiny --mllm original=runs/llava-orig/final enhanced=runs/llava-enh/final \\
                --output-dir runs/board                       # + the six MLLM benchmarks (toy data)
    leaderboard --mllm enhanced=runs/llava-oai224/final --benchmarks mmvp,pope --data-root /data/bench \\
                --output-dir runs/board                       # DATA_ROOT/pope/random.parquet ...
    leaderboard rescore --benchmark pope --samples out/*_samples_pope_*.jsonl --output-dir runs/board
    leaderboard --preset tiny --clip original=genhancer-tiny:clip tiny=run:runs/tiny --benchmarks mmvp_vlm \
                --output-dir runs/tiny/eval            # every export of a run (run:RUN, or a glob such as
                                                       # x='runs/x/export/steps/*'): MMVP-VLM against
                                                       # stage-2 step in DIR/mmvp_vlm_steps.png
    leaderboard --clip original=... enh=runs/s0/export/hf,runs/s1/export/hf,runs/s2/export/hf \\
                --output-dir runs/board             # runs of one configuration (seeds): enh#1..3 and
                                                    # enh = their mean ± std (run:RUN = RUN/export/hf)

``rescore`` reads lmms-eval ``--log_samples`` files of any model and prints and records the
official metrics (``leaderboard rescore --help``).

Writes DIR/results.json (one record per number), DIR/leaderboard.md, DIR/mmvp_vlm_patterns.png,
DIR/tradeoff_mmvp_vs_clustering.png (MMVP-VLM against clustering ACC) and DIR/config.yaml, and prints the markdown table. Re-running reuses cached numbers (--force
recomputes). Model specs: HF id or folder (CLIP/SigLIP, any enhance export/hf), an open_clip
export folder, open_clip:ARCH[:PRETRAINED], genhancer-tiny:clip. Exit code 2 with a one-line
message on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

from genhancer.runtime.cli import add_config_flags, command, make_parser, print_presets
from genhancer.runtime.errors import UserError
from genhancer.runtime.preflight import check_folder
from genhancer.runtime.threads import announce_threads, configure_threads, plan_threads


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("leaderboard", __doc__)
    for flag, metavar, text in [
        ("--clip", "NAME=SPEC", "CLIP-style models to score (replaces the preset's models)"),
        ("--mllm", "NAME=DIR", "LLaVA model dirs (llava-train RUN/final) for the MLLM benchmarks"),
    ]:
        p.add_argument(flag, nargs="+", action="extend", default=[], metavar=metavar, help=text)
    p.add_argument(
        "--benchmarks",
        help="comma-separated: mmvp_vlm,zeroshot,probe,clustering (CLIP) and mmvp,cv_bench,naturalbench,pope,"
        "hallusion_bench,scienceqa_img (MLLM) (default: the config's)",
    )
    p.add_argument(
        "--data-root", help="benchmark data, one folder per benchmark (DIR/mmvp_vlm/Questions.csv ...)"
    )
    p.add_argument("--output-dir", help="where results.json, leaderboard.md and plots go")
    add_config_flags(p)
    p.add_argument("--force", action="store_true", help="recompute numbers already in results.json")
    p.add_argument("--limit", type=int, help="score at most N examples per dataset (quick checks)")
    return p


def parse_named(items: list[str], flag: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; errors name the bad item."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise UserError(f"{flag} expects NAME=PATH_OR_ID, got '{item}'")
        if name in out:
            raise UserError(f"{flag}: model name '{name}' given twice")
        out[name.strip()] = spec.strip()
    return out


@command("leaderboard")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["rescore"]:
        from eval.mllm.rescore import main as rescore_main

        return rescore_main(argv[1:])
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from eval.config import PRESETS_DIR, load_config

    if args.list_presets:
        print_presets(PRESETS_DIR, width=16)
        return 0
    if not args.output_dir:
        raise UserError("--output-dir is required")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    plan_threads(args.threads)
    if args.data_root:
        check_folder(Path(args.data_root), "--data-root")
    cfg = load_config(args.preset, args.config, args.overrides)
    from eval.benchmarks import get_benchmark

    benchmarks = None
    if args.benchmarks:
        benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
        for b in benchmarks:
            get_benchmark(b)

    if args.clip:  # hf:ORG/NAME/SUB@REV and WEIGHTS::BASE: syntax and local files, before torch loads
        from enhance.towers.spec import check_tower_spec, is_tower_spec

        for name, spec in parse_named(args.clip, "--clip").items():
            for part in (p.strip() for p in spec.split(",")):
                if is_tower_spec(part):
                    check_tower_spec(part, f"--clip {name}")
    from eval.clip.steps import curve_markdown, expand_clip_spec, plot_step_curve
    from eval.leaderboard import RUNS_SEP, ModelSpec, default_models, run_group_models, run_leaderboard
    from eval.report import plot_mmvp_patterns, plot_tradeoff, render_markdown
    from genhancer.runtime import configtools

    released_notes: list[str] = []
    if args.clip:  # run:RUN and glob specs expand to one model per export (eval.clip.steps);
        # A,B,C lists (runs of one configuration) to NAME#1.. averaged as NAME (eval.leaderboard)
        models = [
            m
            for n, s in parse_named(args.clip, "--clip").items()
            for m in (run_group_models(n, s) if RUNS_SEP in s else expand_clip_spec(n, s))
        ]
    elif cfg.released.towers:  # --preset released-<backbone>: the published towers (eval.released)
        from eval.released import released_models

        models, released_notes = released_models(cfg)
        for note in released_notes:
            print(f"leaderboard: note: {note}", file=sys.stderr)
    elif args.mllm and args.benchmarks and all(get_benchmark(b).model_kind == "mllm" for b in benchmarks):
        models = []  # only MLLM benchmarks asked for: no default CLIP models
    else:
        models, skipped = default_models(cfg)
        for item in skipped:
            print(f"leaderboard: note: skipping {item} (not found)", file=sys.stderr)
    mllm = parse_named(args.mllm, "--mllm") if args.mllm else dict(cfg.mllm)
    models += [ModelSpec(n, s, "mllm") for n, s in mllm.items()]
    if benchmarks is not None:  # models of a kind no chosen benchmark needs are left out
        kinds = {get_benchmark(b).model_kind for b in benchmarks}
        models = [m for m in models if m.kind in kinds]
    api_key = os.environ.get("OPENAI_API_KEY", "") if cfg.lmms.hallusion_judge == "gpt" else ""
    if cfg.lmms.hallusion_judge == "gpt" and not api_key:
        raise UserError("lmms.hallusion_judge=gpt needs OPENAI_API_KEY in the environment")
    threads = configure_threads("leaderboard", args.threads, announce=False)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(configtools.dump_yaml(cfg))
    summary = run_leaderboard(
        cfg, models, out, benchmarks, args.data_root, args.force, args.limit, api_key=api_key
    )
    markdown = render_markdown(summary.records) + curve_markdown(summary.records)
    if cfg.released.towers and not args.clip:  # the released towers beside the papers' numbers
        from eval.released import comparison_markdown

        released_md = comparison_markdown(summary.records, cfg, released_notes)
        (out / "released.md").write_text(released_md)
        markdown += "\n" + released_md
    (out / "leaderboard.md").write_text(markdown)
    plot_mmvp_patterns(summary.records, out / "mmvp_vlm_patterns.png")
    plot_step_curve(summary.records, out / "mmvp_vlm_steps.png")
    plot_tradeoff(summary.records, out / "tradeoff_mmvp_vs_clustering.png")
    if summary.reused:
        done = ", ".join(f"{m}/{b}" for m, b in summary.reused)
        print(f"leaderboard: reused cached results for {done} (--force recomputes)", file=sys.stderr)
    announce_threads("leaderboard", threads)  # after the work, so an error stays one line
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
