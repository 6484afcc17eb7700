"""Per-step time, throughput, peak memory and MFU of a GenHancer training step.

Runs the real model classes with random weights on synthetic tensors (nothing is downloaded):

    python bench/train_step.py --preset tiny --steps 5                      # CPU, cached tiny models
    python bench/train_step.py --size oai224 --batch 2 --stage 2            # paper Table 7 setting (GPU)
    python bench/train_step.py --size siglip384 --batch 16 --stage 1
    python bench/train_step.py --size oai224 --stage 2 --batches 2,max           # batch sweep to OOM
    python bench/train_step.py --preset tiny --profile                          # where the time goes
    python bench/train_step.py --preset tiny --ab base,gc,vae_bf16              # interleaved A/B ratios

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

# The paper towers by size name; their shapes (random init: weights are irrelevant to speed) come
# from enhance/model_configs, as --describe reads them.
TOWERS = {
    "oai224": "openai/clip-vit-large-patch14",
    "oai336": "openai/clip-vit-large-patch14-336",
    "siglip384": "google/siglip-so400m-patch14-384",
}


def build_real(size: str):
    """GenHancerModel with paper-sized tower, FLUX VAE and 2+4-block denoiser, random weights."""
    from diffusers import AutoencoderKL
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipModel

    from enhance.architectures import tower_vision, vae_config
    from enhance.backbones.hf import HFCLIPBackbone, HFSiglipBackbone
    from enhance.config import EnhanceConfig
    from enhance.denoisers.continuous import build_continuous_denoiser
    from enhance.model import GenHancerModel
    from enhance.projector import ConditionProjector
    from enhance.vae import LatentCodec

    kind, vision, projection_dim = tower_vision(TOWERS[size])
    image_size = vision["image_size"]
    text = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)

    class _Proc:  # only the image-processor settings are read
        image_processor = CLIPImageProcessor()

    if kind == "siglip":
        model = SiglipModel(SiglipConfig(vision_config=vision, text_config=text))
        backbone = HFSiglipBackbone(model, _Proc(), image_size)
    else:
        model = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim))
        backbone = HFCLIPBackbone(model, _Proc(), image_size)
    cfg = EnhanceConfig()
    vae = AutoencoderKL(**vae_config(cfg.method.vae.name_or_path)).requires_grad_(False).eval()
    codec = LatentCodec(vae, cfg.method.vae.scaling_factor, cfg.method.vae.shift_factor)
    projector = ConditionProjector(
        backbone.global_dim,
        cfg.method.denoiser.pooled_projection_dim,
        cfg.method.denoiser.joint_attention_dim,
    )
    denoiser = build_continuous_denoiser(cfg.method.denoiser, 16)
    return GenHancerModel(backbone, projector, denoiser, codec), cfg


def build_preset(preset: str, cache_dir: str = ""):
    from enhance.config import load_config
    from enhance.train import build_model

    cfg = load_config(preset, overrides=[f"cache_dir={cache_dir}"] if cache_dir else [])
    return build_model(cfg), cfg


def make_step(model, cfg, stage: int, batch: int, device: str, precision: str, perf: dict):
    """Configure ``stage``, count the FLOPs of one plain step, then apply ``perf`` switches
    (model FLOPs exclude gradient-checkpointing recompute). Returns (step, params, flops)."""
    from torch.profiler import record_function
    from torch.utils.flop_counter import FlopCounterMode

    from enhance.model import compile_modules, enable_gradient_checkpointing, set_vae_dtype
    from enhance.stages import configure_stage

    model.to(device)
    set_vae_dtype(model, perf.get("vae_dtype", "float32"), device)
    params = configure_stage(model, stage, cfg)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=device == "cuda")
    size = model.backbone.image_size
    gen = torch.Generator(device=device).manual_seed(0)
    data = {
        "pixel_values": torch.randn(batch, 3, size, size, device=device, generator=gen),
        "vae_pixels": torch.rand(batch, 3, size, size, device=device, generator=gen) * 2 - 1,
    }
    if perf.get("latent_cache"):  # what training from a latent cache costs: no VAE forward
        from enhance.model import encode_posterior

        mean, logvar = encode_posterior(model.codec, data.pop("vae_pixels"))
        data.update(latent_mean=mean, latent_logvar=logvar)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> torch.Tensor:
        with record_function("forward"), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model.training_forward(data, gen)["loss"]
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    with FlopCounterMode(display=False) as counter:
        step()
    if perf.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    if perf.get("compile"):
        compile_modules(model, perf.get("compile_backend", "inductor"))
    return step, params, counter.get_total_flops()


def time_steps(step, steps: int, device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, loss


def summarise(model, stage, batch, device, precision, peak_tflops, dt, flops, params, loss) -> dict:
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
    perf: dict | None = None,
) -> dict:
    step, params, flops = make_step(model, cfg, stage, batch, device, precision, perf or {})
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dt, loss = time_steps(step, steps, device)
    out = summarise(model, stage, batch, device, precision, peak_tflops, dt, flops, params, loss)
    out["step"] = step
    return out


PHASES = ("forward", "vae_encode", "tower_projector", "denoiser", "backward", "optimizer")


def profile_step(step, device: str, rows: int = 15, trace: str = "") -> dict:
    """One step under torch.profiler: the top ops by self time and the time per phase
    (forward = vae_encode + tower_projector + denoiser + loss; backward is not split by part)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    if trace:
        prof.export_chrome_trace(trace)
    avg = prof.key_averages()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    print(avg.table(sort_by=key, row_limit=rows))
    phases = {}
    for e in avg:
        if e.key in PHASES:
            t = e.device_time_total if device == "cuda" else e.cpu_time_total
            phases[e.key] = t / 1e3  # ms
    total = sum(phases.get(k, 0.0) for k in ("forward", "backward", "optimizer")) or 1.0
    print("phase              ms      share of step")
    for k in PHASES:
        if k in phases:
            print(f"{k:16s} {phases[k]:8.2f}   {phases[k] / total:6.1%}")
    return phases


def batch_sweep(build, cfg_stage, spec: str, steps: int, warmup: int, device, precision, peak, perf, cap):
    """``spec`` like ``2,8,max``: fixed batches, and ``max`` = double from the last fixed batch
    (or 2) until CUDA OOM (or ``cap``); report the largest that fits."""
    import gc

    results = []
    fixed = [int(b) for b in spec.split(",") if b != "max"]
    for b in fixed:
        model, cfg = build()
        r = measure(model, cfg, cfg_stage, b, steps, warmup, device, precision, peak, perf)
        r.pop("step")
        results.append(r)
        del model
    if "max" in spec.split(","):
        b, best = (fixed[-1] if fixed else 1) * 2, None
        while b <= cap:
            model = None
            try:
                model, cfg = build()
                r = measure(model, cfg, cfg_stage, b, steps, warmup, device, precision, peak, perf)
                r.pop("step")
                best = r
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                del model
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            b *= 2
        if best is not None:
            best["largest_batch_that_fits"] = True
            results.append(best)
    return results


def ab_compare(build, stage, batch, variants, rounds, steps, warmup, device, precision, perf_of):
    """Variants measured in interleaved rounds (A B C A B C ...) so shared-machine noise hits each
    alike; returns {variant: {step_s (median), ratio_vs_first}}."""
    import statistics

    steppers = {}
    for v in variants:
        model, cfg = build()
        step, _, _ = make_step(model, cfg, stage, batch, device, precision, perf_of(v))
        for _ in range(warmup):
            step()
        steppers[v] = step
    times = {v: [] for v in variants}
    losses = {}
    for _ in range(rounds):
        for v in variants:
            dt, loss = time_steps(steppers[v], steps, device)
            times[v].append(dt)
            losses[v] = float(loss)
    base = statistics.median(times[variants[0]])
    return {
        v: {
            "step_s": statistics.median(times[v]),
            "ratio_vs_" + variants[0]: statistics.median(times[v]) / base,
            "final_loss": losses[v],
        }
        for v in variants
    }


VARIANTS = {
    "base": {},
    "gc": {"gradient_checkpointing": True},
    "vae_bf16": {"vae_dtype": "bfloat16"},
    "compile": {"compile": True},
    "latent_cache": {"latent_cache": True},
    "all": {"gradient_checkpointing": True, "vae_dtype": "bfloat16", "compile": True},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="an enhance preset (tiny builds/uses the cached tiny models)")
    g.add_argument("--size", choices=sorted(TOWERS), help="paper-sized random-init configuration")
    p.add_argument("--stage", type=int, choices=[1, 2], default=2)
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default: preset's, or 2)")
    p.add_argument("--batches", default="", help="sweep, e.g. 2,max (max: double until OOM / --max-batch)")
    p.add_argument(
        "--max-batch", type=int, default=None, help="cap of the max sweep (default 1024 GPU, 64 CPU)"
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: 989 on CUDA)")
    p.add_argument("--compile", action="store_true", help="perf.compile (denoiser + tower)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--grad-ckpt", action="store_true", help="perf.gradient_checkpointing")
    p.add_argument("--vae-dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    p.add_argument("--profile", action="store_true", help="torch.profiler over one step after timing")
    p.add_argument("--trace", default="", help="with --profile: write a Chrome trace here")
    p.add_argument(
        "--ab",
        default="",
        help=f"interleaved A/B of variants, e.g. base,gc (from {','.join(VARIANTS)}); ratios vs the first; "
        "one model per variant stays on the device",
    )
    p.add_argument("--rounds", type=int, default=5, help="--ab rounds of --steps steps per variant")
    p.add_argument("--cache-dir", default="", help="with --preset: where tiny base models are cached")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision or ("bf16" if device == "cuda" else "no")
    peak = args.peak_tflops if args.peak_tflops is not None else (989.0 if device == "cuda" else 0.0)
    perf = {
        "compile": args.compile,
        "compile_backend": args.compile_backend,
        "gradient_checkpointing": args.grad_ckpt,
        "vae_dtype": args.vae_dtype,
    }
    if args.size:
        label = args.size

        def build():
            return build_real(args.size)

        default_batch = 2
    else:
        label = args.preset or "tiny"

        def build():
            return build_preset(label, args.cache_dir)

        default_batch = None
    if args.ab:
        variants = args.ab.split(",")
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            p.error(f"--ab: unknown variants {unknown}; choose from {list(VARIANTS)}")
        model, cfg = build()
        batch = (
            args.batch
            or default_batch
            or (cfg.stage1 if args.stage == 1 else cfg.stage2).per_device_batch_size
        )
        del model

        def perf_of(v):
            return {**perf, **VARIANTS[v]}

        res = {
            "config": label,
            "stage": args.stage,
            "batch": batch,
            "rounds": args.rounds,
            "ab": ab_compare(
                build,
                args.stage,
                batch,
                variants,
                args.rounds,
                args.steps,
                args.warmup,
                device,
                precision,
                perf_of,
            ),
        }
    elif args.batches:
        cap = args.max_batch or (1024 if device == "cuda" else 64)
        res = {
            "config": label,
            "sweep": batch_sweep(
                build, args.stage, args.batches, args.steps, args.warmup, device, precision, peak, perf, cap
            ),
        }
    else:
        model, cfg = build()
        scfg = cfg.stage1 if args.stage == 1 else cfg.stage2
        batch = args.batch or default_batch or scfg.per_device_batch_size
        res = {
            "config": label,
            "perf": {k: v for k, v in perf.items() if v and k != "compile_backend"},
            **measure(model, cfg, args.stage, batch, args.steps, args.warmup, device, precision, peak, perf),
        }
        step = res.pop("step")
        if args.profile:
            res["profile_ms"] = profile_step(step, device, trace=args.trace)
    if args.json:
        print(json.dumps(res))
        return 0
    for k, v in res.items():
        print(f"{k:22s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
