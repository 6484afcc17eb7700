"""Per-step time, throughput, peak memory and MFU of a GenHancer training step.

Runs the real model classes with random weights on synthetic tensors (nothing is downloaded):

    python bench/train_step.py --preset tiny --steps 5                      # CPU, cached tiny models
    python bench/train_step.py --size oai224 --batch 2 --stage 2            # paper Table 7 setting (GPU)
    python bench/train_step.py --size siglip384 --batch 16 --stage 1

FLOPs are counted once per configuration with ``torch.utils.flop_counter.FlopCounterMode`` over a
full forward + backward (every matmul, convolution and attention of tower, VAE encode and
denoiser), so MFU = FLOPs per step / step time / peak dense FLOP/s of the device
(``--peak-tflops``; H100 SXM bf16 dense = 989). The paper's Table 7 row (1.31 B denoiser,
13.07 GB, 20.55 s / 100 iterations at per-device batch 2) is printed beside the result as a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER_TABLE7 = {"params_b": 1.31, "memory_gb": 13.07, "s_per_100_iters": 20.55, "batch": 2}

# Architecture shapes of the paper towers (random init; weights are irrelevant to speed).
TOWERS = {
    "oai224": dict(
        family="openai-clip", image_size=224, patch=14, hidden=1024, layers=24, heads=16, proj=768, mlp=4096
    ),
    "oai336": dict(
        family="openai-clip", image_size=336, patch=14, hidden=1024, layers=24, heads=16, proj=768, mlp=4096
    ),
    "siglip384": dict(
        family="siglip", image_size=384, patch=14, hidden=1152, layers=27, heads=16, proj=1152, mlp=4304
    ),
}
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def build_real(size: str):
    """GenHancerModel with paper-sized tower, FLUX VAE and 2+4-block denoiser, random weights."""
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipModel

    from enhance.backbones.hf import HFCLIPBackbone, HFSiglipBackbone
    from enhance.config import EnhanceConfig
    from enhance.denoisers.continuous import build_continuous_denoiser
    from enhance.model import GenHancerModel
    from enhance.projector import ConditionProjector
    from enhance.vae import LatentCodec

    t = TOWERS[size]
    vision = dict(
        hidden_size=t["hidden"],
        num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"],
        intermediate_size=t["mlp"],
        image_size=t["image_size"],
        patch_size=t["patch"],
    )
    text = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)

    class _Proc:  # only the image-processor settings are read
        image_processor = CLIPImageProcessor()

    if t["family"] == "siglip":
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        backbone = HFSiglipBackbone(model, _Proc(), t["image_size"])
    else:
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=t["proj"]))
        backbone = HFCLIPBackbone(model, _Proc(), t["image_size"])
    cfg = EnhanceConfig()
    vae = AutoencoderKL(**FLUX_VAE).requires_grad_(False).eval()
    codec = LatentCodec(vae, 0.3611, 0.1159)
    projector = ConditionProjector(
        backbone.global_dim, cfg.denoiser.pooled_projection_dim, cfg.denoiser.joint_attention_dim
    )
    denoiser = build_continuous_denoiser(cfg.denoiser, 16)
    return GenHancerModel(backbone, projector, denoiser, codec), cfg


def build_preset(preset: str):
    from enhance.config import load_config
    from enhance.train import build_model

    cfg = load_config(preset)
    return build_model(cfg), cfg


def measure(
    model,
    cfg,
    stage: int,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    precision: str,
    peak_tflops: float,
) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from enhance.stages import configure_stage

    model.to(device)
    params = configure_stage(model, stage, cfg)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=device == "cuda")
    size = model.backbone.image_size
    gen = torch.Generator(device=device).manual_seed(0)
    data = {
        "pixel_values": torch.randn(batch, 3, size, size, device=device, generator=gen),
        "vae_pixels": torch.rand(batch, 3, size, size, device=device, generator=gen) * 2 - 1,
    }
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None)

    def step() -> torch.Tensor:
        with autocast:
            loss = model.training_forward(data, gen)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    model.train()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    n_den = sum(p.numel() for p in model.denoiser.parameters())
    out = {
        "stage": stage,
        "batch": batch,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "precision": precision,
        "step_s": dt,
        "images_per_s": batch / dt,
        "peak_memory_gb": mem,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / dt / 1e12,
        "denoiser_params_b": n_den / 1e9,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "final_loss": float(loss),
    }
    if peak_tflops:
        out["mfu"] = out["achieved_tflops"] / peak_tflops
    if batch == PAPER_TABLE7["batch"]:
        ours = dt * 100
        out["vs_paper_table7"] = {
            "paper_s_per_100": PAPER_TABLE7["s_per_100_iters"],
            "ours_s_per_100": ours,
            "speedup": PAPER_TABLE7["s_per_100_iters"] / ours,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="an enhance preset (tiny builds/uses the cached tiny models)")
    g.add_argument("--size", choices=sorted(TOWERS), help="paper-sized random-init configuration")
    p.add_argument("--stage", type=int, choices=[1, 2], default=2)
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default: preset's, or 2)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: 989 on CUDA)")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision or ("bf16" if device == "cuda" else "no")
    peak = args.peak_tflops if args.peak_tflops is not None else (989.0 if device == "cuda" else 0.0)
    if args.size:
        model, cfg = build_real(args.size)
        batch = args.batch or 2
        label = args.size
    else:
        model, cfg = build_preset(args.preset or "tiny")
        scfg = cfg.stage1 if args.stage == 1 else cfg.stage2
        batch = args.batch or scfg.per_device_batch_size
        label = args.preset or "tiny"
    res = {
        "config": label,
        **measure(model, cfg, args.stage, batch, args.steps, args.warmup, device, precision, peak),
    }
    if args.json:
        print(json.dumps(res))
        return 0
    for k, v in res.items():
        print(f"{k:22s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
