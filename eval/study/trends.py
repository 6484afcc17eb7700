"""``--part trends``: the paper's thesis (Fig. 1, Figs. 5-6), better generation is not a better
tower, as dose-response curves on the study's world.

Four knobs (``cfg.trends``), each swept with the others at their base values: the stage-1 length,
the denoiser's depth, the share of local tokens in the condition, one vs two stages. A point is one
GenHancer ``enhance`` run (:func:`eval.study.protocol.train_variant` with the point's extra
``--set`` overrides) per seed; a point shared by several knobs (the base) is trained once. Each point
records its generation quality (:mod:`eval.generation`: held-out ``recon_loss`` and ``clip_score``
under a frozen full-caption judge) and its representation quality (the study's own scoring,
:func:`eval.study.metrics.score_tower`: toy MMVP-VLM, probes); :mod:`eval.study.trends_report`
writes ``trends.json``, ``trends.md`` and one figure per knob.

Resumable: ``DIR/seed<k>/<point>/`` is the run, ``DIR/seed<k>/<point>.json`` its scores; a rerun
reuses a point whose record was made with the same training and scoring settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from eval.generation import GenerationSettings, Judge, evaluate_generation, toy_captioned
from eval.study.config import StudyConfig
from eval.study.metrics import score_tower
from eval.study.protocol import (
    IMAGE_SIZE,
    HeldOut,
    held_out,
    original_tower,
    reconstruction_loss,
    train_variant,
)
from eval.study.trends_report import write_report
from genhancer.runtime.checkpoint import atomic_write_text
from genhancer.runtime.configtools import to_dict

log = logging.getLogger("study.trends")

#: Held-out world of the generation metric (scoring: 9001-9003; sensitivity: 9004).
TRENDS_WORLD = 9005


@dataclass(frozen=True)
class Point:
    """One trained configuration: stage-1 length, denoiser depth, local-token ratio, stages."""

    stage1_steps: int
    depth: int
    local_ratio: float
    one_stage: bool

    @property
    def variant(self) -> str:
        """The study's GenHancer variant it extends (``enhanced``: two stages)."""
        return "one_stage" if self.one_stage else "enhanced"

    def name(self, depth_key: str) -> str:
        """Its folder name: every setting spelled out, so equal points share one run."""
        stages = "one" if self.one_stage else "two"
        tail = depth_key.rsplit(".", 1)[-1]
        return f"s1-{self.stage1_steps}_{tail}-{self.depth}_local-{self.local_ratio:g}_{stages}-stage"

    def sets(self, depth_key: str) -> list[str]:
        """The ``enhance --set`` overrides on top of the variant's."""
        return [f"{depth_key}={self.depth}", f"backbone.local_token_ratio={self.local_ratio}"]


@dataclass(frozen=True)
class Setting:
    """One setting of a knob: how the table and figure name it, its value, its point."""

    label: str
    value: float
    point: Point


def knob_settings(cfg: StudyConfig) -> dict[str, list[Setting]]:
    """Per knob in ``cfg.trends.knobs``, its settings in sweep order (duplicates dropped)."""
    t = cfg.trends
    s1 = cfg.schedule.stage1_steps
    base = Point(s1, t.base_depth, t.base_local_ratio, False)
    sweeps = {
        "stage1": [(f"{n} steps", n, dataclasses.replace(base, stage1_steps=n)) for n in _steps(s1, t)],
        "depth": [(f"depth {d}", d, dataclasses.replace(base, depth=d)) for d in t.depths],
        "local": [(f"{r:g}", r, dataclasses.replace(base, local_ratio=r)) for r in t.local_ratios],
        "stages": [
            ("one-stage" if one else "two-stage", float(one), dataclasses.replace(base, one_stage=one))
            for one in t.one_stage
        ],
    }
    out = {}
    for knob in t.knobs:
        seen: dict[Point, Setting] = {}
        for label, value, point in sweeps[knob]:
            seen.setdefault(point, Setting(label, float(value), point))
        out[knob] = list(seen.values())
    return out


def _steps(base: int, t) -> list[int]:
    return [max(1, round(f * base)) for f in t.stage1_fractions]


def generation_settings(cfg: StudyConfig) -> GenerationSettings:
    t = cfg.trends
    return GenerationSettings(draws=t.draws, steps=t.sample_steps, seed=TRENDS_WORLD)


def _signatures(cfg: StudyConfig, point: Point) -> dict:
    """What a point's record depends on: its training, and its scoring."""
    train = {
        "point": dataclasses.asdict(point),
        "depth_key": cfg.trends.depth_key,
        "world": cfg.world.options(),
        "tower": to_dict(cfg.tower),
        "schedule": {**to_dict(cfg.schedule), "stage1_steps": point.stage1_steps},
    }
    t = cfg.trends
    score = {
        "heldout": to_dict(cfg.heldout),
        "generation": {
            **dataclasses.asdict(generation_settings(cfg)),
            "images": t.heldout_images,
            "judge": t.judge,
        },
    }
    return {"train": train, "score": score}


@dataclass
class SeedContext:
    """What every point of one seed shares."""

    cfg: StudyConfig
    seed: int
    folder: Path
    clip_dir: Path
    data: HeldOut
    gen_data: object
    judge: Judge
    cache_dir: str
    vae: str


def measure_point(ctx: SeedContext, point: Point) -> dict:
    """Train (or reuse) one point's run and score it; the record is written as soon as it exists."""
    cfg = ctx.cfg
    name = point.name(cfg.trends.depth_key)
    path, run_dir = ctx.folder / f"{name}.json", ctx.folder / name
    sig = _signatures(cfg, point)
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None and old.get("signature") == sig:
        return old
    if old is not None and old.get("signature", {}).get("train") != sig["train"] and run_dir.exists():
        shutil.rmtree(run_dir)  # trained under other settings
    point_cfg = dataclasses.replace(
        cfg, schedule=dataclasses.replace(cfg.schedule, stage1_steps=point.stage1_steps)
    )
    t0 = time.time()
    sets = point.sets(cfg.trends.depth_key)
    hf = train_variant(
        point_cfg, ctx.clip_dir, ctx.seed, point.variant, run_dir, ctx.cache_dir, ctx.vae, sets
    )
    t1 = time.time()
    scored = score_tower(hf, ctx.data)
    t2 = time.time()
    gen = evaluate_generation(
        run_dir / "export" / "denoiser", hf, ctx.gen_data, ctx.judge, generation_settings(cfg), ctx.cache_dir
    )
    record = {
        "signature": sig,
        "seed": ctx.seed,
        "point": name,
        "metrics": scored["metrics"],
        "generation": {**gen.metrics(), "loss_by_t": gen.loss_by_t},
        "train_loss_end": reconstruction_loss(run_dir),
        "timings_s": {"train": t1 - t0, "score": t2 - t1, "generation": time.time() - t2},
    }
    _save(path, record)
    log.info("trends seed %d %s: recon %.4f clip %.2f", ctx.seed, name, gen.recon_loss, gen.clip_score)
    return record


def original_record(ctx: SeedContext) -> dict:
    """The seed's original tower, scored once (the zero of every Δ)."""
    path = ctx.folder / "original.json"
    sig = {
        "tower": to_dict(ctx.cfg.tower),
        "world": ctx.cfg.world.options(),
        "heldout": to_dict(ctx.cfg.heldout),
    }
    if path.is_file() and json.loads(path.read_text()).get("signature") == sig:
        return json.loads(path.read_text())
    t0 = time.time()
    record = {"signature": sig, "seed": ctx.seed, "metrics": score_tower(ctx.clip_dir, ctx.data)["metrics"]}
    record["timings_s"] = {"score": time.time() - t0}
    _save(path, record)
    return record


def _save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))


def run(cfg: StudyConfig, out: Path, cache_dir: str, vae: str = "genhancer-tiny:vae") -> dict:
    """Every seed and knob; writes ``trends.json``, ``trends.md`` and ``trends_<knob>.png``."""
    start = time.time()
    seeds = list(cfg.trends.seeds or cfg.seeds)
    settings = knob_settings(cfg)
    points = list(dict.fromkeys(s.point for knob in settings.values() for s in knob))
    data = held_out(cfg)
    gen_data = toy_captioned(TRENDS_WORLD, cfg.trends.heldout_images, IMAGE_SIZE, **cfg.world.options())
    judge = Judge(cfg.trends.judge, "cpu", cache_dir)
    records: dict[int, dict] = {}
    for seed in seeds:
        clip_dir = original_tower(cfg, seed, cache_dir)
        ctx = SeedContext(cfg, seed, out / f"seed{seed}", clip_dir, data, gen_data, judge, cache_dir, vae)
        log.info("trends seed %d: %d points", seed, len(points))
        records[seed] = {
            "original": original_record(ctx),
            "points": {p.name(cfg.trends.depth_key): measure_point(ctx, p) for p in points},
        }
    table = {
        knob: [
            {"label": s.label, "value": s.value, "point": s.point.name(cfg.trends.depth_key)} for s in rows
        ]
        for knob, rows in settings.items()
    }
    return write_report(cfg, table, records, out, time.time() - start)
