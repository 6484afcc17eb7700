"""How well DCR's sampled negatives stand in for the exact loss, by the stage-2 gradient they give.

``method.negatives=exact`` denoises each anchor's noisy latent under all B-1 other conditions
(B^2 + B UNet calls per micro-batch), ``sampled`` under K random others (B*(K+1) + B). The loss
values differ by construction (fewer terms in the denominator); what training sees is the gradient.
This builds ``enhance --method dcr --preset PRESET``, trains the projector a few stage-1 steps (the
state stage 2 starts from), adds the stage-2 LoRA and, on fixed micro-batches, computes the gradient
of the stage-2 loss w.r.t. the trainable tower parameters (LoRA + ``lora_only`` biases) under exact
and under sampled K for several negative draws. Latent sample, noise, t, augmented view and LoRA
dropout are the same for every variant of a batch (one seed: the step generator and the global RNG
reseeded before each call), so the negatives are the only difference.

Reported per K: cosine with the exact gradient (per micro-batch, mean +- std over batches x draws),
the cosine of the draws' mean (what averaging over draws recovers: variance vs bias), the cosine of
the gradient summed over all measured micro-batches (as accumulation to a global batch sums them),
the norm ratio, the loss, the UNet calls and the measured time relative to exact. Two floors for
scale: exact on the same batch with another (noise, t, view, dropout) draw, and exact on another
batch. Measured at the start of stage 2 and again after exact stage-2 steps (``--at``, default
0 and 50), when LoRA A has a gradient too (LoRA B starts at zero). Complements ``bench/dcr_negatives.py`` (loss and time only).

    python bench/dcr_negatives_gradient.py --set stage2.lr=5e-4 --out runs/bench_dcr_negatives  # ~4 min CPU
    python bench/dcr_negatives_gradient.py --stage1-steps 3 --at 0 --batches 2 --draws 2 --ks 1,7  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enhance.methods.dcr.config import dcr_unet_calls  # noqa: E402
from genhancer.runtime.seeding import derive_seed  # noqa: E402


def with_negatives(section: Any, negatives: str, k: int) -> Any:
    """The model's DCR section with another negatives option (everything else unchanged)."""
    return dataclasses.replace(section, negatives=negatives, num_negatives=k)


def stage2_loss(model: Any, batch: dict, seed: int, neg_seed: int) -> torch.Tensor:
    """``DCRModel.training_forward`` with the negatives drawn from their own generator.

    The trainer reseeds the global RNG (LoRA dropout) and the step generator (latent sample, t,
    noise, augmented view) from one seed; this does the same, so two calls with one ``seed`` see
    the same draws whatever the negatives option, and ``neg_seed`` alone picks the sampled negatives
    (exact draws none, so under exact this equals ``training_forward`` without one)."""
    device = batch["pixel_values"].device
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    neg_gen = torch.Generator(device=device).manual_seed(neg_seed)
    return model.training_forward(batch, gen, neg_gen)["loss"]


def stage2_gradient(
    model: Any, params: list[torch.nn.Parameter], batch: dict, seed: int, neg_seed: int = 0
) -> tuple[float, torch.Tensor, float]:
    """(loss, flat gradient over ``params``, seconds) of :func:`stage2_loss` under ``model.dcr``."""
    t0 = time.perf_counter()
    loss = stage2_loss(model, batch, seed, neg_seed)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
    return float(loss.detach()), flat.double(), time.perf_counter() - t0


@torch.no_grad()
def condition_spread(model: Any, batch: dict, seed: int) -> dict[str, float]:
    """How much the frozen UNet's prediction depends on the condition, on the draws of ``seed``:
    relative distance and cosine between UNet(z_i, c_j) and the anchor UNet(z_i, c_i) over j != i,
    and the anchor's cosine with the ground-truth target. Negatives close to the anchor give the
    negative terms little gradient, whichever of them are drawn."""
    torch.manual_seed(seed)
    gen = torch.Generator(device=batch["pixel_values"].device).manual_seed(seed)
    z = model.latents(batch, gen)
    t, noise, z_t = model.draw(z, gen)
    context = model.global_condition(batch["pixel_values"])
    b = z.shape[0]
    rows = torch.arange(b, device=z.device)
    pred = (
        model.predict_pairs(z_t, t, context, rows.repeat_interleave(b), rows.repeat(b)).view(b, b, -1).float()
    )
    anchor = pred[rows, rows]
    off = ~torch.eye(b, dtype=torch.bool, device=z.device)
    rel = (pred - anchor[:, None]).norm(dim=-1) / anchor.norm(dim=-1)[:, None]
    cos = torch.nn.functional.cosine_similarity(pred, anchor[:, None], dim=-1)
    target = model.denoiser.target(z, noise, t).flatten(1).float()
    return {
        "negative_rel_distance": float(rel[off].mean()),
        "negative_cos": float(cos[off].mean()),
        "anchor_target_cos": float(torch.nn.functional.cosine_similarity(anchor, target, dim=-1).mean()),
    }


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def measure(
    model: Any,
    params: list[torch.nn.Parameter],
    batches: list[dict],
    ks: list[int],
    draws: int,
    seed: int,
) -> dict[str, Any]:
    """Exact vs sampled K gradients on ``batches`` (one draw seed per batch, ``draws`` negative
    draws per K), plus the two exact floors. Leaves ``model.dcr`` as it found it."""
    base = model.dcr
    b = batches[0]["pixel_values"].shape[0]
    exact_sec = with_negatives(base, "exact", base.num_negatives)
    exact_calls = dcr_unet_calls(b, exact_sec)
    seeds = [derive_seed("dcr-negatives", seed, i) for i in range(len(batches))]
    try:
        model.dcr = exact_sec
        exact = [stage2_gradient(model, params, x, s) for x, s in zip(batches, seeds)]
        repeat = stage2_gradient(model, params, batches[0], seeds[0])
        other_draw = [
            stage2_gradient(model, params, x, derive_seed("dcr-negatives-redraw", seed, i))
            for i, x in enumerate(batches)
        ]
        spread = [condition_spread(model, x, s) for x, s in zip(batches, seeds)]
        exact_total = sum(g for _, g, _ in exact)
        rows = []
        for k in ks:
            model.dcr = with_negatives(base, "sampled", k)
            per = [
                [
                    stage2_gradient(model, params, x, s, derive_seed("negatives", s, k, d))
                    for d in range(draws)
                ]
                for x, s in zip(batches, seeds)
            ]
            cos = [cosine(g, exact[i][1]) for i, runs in enumerate(per) for _, g, _ in runs]
            ratio = [float(g.norm() / exact[i][1].norm()) for i, runs in enumerate(per) for _, g, _ in runs]
            mean_cos = [cosine(sum(g for _, g, _ in runs) / draws, exact[i][1]) for i, runs in enumerate(per)]
            total_cos = [
                cosine(sum(per[i][d][1] for i in range(len(batches))), exact_total) for d in range(draws)
            ]
            sec = statistics.median(t for runs in per for _, _, t in runs)
            rows.append(
                {
                    "negatives": "sampled",
                    "k": k,
                    "unet_calls": dcr_unet_calls(b, model.dcr),
                    "calls_vs_exact": dcr_unet_calls(b, model.dcr) / exact_calls,
                    "loss": _stats([loss for runs in per for loss, _, _ in runs]),
                    "cos": _stats(cos),
                    "cos_draw_mean": _stats(mean_cos),
                    "cos_summed": _stats(total_cos),
                    "norm_ratio": _stats(ratio),
                    "time_vs_exact": sec / statistics.median(t for _, _, t in exact),
                    "raw_cos": cos,
                    "raw_norm_ratio": ratio,
                }
            )
    finally:
        model.dcr = base
    pairs = list(itertools.combinations(range(len(batches)), 2))
    return {
        "exact": {
            "k": b - 1,
            "unet_calls": exact_calls,
            "loss": _stats([loss for loss, _, _ in exact]),
            "grad_norm": _stats([float(g.norm()) for _, g, _ in exact]),
            "seconds_median": statistics.median(t for _, _, t in exact),
        },
        "condition_spread": {key: _stats([d[key] for d in spread]) for key in spread[0]},
        "repeat_cos": cosine(repeat[1], exact[0][1]),
        "repeat_max_abs_diff": float((repeat[1] - exact[0][1]).abs().max()),
        "floor_same_batch_other_draw": _stats(
            [cosine(g, exact[i][1]) for i, (_, g, _) in enumerate(other_draw)]
        ),
        "floor_summed_other_draw": cosine(sum(g for _, g, _ in other_draw), exact_total),
        "floor_other_batch": _stats([cosine(exact[i][1], exact[j][1]) for i, j in pairs]),
        "sampled": rows,
    }


def train_steps(model: Any, params: list[torch.nn.Parameter], stream: Iterator[dict], steps: int, lr: float,
                weight_decay: float, seed: int) -> list[float]:  # fmt: skip
    """``steps`` AdamW steps of the model's own loss on one micro-batch each (the warm-up before a
    measurement: stage 1's projector, or stage 2's LoRA); returns the losses."""
    if steps <= 0:
        return []
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    for step in range(steps):
        s = derive_seed("dcr-negatives-warmup", seed, step)
        torch.manual_seed(s)
        loss = model(next(stream), torch.Generator().manual_seed(s))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _fmt(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """One table per measurement point: a row per K, then exact and its two floors."""
    c = result["config"]
    out = [
        f"B = {c['batch']}, K in {c['ks']}, {c['batches']} micro-batches x {c['draws']} negative draws; "
        f"preset {c['preset']}, stage-1 warm-up {c['stage1_steps']} steps; {c['device']}, "
        f"{c['threads']} threads; wall {result['wall_s']:.0f} s",
    ]
    for point in result["points"]:
        m = point["measurement"]
        e, sp = m["exact"], m["condition_spread"]
        out += [
            "",
            f"**After {point['stage2_steps']} exact stage-2 steps** (LoRA A gradient "
            f"{'zero: B starts at 0' if point['stage2_steps'] == 0 else 'non-zero'}; exact loss "
            f"{_fmt(e['loss'])}, repeat of an exact gradient: cosine {m['repeat_cos']:.9f}). "
            f"UNet(z_i, c_j) vs the anchor UNet(z_i, c_i): relative distance {_fmt(sp['negative_rel_distance'], 4)}, "
            f"cosine {_fmt(sp['negative_cos'], 4)}; anchor vs target cosine {_fmt(sp['anchor_target_cos'])}",
            "",
            "| negatives | UNet calls / micro-batch | calls / exact | loss | cos(sampled, exact) | "
            "cos(mean of draws, exact) | cos, summed over micro-batches | norm ratio | time / exact |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in m["sampled"]:
            same = " (= B−1)" if r["k"] == c["batch"] - 1 else ""
            out.append(
                f"| sampled K={r['k']}{same} | {r['unet_calls']} | {r['calls_vs_exact']:.2f} | {_fmt(r['loss'])} | "
                f"{_fmt(r['cos'])} | {_fmt(r['cos_draw_mean'])} | {_fmt(r['cos_summed'])} | "
                f"{_fmt(r['norm_ratio'])} | {r['time_vs_exact']:.2f} |"
            )
        out += [
            f"| exact (K={e['k']}) | {e['unet_calls']} | 1.00 | {_fmt(e['loss'])} | 1 | 1 | 1 | 1 | 1.00 |",
            f"| floor: exact, same batches, other noise/t/view | | | | {_fmt(m['floor_same_batch_other_draw'])} "
            f"| | {m['floor_summed_other_draw']:.3f} | | |",
            f"| floor: exact, another batch | | | | {_fmt(m['floor_other_batch'])} | | | | |",
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8, help="micro-batch B (DCR's official: 8 per device)")
    p.add_argument("--ks", default="1,3,7", help="sampled negatives per anchor, comma-separated")
    p.add_argument("--batches", type=int, default=4, help="fixed micro-batches measured")
    p.add_argument("--draws", type=int, default=5, help="negative draws per K and batch")
    p.add_argument("--stage1-steps", type=int, default=100, help="projector warm-up (exact loss)")
    p.add_argument("--at", default="0,50", help="measure after these many exact stage-2 steps, e.g. 0,50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="folder for results.json and results.md")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    at = sorted(int(a) for a in args.at.split(","))
    if args.batch < 2 or any(not 1 <= k <= args.batch - 1 for k in ks) or args.batches < 2 or args.draws < 1:
        p.error("need --batch >= 2, 1 <= K <= batch-1, --batches >= 2 and --draws >= 1")

    from enhance.config import load_config
    from enhance.stages import configure_stage
    from enhance.train import build_data_source, build_model, build_stream_factory

    t0 = time.perf_counter()
    overrides = [*args.overrides, f"stage1.per_device_batch_size={args.batch}",
                 f"stage2.per_device_batch_size={args.batch}"]  # fmt: skip
    cfg = load_config(args.preset, overrides=overrides, method="dcr")
    model = build_model(cfg)
    model.train()  # as the trainer: LoRA dropout on
    source = build_data_source(cfg, model.backbone.image_size)

    def stream(stage: int) -> Iterator[dict]:
        return build_stream_factory(cfg, model, source, stage, 0, 1, args.batch, False)(0)

    params = configure_stage(model, 1, cfg)
    s1 = cfg.stage1
    stage1_losses = train_steps(
        model, params, stream(1), args.stage1_steps, s1.lr, s1.weight_decay, args.seed
    )
    params = configure_stage(model, 2, cfg)
    stage2 = stream(2)
    batches = [next(stage2) for _ in range(args.batches)]  # measured, never trained on
    opt_params = params
    points, done, stage2_losses = [], 0, []
    for n in at:
        s2 = cfg.stage2
        stage2_losses += train_steps(
            model, opt_params, stage2, n - done, s2.lr, s2.weight_decay, args.seed + 1
        )
        done = n
        t1 = time.perf_counter()
        m = measure(model, params, batches, ks, args.draws, args.seed)
        points.append({"stage2_steps": n, "measurement": m, "seconds": time.perf_counter() - t1})
    result = {
        "config": {
            "preset": args.preset,
            "batch": args.batch,
            "ks": ks,
            "batches": args.batches,
            "draws": args.draws,
            "stage1_steps": args.stage1_steps,
            "stage1_lr": cfg.stage1.lr,
            "stage2_lr": cfg.stage2.lr,
            "at": at,
            "seed": args.seed,
            "overrides": args.overrides,
            "temperature": cfg.method.temperature,
            "trainable_params": sum(p.numel() for p in params),
            "device": "cpu",
            "threads": torch.get_num_threads(),
        },
        "stage1_loss_first_last": stage1_losses[:1] + stage1_losses[-1:],
        "stage2_loss_first_last": stage2_losses[:1] + stage2_losses[-1:],
        "points": points,
        "wall_s": time.perf_counter() - t0,
    }
    md = markdown(result)
    print("\n" + md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        (out / "results.md").write_text(md)
        print(f"wrote {out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
