"""One seed of the study end to end (pretrain, enhance each variant, score), and the whole study.

Per-seed results land in ``DIR/seed<k>/scores.json`` as soon as they exist; a rerun reuses a
seed whose record holds the same variants, and any finished enhancement run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from eval.study.config import CONTROL_VARIANTS, StudyConfig
from eval.study.control import train_supervised_rare
from eval.study.metrics import aggregate, score_tower
from eval.study.protocol import (
    HeldOut,
    held_out,
    original_tower,
    reconstruction_loss,
    tower_change,
    train_variant,
)
from eval.study.report import figures, markdown
from genhancer.runtime.configtools import to_dict

log = logging.getLogger("study")


def run_seed(cfg: StudyConfig, seed: int, out: Path, data: HeldOut, cache_dir: str, vae: str) -> dict:
    """Pretrain, enhance each of ``cfg.methods``, score them and the original."""
    folder = out / f"seed{seed}"
    path = folder / "scores.json"
    variants = list(cfg.methods)
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("variants") == variants:
            return record
    t0 = time.time()
    clip_dir = original_tower(cfg, seed, cache_dir)
    timings = {"pretrain_s": time.time() - t0}
    towers = {"original": clip_dir}
    for v in variants:
        t = time.time()
        done = folder / v / "export" / "hf"
        if v in CONTROL_VARIANTS and not (done / "config.json").is_file():
            towers[v] = train_supervised_rare(cfg, clip_dir, seed, folder / v, cache_dir)
        else:
            towers[v] = train_variant(cfg, clip_dir, seed, v, folder / v, cache_dir, vae)
        timings[f"{v}_train_s"] = time.time() - t
    t = time.time()
    scored = {name: score_tower(d, data) for name, d in towers.items()}
    timings["score_s"] = time.time() - t
    base = scored["original"]["global_tokens"]
    record = {
        "seed": seed,
        "variants": variants,
        "metrics": {k: v["metrics"] for k, v in scored.items()},
        "items": {k: v["items"] for k, v in scored.items()},
        "recon_loss": {v: reconstruction_loss(folder / v) for v in variants},
        "tower_change": {v: tower_change(clip_dir, towers[v]) for v in variants},
        "token_cosine": {
            v: float(torch.nn.functional.cosine_similarity(base, scored[v]["global_tokens"]).mean())
            for v in variants
        },
        "timings_s": timings,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def run_study(cfg: StudyConfig, out: Path, cache_dir: str, vae: str = "genhancer-tiny:vae") -> dict:
    """Every seed, then ``results.json``, ``results.md`` and the figures."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = held_out(cfg)
    records = []
    for seed in cfg.seeds:
        log.info("seed %d", seed)
        records.append(run_seed(cfg, seed, out, data, cache_dir, vae))
    wall = time.time() - start
    agg = aggregate(records)
    agg["config"] = to_dict(cfg)
    agg["wall_s"] = wall
    agg["timings_s"] = {r["seed"]: r["timings_s"] for r in records}
    (out / "results.json").write_text(json.dumps(agg, indent=1))
    (out / "results.md").write_text(markdown(agg, to_dict(cfg), wall))
    figures(agg, out)
    return agg
