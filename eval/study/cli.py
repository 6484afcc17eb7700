"""``python -m eval.study``: the small-scale study (``make reproduce-small``).

Parts: ``study`` (pretrain the sparse-caption tower, enhance it with ``cfg.methods``, score every
tower on held-out scenes), ``sensitivity`` (how much of the stage-1 loss the condition explains,
per denoiser), ``all`` (both), or ``trends`` (the paper's four knobs swept: generation against
representation quality, ``cfg.trends``; ``make reproduce-trends``). Config: ``--preset`` (``eval/study/presets``), ``--config FILE``,
``--set key=value``; ``--seeds`` and ``--methods`` are short for ``--set seeds=..`` and
``--set methods=..``. CPU example (seconds): ``python -m eval.study --preset smoke --seeds 0
--output-dir /tmp/study``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from genhancer.runtime.cli import report
from genhancer.runtime.errors import UserError

PARTS = ("study", "sensitivity", "all", "trends")


def parser(prog: str = "python -m eval.study") -> argparse.ArgumentParser:
    from genhancer.runtime.threads import add_threads_flag

    p = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n")[0])
    p.add_argument("--output-dir", default="runs/reproduce-small")
    p.add_argument(
        "--preset", "--protocol", dest="preset", default="small", help="eval/study/presets/NAME.yaml"
    )
    p.add_argument("--config", default=None, help="a YAML file over the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--part", choices=PARTS, default="study")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, help="variants trained against the original")
    p.add_argument(
        "--method-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra enhance --set for the other methods' runs (tests point sd.path at their own SD)",
    )
    p.add_argument(
        "--cache-dir", default="", help="tiny VAE / sparse CLIP cache (default ~/.cache/genhancer)"
    )
    p.add_argument("--vae", default="genhancer-tiny:vae", help="FLUX-style VAE dir (tests pass their own)")
    add_threads_flag(p)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m eval.study") -> int:
    args = parser(prog).parse_args(argv)
    from eval.study.config import load_study_config

    sets = list(args.sets)
    if args.seeds is not None:
        sets.append(f"seeds=[{', '.join(map(str, args.seeds))}]")
    if args.methods is not None:
        sets.append(f"methods=[{', '.join(args.methods)}]")
    if args.method_set:
        sets.append(f"method_sets=[{', '.join(repr(s) for s in args.method_set)}]")
    try:
        cfg = load_study_config(args.preset, args.config, sets)
    except UserError as exc:
        return report(prog, exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from genhancer.runtime.threads import configure_threads
    from genhancer.toyworld.models import default_cache_dir

    configure_threads("study", args.threads)
    from eval.study import sensitivity
    from eval.study.runner import run_study

    cache_dir = args.cache_dir or str(default_cache_dir())
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("sensitivity", "all"):
        sensitivity.run(cfg, out, cache_dir)
        print((out / "sensitivity.md").read_text())
    if args.part in ("study", "all"):
        run_study(cfg, out, cache_dir, args.vae)
        print((out / "results.md").read_text())
    if args.part == "trends":
        from eval.study import trends

        trends.run(cfg, out, cache_dir, args.vae)
        print((out / "trends.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
