"""A placebo for a variant's tower change: the same singular values, in random directions.

A small but consistent gain on a probe could come from *any* change of the tower of that size: the
probes are refitted on the new features, and a perturbation flips near-tied items. The placebo keeps
what the variant changed in every image-side weight matrix -- the singular values of ``W_after -
W_before``, hence its rank and Frobenius norm -- and draws the singular vectors at random (a bias
change keeps its norm and gets a random direction). It is scored by the unchanged protocol, so a
variant's effect counts as specific only where it exceeds its placebo's.

    python -m eval.study.placebo runs/study/testbed-h2h --variant enhanced --draws 3

reads the study folder's ``results.json`` (its config) and each ``seed<k>/scores.json``, writes the
placebo towers under ``seed<k>/placebo-<variant>-<j>/export/hf`` and the comparison to
``placebo-<variant>.json`` / ``.md`` in the study folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eval.stats import mean_std, paired_t
from eval.study.config import StudyConfig
from eval.study.metrics import aggregate, score_tower
from eval.study.protocol import held_out, original_tower
from genhancer.runtime.configtools import from_dict
from genhancer.runtime.seeding import derive_seed

IMAGE_SIDE = ("vision_model.", "visual_projection.")
#: Rows of the comparison table (the pre-registered primary metric and its parts first).
ROWS: tuple[str, ...] = (
    "probe/rare",
    "probe/count",
    "probe/orientation",
    "probe/position",
    "probe/common",
    "mmvp/average",
    "mmvp/rare",
    "zeroshot/mean",
    "cluster/acc_mean",
)


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a uniformly random frame (Haar), not QR's sign choice


def placebo_delta(delta: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``delta``'s singular values on random singular vectors (a vector: its norm, random direction)."""
    d = delta.double()
    if d.ndim == 1:
        direction = torch.randn(d.shape, generator=gen, dtype=torch.float64)
        return (direction * d.norm() / direction.norm()).to(delta.dtype)
    s = torch.linalg.svdvals(d)
    rank = int((s > s[0] * 1e-6).sum()) if s.numel() and s[0] > 0 else 0
    if rank == 0:
        return torch.zeros_like(delta)
    u = _orthonormal(d.shape[0], rank, gen)
    v = _orthonormal(d.shape[1], rank, gen)
    return ((u * s[:rank]) @ v.T).to(delta.dtype)


def placebo_tower(original: Path, variant: Path, out: Path, seed: int) -> Path:
    """Write ``out`` (a copy of ``variant``'s HF folder) whose image-side weights are ``original``
    plus the placebo of each changed tensor; the text side stays the variant's (it is unchanged)."""
    before, after = (
        load_file(str(original / "model.safetensors")),
        load_file(str(variant / "model.safetensors")),
    )
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key in sorted(after):
        w = after[key]
        if key.startswith(IMAGE_SIDE) and key in before and not torch.equal(before[key], w):
            w = before[key] + placebo_delta(w.float() - before[key].float(), gen).to(w.dtype)
        weights[key] = w.contiguous()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(variant, out, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def study_config(folder: Path) -> StudyConfig:
    """The study folder's own resolved config (``results.json``), so the held-out sets match."""
    cfg = from_dict(StudyConfig, json.loads((folder / "results.json").read_text())["config"])
    cfg.validate()
    return cfg


def run(folder: Path, variant: str, draws: int, cache_dir: str) -> dict:
    """Score ``draws`` placebos of ``variant`` per seed; compare them with the original and the variant."""
    cfg = study_config(folder)
    data = held_out(cfg)
    names = [f"placebo-{variant}-{j}" for j in range(draws)]
    records = []
    for seed in cfg.seeds:
        seed_dir = folder / f"seed{seed}"
        scores = json.loads((seed_dir / "scores.json").read_text())
        if variant not in scores["variants"]:
            raise SystemExit(f"{seed_dir / 'scores.json'}: no variant '{variant}'")
        clip_dir = original_tower(cfg, seed, cache_dir)
        record = {
            "seed": seed,
            "variants": [variant, *names],
            "metrics": {k: scores["metrics"][k] for k in ("original", variant)},
            "items": {k: scores["items"][k] for k in ("original", variant)},
        }
        for j, name in enumerate(names):
            hf = placebo_tower(
                clip_dir,
                seed_dir / variant / "export" / "hf",
                seed_dir / name / "export" / "hf",
                derive_seed("study_placebo", variant, seed, j),
            )
            scored = score_tower(hf, data)
            record["metrics"][name], record["items"][name] = scored["metrics"], scored["items"]
        records.append(record)
    agg = aggregate(records)
    out = {"variant": variant, "draws": draws, "seeds": cfg.seeds, "rows": {}}
    for key in ROWS:
        vs_placebo = [
            r["metrics"][variant][key] - sum(r["metrics"][n][key] for n in names) / draws for r in records
        ]
        placebo_deltas = [
            sum(r["metrics"][n][key] for n in names) / draws - r["metrics"]["original"][key] for r in records
        ]
        out["rows"][key] = {
            "variant_delta": agg["table"][variant][key]["delta"],
            "variant_t_p": agg["table"][variant][key]["t_p"],
            "variant_sign": agg["table"][variant][key].get("sign"),
            "placebo_delta": mean_std(placebo_deltas),
            "placebo_t_p": paired_t(placebo_deltas),
            "placebo_sign": [agg["table"][n][key].get("sign") for n in names],
            "variant_minus_placebo": mean_std(vs_placebo),
            "variant_minus_placebo_t_p": paired_t(vs_placebo),
        }
    (folder / f"placebo-{variant}.json").write_text(json.dumps(out, indent=1))
    (folder / f"placebo-{variant}.md").write_text(markdown(out))
    return out


def _sign(s: Sequence | None) -> str:
    return f"{s[0]}/{s[1]}, p {s[2]:.3f}" if s else ""


def markdown(out: dict) -> str:
    v, rows = out["variant"], out["rows"]
    lines = [
        f"Placebo of `{v}`: its per-matrix singular values on random singular vectors, {out['draws']} "
        f"draws per seed, seeds {out['seeds']}; Δ vs the original, mean ± std over seeds, paired t p; "
        "sign: items better/worse, pooled over seeds (each placebo draw separately).",
        "",
        f"| metric | Δ {v} | Δ placebo (mean of draws) | placebo signs | {v} − placebo |",
        "|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        (dv, sv), (dp, sp), (dd, sd) = r["variant_delta"], r["placebo_delta"], r["variant_minus_placebo"]
        sign_v = f"; sign {_sign(r['variant_sign'])}" if r["variant_sign"] else ""
        signs = "; ".join(_sign(s) for s in r["placebo_sign"] if s)
        lines.append(
            f"| {key} | {dv:+.2f} ± {sv:.2f} (p {r['variant_t_p']:.3f}{sign_v}) | {dp:+.2f} ± {sp:.2f} "
            f"(p {r['placebo_t_p']:.3f}) | {signs} | {dd:+.2f} ± {sd:.2f} (p {r['variant_minus_placebo_t_p']:.3f}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.study.placebo", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="a study output folder (results.json, seed<k>/scores.json)")
    p.add_argument("--variant", default="enhanced")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--cache-dir", default="")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if not (folder / "results.json").is_file():
        print(f"python -m eval.study.placebo: {folder / 'results.json'} not found", file=sys.stderr)
        return 2
    if args.draws < 1:
        print("python -m eval.study.placebo: --draws must be >= 1", file=sys.stderr)
        return 2
    from genhancer.toyworld.models import default_cache_dir

    run(folder, args.variant, args.draws, args.cache_dir or str(default_cache_dir()))
    print((folder / f"placebo-{args.variant}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
