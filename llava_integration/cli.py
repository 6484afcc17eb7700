"""``llava-train``: LLaVA-1.5 (pretrain, then finetune) with any CLIP/SigLIP vision tower.

Examples::

    llava-train --list-presets
    llava-train --preset tiny --vision-tower runs/tiny/export/vision_tower --output-dir runs/llava-tiny
    llava-train --preset llava15-7b --vision-tower runs/oai336/export/vision_tower \\
                --data-root /data/llava --output-dir runs/llava-7b          # pretrain then finetune
    llava-train --preset llava15-7b-lora --vision-tower ... --data-root /data/llava \\
                --stage finetune --projector runs/llava-7b/pretrain --output-dir runs/llava-7b-lora
    accelerate launch --config_file "$(python -c 'import llava_integration as m; print(m.DS_ZERO3)')" \\
                -m llava_integration --preset llava15-7b ...                # DeepSpeed ZeRO-3
    llava-train --preset llava15-7b --describe                           # config + parameter counts
    llava-train swap --model runs/llava-7b/final --vision-tower other/export/vision_tower --output-dir D

Writes DIR/config.yaml, DIR/metrics.jsonl, DIR/checkpoints/, DIR/pretrain/ (projector) and
DIR/final/ (LlavaForConditionalGeneration + AutoProcessor). Exit code 2 with a one-line
message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enhance.towers.spec import check_tower_spec, is_tower_spec
from genhancer.runtime.cli import add_config_flags, command, make_parser, print_presets, start_training
from genhancer.runtime.errors import UserError
from genhancer.runtime.memory import add_memory_flags
from genhancer.runtime.preflight import check_folder, check_llava_json, check_run_folder, require_local_paths
from genhancer.runtime.threads import plan_threads


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("llava-train", __doc__)
    add_config_flags(p)
    p.add_argument("--output-dir", help="run folder (config.yaml, metrics.jsonl, checkpoints/, final/)")
    p.add_argument(
        "--vision-tower",
        help="vision tower: dir, HF id, hf:ORG/NAME/SUB@REV or WEIGHTS::BASE (sets model.vision_tower)",
    )
    p.add_argument("--data-root", help="LLaVA data root (sets data.root)")
    p.add_argument(
        "--stage", choices=["pretrain", "finetune", "all"], default=None, help="run one stage only"
    )
    p.add_argument("--projector", help="DIR/pretrain of a pretrain run (sets model.pretrained_projector)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    p.add_argument(
        "--describe", action="store_true", help="print resolved config, parameter counts, memory plan"
    )
    add_memory_flags(p)
    return p


def build_swap_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llava-train swap",
        description="Replace the vision tower of a trained LLaVA without retraining (inspection only: "
        "the paper retrains, since projector and LM were aligned to the old tower).",
    )
    p.add_argument("--model", required=True, help="a saved LLaVA dir (DIR/final)")
    p.add_argument("--vision-tower", required=True, help="the new tower (dir or HF id)")
    p.add_argument("--output-dir", required=True, help="where the re-towered model is written")
    p.add_argument("--cache-dir", default="", help="tiny model cache (genhancer-tiny:* towers)")
    return p


def describe(cfg) -> dict:
    """Resolved config and parameter counts: meta device for known ids, the real tiny build otherwise."""
    from genhancer.runtime import configtools
    from llava_integration import model as llava_model
    from llava_integration.config import config_docs
    from llava_integration.shapes import KNOWN_LLMS, KNOWN_TOWERS

    if cfg.model.llm in KNOWN_LLMS and cfg.model.vision_tower in KNOWN_TOWERS:
        counts: dict = llava_model.parameter_counts(llava_model.build_meta(cfg.model))
    elif cfg.model.llm.startswith("genhancer-tiny:") and cfg.model.vision_tower.startswith("genhancer-tiny:"):
        counts = llava_model.parameter_counts(llava_model.build(cfg.model, cfg.cache_dir or None)[0])
    else:
        counts = {"total": "unknown until the tower and LM are loaded"}
    return {"config": configtools.to_dict(cfg), "parameters": counts, "docs": config_docs()}


#: Config keys that name files or folders, and what each is (for the error message); data.root
#: only for real data (the toy world ignores it).
PATH_KEYS = {
    "model.vision_tower": "the vision tower",
    "model.llm": "the language model",
    "model.pretrained_projector": "the pretrained projector",
    "data.root": "the LLaVA data root",
}


def check_stage_data(cfg) -> None:
    """Each running stage's JSON (LLaVA's schema, first row) and image folder, before torch loads;
    the toy world writes its own data."""
    if cfg.data.source == "toyworld":
        return
    for name in cfg.train.stages:
        st = getattr(cfg, name)
        if not cfg.data.root and not Path(st.data_path).is_absolute():
            raise UserError(f"data.root is empty: point --data-root at the LLaVA data for {name}")
        root = Path(cfg.data.root).expanduser()
        check_llava_json(root / st.data_path, f"{name}.data_path")
        check_folder(root / st.image_folder, f"{name}.image_folder")


def preflight(cfg, args: argparse.Namespace) -> None:
    """What can be refused before torch loads: local paths that do not exist, the run folder,
    ``--threads``."""
    keys = {k: v for k, v in PATH_KEYS.items() if k != "data.root" or cfg.data.source != "toyworld"}
    if is_tower_spec(cfg.model.vision_tower):  # hf:REPO/SUB@REV or WEIGHTS::BASE (enhance.towers)
        check_tower_spec(cfg.model.vision_tower, "model.vision_tower")
    require_local_paths(cfg, keys, keys)
    check_stage_data(cfg)
    check_run_folder(args.output_dir, args.resume)
    plan_threads(args.threads)


def _swap(argv: list[str]) -> int:
    args = build_swap_parser().parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():  # before torch loads (swap_tower checks too)
        raise UserError(f"--model {args.model}: not a saved LLaVA model (no config.json)")
    from llava_integration.model import swap_tower

    out = swap_tower(args.model, args.vision_tower, args.output_dir, args.cache_dir or None)
    print(json.dumps({"model": str(out)}))
    return 0


@command("llava-train")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "swap":
        return _swap(argv[1:])
    args = build_parser().parse_args(argv)
    from llava_integration.config import PRESETS_DIR, load_config

    if args.list_presets:
        print_presets(PRESETS_DIR, width=24)
        return 0
    if not args.preset and not args.config:
        raise UserError("give --preset NAME or --config FILE (see --list-presets)")
    overrides = list(args.overrides)
    if args.vision_tower:
        overrides.append(f"model.vision_tower={args.vision_tower}")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.projector:
        overrides.append(f"model.pretrained_projector={args.projector}")
    if args.stage in ("pretrain", "finetune"):
        overrides.append(f"train.stages=[{args.stage}]")
    elif args.stage == "all":
        overrides.append("train.stages=[pretrain, finetune]")
    cfg = load_config(args.preset, args.config, overrides)
    if args.describe:
        from llava_integration.memory_plan import memory_section

        out = describe(cfg)
        print(json.dumps(out | memory_section(cfg, out, args), indent=2))
        return 0
    start_training("llava-train", args, lambda: preflight(cfg, args))
    from llava_integration.train import run

    result = run(cfg, args.output_dir, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
