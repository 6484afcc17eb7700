"""``enhance``: two-stage GenHancer enhancement of a CLIP-style vision tower.

Examples::

    enhance --list-presets
    enhance --preset tiny --output-dir runs/tiny                     # CPU, offline, minutes
    enhance --preset openai-clip-l14-224 --set data.path=/data/cc3m --output-dir runs/oai224
    accelerate launch -m enhance --preset openai-clip-l14-224 ...     # many GPUs
    enhance --config my.yaml --set stage2.lr=2e-5 --stage 2 --resume --output-dir runs/x
    enhance --preset openai-clip-l14-224 --describe                   # config + parameter counts
    enhance --preset openai-clip-l14-224 --set data.path=/data/cc3m \
        --set latent_cache.path=/data/cc3m-latents --build-latent-cache  # encode once (see README)

Exit code 2 with a one-line message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from enhance.cliutils import add_config_flags, make_parser, print_presets, report, setup_logging
from enhance.errors import UserError

# Widths of the global / local tokens of the paper backbones, so --describe needs no download.
KNOWN_DIMS = {
    "openai/clip-vit-large-patch14": (768, 1024),
    "openai/clip-vit-large-patch14-336": (768, 1024),
    "facebook/metaclip-l14-fullcc2.5b": (768, 1024),
    "facebook/metaclip-h14-fullcc2.5b": (1024, 1280),
    "google/siglip-so400m-patch14-224": (1152, 1152),
    "google/siglip-so400m-patch14-384": (1152, 1152),
    "genhancer-tiny:clip": (64, 64),
}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("enhance", __doc__)
    add_config_flags(p)
    p.add_argument("--output-dir", help="run folder (config.yaml, metrics.jsonl, checkpoints/, export/)")
    p.add_argument("--stage", choices=["1", "2", "all"], default=None, help="run one stage only")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    p.add_argument("--describe", action="store_true", help="print resolved config and parameter counts")
    p.add_argument(
        "--build-latent-cache",
        action="store_true",
        help="only encode the data's VAE posteriors into latent_cache.path (training builds it too)",
    )
    return p


def describe(cfg) -> dict:
    """Resolved config and parameter counts, built on the meta device (downloads nothing)."""
    import torch

    from enhance import configtools
    from enhance.config import field_docs
    from enhance.denoisers.continuous import flux_kwargs

    counts: dict[str, int | str] = {}
    dims = KNOWN_DIMS.get(cfg.backbone.name_or_path)
    d = cfg.denoiser
    discrete = d.kind == "discrete"
    with torch.device("meta"):
        if not discrete:
            from diffusers import FluxTransformer2DModel

            den = FluxTransformer2DModel(**flux_kwargs(d, cfg.vae.latent_channels))
            counts["denoiser"] = sum(p.numel() for p in den.parameters())
        elif d.codebook_size and d.token_grid:
            from enhance.denoisers.discrete import PerceiverDenoiser

            den = PerceiverDenoiser(
                d.codebook_size,
                d.token_grid,
                d.perceiver_hidden,
                d.num_layers,
                d.perceiver_heads,
                d.decoder_layers,
            )
            counts["denoiser"] = sum(p.numel() for p in den.parameters())
        else:
            counts["denoiser"] = "unknown until the tokenizer is loaded (set codebook_size and token_grid)"
        if dims is not None:
            from enhance.projector import ConditionProjector

            proj = ConditionProjector(
                dims[0],
                0 if discrete else d.pooled_projection_dim,
                d.perceiver_hidden if discrete else d.joint_attention_dim,
                dims[1] if cfg.backbone.local_token_ratio > 0 else 0,
            )
            counts["projector"] = sum(p.numel() for p in proj.parameters())
        else:
            counts["projector"] = "unknown until the backbone is loaded"
    return {"config": configtools.to_dict(cfg), "parameters": counts, "docs": field_docs()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from enhance.config import PRESETS_DIR, load_config

        if args.list_presets:
            print_presets(PRESETS_DIR, width=32)
            return 0
        if not args.preset and not args.config:
            raise UserError("give --preset NAME or --config FILE (see --list-presets)")
        overrides = list(args.overrides)
        if args.stage in ("1", "2"):
            overrides.append(f"train.stages=[{args.stage}]")
        cfg = load_config(args.preset, args.config, overrides)
        if args.describe:
            print(json.dumps(describe(cfg), indent=2))
            return 0
        if args.build_latent_cache:
            setup_logging()
            from enhance.train import build_latent_cache_only

            manifest = build_latent_cache_only(cfg)
            if manifest:
                summary = {k: manifest[k] for k in ("images", "skipped", "source_items")}
                print(json.dumps({"latent_cache": cfg.latent_cache.path, **summary}, indent=2))
            return 0
        if not args.output_dir:
            raise UserError("--output-dir is required to train")
        setup_logging()
        from enhance.train import run

        result = run(cfg, args.output_dir, resume=args.resume)
        if result.get("export"):
            print(json.dumps(result, indent=2))
        return 0
    except UserError as exc:
        return report("enhance", exc)


if __name__ == "__main__":
    sys.exit(main())
