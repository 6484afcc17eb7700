"""``enhance``: two-stage GenHancer enhancement of a CLIP-style vision tower.

Examples::

    enhance --list-presets
    enhance --preset tiny --output-dir runs/tiny                     # CPU, offline, minutes
    enhance --preset openai-clip-l14-224 --set data.path=/data/cc3m --output-dir runs/oai224
    accelerate launch -m enhance --preset openai-clip-l14-224 ...     # many GPUs
    enhance --config my.yaml --set stage2.lr=2e-5 --stage 2 --resume --output-dir runs/x
    enhance --preset openai-clip-l14-224 --describe                   # config + parameter counts
    enhance --method dcr --preset tiny --output-dir runs/dcr-tiny       # DIVA / DCR / naive on one bench
    enhance --method dcr --preset openai-clip-l14-224 --describe      # DCR's B^2 UNet calls per step
    enhance --preset openai-clip-l14-224 --set data.path=/data/cc3m \
        --set latent_cache.path=/data/cc3m-latents --build-latent-cache  # encode once (see README)

Exit code 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from enhance.towers.spec import check_tower_spec, is_tower_spec
from genhancer.runtime.cli import (
    add_config_flags,
    command,
    make_parser,
    print_presets,
    start_training,
    start_work,
)
from genhancer.runtime.errors import UserError
from genhancer.runtime.memory import add_memory_flags
from genhancer.runtime.preflight import check_data, check_run_folder, require_local_paths
from genhancer.runtime.threads import plan_threads


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("enhance", __doc__)
    add_config_flags(p)
    p.add_argument("--output-dir", help="run folder (config.yaml, metrics.jsonl, checkpoints/, export/)")
    p.add_argument("--stage", choices=["1", "2", "all"], default=None, help="run one stage only")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    p.add_argument(
        "--method",
        default=None,
        help="genhancer (default) | diva | dcr | naive-contrastive: the method's recipe on the --preset "
        "backbone (enhance/methods/<method>/recipes.yaml); the same as --set method.name=METHOD",
    )
    p.add_argument(
        "--describe", action="store_true", help="print resolved config, parameter counts, memory plan"
    )
    add_memory_flags(p)
    p.add_argument(
        "--build-latent-cache",
        action="store_true",
        help="only encode the data's VAE posteriors into latent_cache.path (training builds it too)",
    )
    return p


def list_method_presets(method: str) -> None:
    """``--list-presets --method M``: the backbone presets the method has a recipe for."""
    from enhance.config import PRESETS_DIR, method_presets
    from enhance.methods import get_method
    from genhancer.runtime.configtools import preset_description

    recipes = get_method(method).recipes()
    for name in method_presets(method):
        print(f"{name:32s} {method}: {recipes['description'] or preset_description(PRESETS_DIR, name)}")


def describe(cfg) -> dict:
    """Resolved config and parameter counts, built on the meta device (downloads nothing)."""
    import torch

    from enhance.architectures import tower_dims
    from enhance.methods import get_method
    from genhancer.runtime import configtools
    from genhancer.runtime.configtools import field_docs

    method = get_method(cfg.method.name)
    with torch.device("meta"):
        parts = method.architecture(cfg, tower_dims(cfg.backbone.name_or_path))
    counts: dict[str, int | str] = {
        name: part if isinstance(part, str) else sum(p.numel() for p in part.parameters())
        for name, part in parts.items()
    }
    lora = lora_counts(cfg, counts)
    if cfg.stage2.tower_tuning == "full":
        counts["tower"] = describe_tower(cfg)
        counts["lora"] = counts["tower_bias"] = 0
    return {
        "method": method.describe(cfg),
        "config": configtools.to_dict(cfg),
        "schedule": describe_schedule(cfg),
        "lora": lora,
        "parameters": counts,
        "replication_only": {
            "data.replicate_across_ranks": {
                "value": cfg.data.replicate_across_ranks,
                "note": "replication only: every rank reads the same stream (the official code's "
                "regime); crops, noise and timesteps differ per rank",
            }
        },
        "docs": field_docs(cfg),
    }


def describe_tower(cfg) -> int | str:
    """Image-side parameters (what ``stage2.tower_tuning=full`` trains), on the meta device."""
    import torch

    with torch.device("meta"):
        backbone = _meta_backbone(cfg) if cfg.backbone.family != "open_clip" else None
    if backbone is None:
        return "unknown until the backbone is loaded"
    return sum(
        p.numel() for n, p in backbone.named_parameters() if backbone.is_vision_side(n.removeprefix("model."))
    )


def describe_schedule(cfg) -> dict:
    """Stage lengths as the run will use them, and what that means in images."""
    out: dict = {"train.schedule": cfg.train.schedule}
    for name in ("stage1", "stage2"):
        st = getattr(cfg, name)
        steps: int | str = st.steps
        if cfg.train.schedule == "one_epoch":
            steps = "one pass over the data (counted at start-up)"
        out[name] = {
            "runs": int(name[-1]) in cfg.train.stages,
            "steps": steps,
            "global_batch_size": st.global_batch_size,
            "lr": st.lr,
            "optimizer": st.optimizer,
            "lr_schedule": st.lr_schedule,
        }
    out["stage2"]["export_every"] = cfg.stage2.export_every
    out["stage2"]["export_keep"] = cfg.stage2.export_keep
    out["stage2"]["export_dtype"] = cfg.stage2.export_dtype
    return out


def _meta_backbone(cfg):
    """The preset's dual encoder built on the meta device, when its architecture is known offline."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from enhance.architectures import tower_vision
    from enhance.backbones.hf import HFCLIPBackbone, HFSiglipBackbone

    known = tower_vision(cfg.backbone.name_or_path)
    if known is None:
        return None
    kind, vision, proj = known
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1}
    if kind == "siglip":
        return HFSiglipBackbone.bare(SiglipModel(SiglipConfig(vision_config=vision, text_config=text)))
    config = CLIPConfig(vision_config=vision, text_config=text, projection_dim=proj)
    return HFCLIPBackbone.bare(CLIPModel(config))


def lora_counts(cfg, counts: dict) -> dict:
    """:func:`describe_lora`, its LoRA and bias parameter counts moved into ``counts``."""
    lora = describe_lora(cfg)
    counts["lora"] = lora.pop("lora_parameters")
    counts["tower_bias"] = lora.pop("bias_parameters")
    return lora


def describe_lora(cfg) -> dict:
    """Stage-2 LoRA placement and the LoRA / bias parameters that train, on the meta device."""
    import types

    import torch

    from enhance.stages import add_lora, tower_bias_names

    s2 = cfg.stage2
    out: dict = {
        "targets": s2.lora_targets,
        "target_modules": list(s2.lora_target_modules),
        "bias": s2.lora_bias,
        "r": s2.lora_r,
        "alpha": s2.lora_alpha,
        "dropout": s2.lora_dropout,
        "text_tower": "frozen",
    }
    unknown = "unknown until the backbone is loaded"
    with torch.device("meta"):
        backbone = _meta_backbone(cfg) if cfg.backbone.family != "open_clip" else None
        if backbone is None:
            return {**out, "lora_parameters": unknown, "bias_parameters": unknown}
        add_lora(types.SimpleNamespace(backbone=backbone), cfg)
    adapted = sorted(
        n.removeprefix("model.base_model.model.").removesuffix(".lora_A")
        for n, m in backbone.named_modules()
        if n.endswith(".lora_A")
    )
    biases = tower_bias_names(backbone, s2.lora_bias)
    params = dict(backbone.named_parameters())
    out["adapted_layers"] = len(adapted)
    out["adapted_outside_encoder_blocks"] = [n for n in adapted if ".layers." not in n]
    out["lora_parameters"] = sum(p.numel() for n, p in params.items() if "lora_" in n)
    out["bias_parameters"] = sum(params[n].numel() for n in biases)
    return out


def path_keys(cfg) -> dict[str, str]:
    """The config keys naming files or folders this run reads, and what each is."""
    keys = {"backbone.name_or_path": "the vision tower"}
    if cfg.data.source != "toyworld":
        keys["data.path"] = "the training images"
    from enhance.methods import get_method

    return keys | get_method(cfg.method.name).path_keys(cfg)


def preflight(cfg, args: argparse.Namespace, run_folder: bool = True) -> None:
    """What can be refused before torch loads: a malformed tower spec, local paths that do not
    exist, the run folder, ``--threads``."""
    if is_tower_spec(cfg.backbone.name_or_path):
        check_tower_spec(cfg.backbone.name_or_path, "backbone.name_or_path")
    keys = path_keys(cfg)
    require_local_paths(cfg, keys, keys)
    check_data(cfg.data.source, cfg.data.path, cfg.data.image_column)
    if run_folder:
        check_run_folder(args.output_dir, args.resume)
    plan_threads(args.threads)


@command("enhance")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from enhance.config import PRESETS_DIR, load_config

    if args.list_presets:
        if args.method:
            list_method_presets(args.method)
        else:
            print_presets(PRESETS_DIR, width=32)
        return 0
    if not args.preset and not args.config:
        raise UserError("give --preset NAME or --config FILE (see --list-presets)")
    overrides = list(args.overrides)
    if args.stage in ("1", "2"):
        overrides.append(f"train.stages=[{args.stage}]")
    cfg = load_config(args.preset, args.config, overrides, method=args.method)
    if args.describe:
        from enhance.memory_plan import memory_section

        out = describe(cfg)
        print(json.dumps(out | memory_section(cfg, out, args), indent=2))
        return 0
    if args.build_latent_cache:
        preflight(cfg, args, run_folder=False)
        start_work("enhance", args.threads)
        from enhance.train import build_latent_cache_only

        manifest = build_latent_cache_only(cfg)
        if manifest:
            summary = {k: manifest[k] for k in ("images", "skipped", "source_items")}
            print(json.dumps({"latent_cache": cfg.latent_cache.path, **summary}, indent=2))
        return 0
    start_training("enhance", args, lambda: preflight(cfg, args))
    from enhance.train import run

    result = run(cfg, args.output_dir, resume=args.resume)
    if result.get("export"):
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
