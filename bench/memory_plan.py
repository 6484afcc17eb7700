"""The memory plan (``--describe``) against a measured peak: a real-width FLUX slice on the CPU.

Each configuration runs in a fresh interpreter: build the slice at the paper's width (hidden 3072,
24 heads, 196 image tokens + 1 condition token at 224 px), materialise its weights, reset the
peak-RSS counter (``/proc/self/clear_refs``), run forward + backward (+ the optimiser step when the
weights train), and read ``VmHWM``. The measured figure is the peak RSS above the RSS after the
weights were written; the planned one is the same plan ``--describe`` makes (gradients, optimiser
states, activations measured by saved-tensor bytes), without the CUDA overhead term::

    python bench/memory_plan.py                     # both configurations, JSON + a markdown table
    python bench/memory_plan.py --json              # JSON only

On CUDA the same comparison is ``torch.cuda.max_memory_allocated`` (``bench/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (name, double blocks, single blocks, weights train, micro-batch, autocast)
CONFIGS = {
    "frozen_slice_bf16_b8": (1, 1, False, 8, "bf16"),  # stage2_only's denoiser: gradient to the condition
    "trainable_single_fp32_b2": (0, 1, True, 2, "no"),  # stage 1's denoiser, one block, AdamW step
}
PAPER_D = dict(
    num_attention_heads=24,
    attention_head_dim=128,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=[16, 56, 56],
    guidance_embeds=True,
)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_one(name: str) -> dict:
    """One configuration in this process: planned and measured bytes."""
    import torch
    from diffusers import FluxTransformer2DModel

    from enhance.denoisers.continuous import flux_kwargs
    from enhance.memory_plan import _init, _measure
    from genhancer.runtime.memory import GIB, Activations, Part, Setup, plan

    doubles, singles, trains, batch, precision = CONFIGS[name]
    d = types.SimpleNamespace(num_layers=doubles, num_single_layers=singles, **PAPER_D)
    kwargs = flux_kwargs(d, 16)
    side, text = 14, 1

    def build():
        with torch.device("meta"):
            return FluxTransformer2DModel(**kwargs)

    def run(model, b):
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
        hidden = torch.randn(b, side * side, 64, requires_grad=True)
        out = model(
            hidden_states=hidden,
            encoder_hidden_states=torch.randn(b, text, 4096, requires_grad=True),
            pooled_projections=torch.randn(b, 768, requires_grad=True),
            timestep=torch.full((b,), 0.5),
            img_ids=img_ids,
            txt_ids=torch.zeros(text, 3),
            guidance=torch.full((b,), 4.0),
            return_dict=False,
        )[0]
        return (out.float() - hidden.detach()).pow(2).mean()

    # the plan: saved bytes of this very slice at micro-batch 1 and 2 (what --describe measures)
    measured = _measure(build, run, lambda m: {}, precision, trains)
    other = measured.get("other", {"per_sample": 0.0, "fixed": 0.0})
    acts = Activations(per_sample=other["per_sample"], fixed=other["fixed"], source="saved-tensor bytes")
    model = _init(build())
    model.requires_grad_(trains)
    params = sum(p.numel() for p in model.parameters())
    setup = Setup(mixed_precision=precision, overhead_gib=0.0)
    planned = plan([Part("slice", params, params if trains else 0)], acts, batch, setup)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False) if trains else None
    rss_weights = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = run(model, batch)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    peak = _status("VmHWM")
    measured_delta = peak - rss_weights
    planned_delta = (planned["total_gib"] - planned["weights_gib"]) * GIB
    return {
        "config": name,
        "params": params,
        "micro_batch": batch,
        "precision": precision,
        "weights_train": trains,
        "planned_gib": round(planned_delta / GIB, 3),
        "planned_parts_gib": {k: planned[k] for k in ("gradients_gib", "optimizer_gib", "activations_gib")},
        "measured_rss_delta_gib": round(measured_delta / GIB, 3),
        "measured_over_planned": round(measured_delta / planned_delta, 3),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| slice (real width) | params | batch | dtype | weights train | planned GiB (grads + optimiser + activations) | measured peak RSS delta GiB | measured / planned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.0f} M | {r['micro_batch']} | {r['precision']} | "
            f"{r['weights_train']} | {r['planned_gib']} | {r['measured_rss_delta_gib']} | {r['measured_over_planned']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), help="run one configuration in this process")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.config:
        print(json.dumps(run_one(args.config)))
        return 0
    rows = []
    for name in CONFIGS:
        proc = subprocess.run(
            [sys.executable, __file__, "--config", name], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows, indent=1))
    if not args.json:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
