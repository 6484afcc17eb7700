"""What the study trains and on which data: the original tower, each variant's ``enhance`` run, the
held-out sets.

Every enhancement run is ``enhance --preset tiny`` (GenHancer) or ``enhance --method M --preset
tiny`` in process, with ``--set`` overrides only. The study sets what all runs share (tower,
world, seed, stage lengths, global batch, AdamW learning rates); each method's own schedule
choices come from its tiny recipe (``enhance/presets/methods/<name>.yaml``): which stages it
trains (DIVA: one), its micro-batch (DCR: 8, for its B^2 UNet calls), and, for a recipe with
another optimiser than AdamW (DIVA: SGD), its own learning rate.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from enhance.config import load_config
from enhance.train import run
from eval.clip.clustering import _digits
from eval.clip.fixtures import MMVP_PATTERN_ATTRIBUTES
from eval.study.config import GENHANCER_VARIANTS, StudyConfig
from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.sparse import sparse_clip
from genhancer.toyworld.world import COLORS, ORIENTATIONS, POSITIONS, SHAPES, SIZES, ToyWorld, caption, render

log = logging.getLogger("study")

IMAGE_SIZE = 64
# Held-out worlds (pretraining uses 1000 + seed, enhancement 2000 + seed).
MMVP_WORLD, PROBE_WORLD, ZEROSHOT_WORLD = 9001, 9002, 9003
PROBE_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "count", "orientation", "position")
ZEROSHOT_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size")
#: Label order of each probed attribute.
LABEL_VALUES: dict[str, tuple] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "count": (1, 2, 3),
    "orientation": ORIENTATIONS,
    "position": POSITIONS,
}
#: A variant that is another method run through ``enhance --method``: (method, extra schedule).
METHOD_OF: dict[str, str] = {
    "diva": "diva",
    "dcr": "dcr",
    "dcr-own-lr": "dcr",
    "naive-contrastive": "naive-contrastive",
}


def world(cfg: StudyConfig, seed: int) -> ToyWorld:
    """A world of the study's options (the default world when none are set)."""
    return ToyWorld(seed=seed, image_size=IMAGE_SIZE, **cfg.world.options())


def original_tower(cfg: StudyConfig, seed: int, cache_dir: str) -> Path:
    """The seed's "original" tower: the tiny CLIP pretrained on sparse captions (cached)."""
    opts = cfg.world.options()
    extra = {"world": opts} if opts else {}  # the default recipe stays the cached default
    t = cfg.tower
    return sparse_clip(
        cache_dir, seed=1000 + seed, train_steps=t.steps, num_images=t.images, rare_prob=t.rare_prob, **extra
    )


# --- images ------------------------------------------------------------------------------------


@dataclass
class Split:
    """Images of one split, their labels and captions."""

    images: list[Image.Image]
    attributes: list[dict]
    captions: list[str]


def render_split(world: ToyWorld, n: int) -> Split:
    samples = list(world.samples(n))
    return Split([s.image for s in samples], [s.attributes for s in samples], [s.caption for s in samples])


# --- held-out data ------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """Rendered evaluation sets, shared by every model and seed."""

    mmvp_images: list  # 2 per pair
    mmvp_statements: list[str]  # 2 per pair, "a photo of " + own caption
    mmvp_patterns: list[str]
    probe_images: list
    probe_labels: dict[str, list[int]]
    probe_train: int
    zs_images: list
    zs_labels: dict[str, list[int]]
    zs_prompts: dict[str, list[list[str]]]  # attribute -> class -> prompts
    digits_images: list  # scikit-learn's 1,797 real handwritten digits (8x8, upscaled by the processor)
    digits_labels: list[int]


def held_out(cfg: StudyConfig) -> HeldOut:
    """Toy MMVP-VLM pairs (the fixture's pair makers), probe and zero-shot sets, real digits."""
    h = cfg.heldout
    mmvp_world = world(cfg, MMVP_WORLD)
    scale = mmvp_world.object_scale
    images, statements, patterns = [], [], []
    for key, (_, make) in MMVP_PATTERN_ATTRIBUTES.items():
        for j in range(h.mmvp_pairs):
            rng = random.Random(derive_seed("reproduce_mmvp", key, j))
            scene = mmvp_world.scene(derive_seed("reproduce_mmvp_scene", key, j) % 10**9)
            for s in make(mmvp_world, scene, rng):
                images.append(render(s, IMAGE_SIZE, scale))
                statements.append("a photo of " + caption(s))
            patterns.append(key)

    def labelled(seed: int, n: int, attrs: Sequence[str]) -> tuple[list, dict[str, list[int]]]:
        samples = list(world(cfg, seed).samples(n))
        labels = {a: [list(LABEL_VALUES[a]).index(s.attributes[a]) for s in samples] for a in attrs}
        return [s.image for s in samples], labels

    probe_images, probe_labels = labelled(PROBE_WORLD, h.probe_train + h.probe_test, PROBE_ATTRIBUTES)
    zs_images, zs_labels = labelled(ZEROSHOT_WORLD, h.zeroshot_images, ZEROSHOT_ATTRIBUTES)
    # Prompts in the sparse-caption grammar, the class word among every value of the other two.
    zs_prompts = {
        "shape": [[f"{z} {c} {v}" for z in SIZES for c in COLORS] for v in SHAPES],
        "color": [[f"{z} {v} {s}" for z in SIZES for s in SHAPES] for v in COLORS],
        "size": [[f"{v} {c} {s}" for c in COLORS for s in SHAPES] for v in SIZES],
    }
    digit_labels, read_digits, _, _ = _digits()
    keep = list(range(0, len(digit_labels), max(1, len(digit_labels) // h.digits_images)))[: h.digits_images]
    return HeldOut(
        images,
        statements,
        patterns,
        probe_images,
        probe_labels,
        h.probe_train,
        zs_images,
        zs_labels,
        zs_prompts,
        read_digits(keep),
        [int(digit_labels[i]) for i in keep],
    )


# --- enhancement runs ------------------------------------------------------------------------------


def enhancement_data(cfg: StudyConfig, seed: int, cache_dir: str) -> list[str]:
    """The enhancement world: enhance's own toy-world source for the default world; for a testbed
    world, an image folder written once (enhance reads it like any folder of images)."""
    opts = cfg.world.options()
    if not opts:
        return [f"data.toyworld_seed={2000 + seed}", f"data.toyworld_size={cfg.schedule.images}"]
    key = json.dumps({"seed": 2000 + seed, "n": cfg.schedule.images, **opts}, sort_keys=True)
    folder = Path(cache_dir) / f"study-world-{derive_seed('study_world', key) % 10**10:010d}"
    if not (folder / "COMPLETE").is_file():
        world(cfg, 2000 + seed).write_image_folder(folder, cfg.schedule.images)
        (folder / "COMPLETE").write_text("ok\n")
    return ["data.source=imagefolder", f"data.path={folder}"]


def run_sets(cfg: StudyConfig, clip_dir: Path, seed: int, cache_dir: str) -> list[str]:
    """What every run of a seed shares: the tower, world, seed, stage-2 length, no checkpoints or
    per-step exports, quiet logging."""
    return [
        f"backbone.name_or_path={clip_dir}",
        f"cache_dir={cache_dir}",
        f"train.seed={seed}",
        *enhancement_data(cfg, seed, cache_dir),
        f"stage2.steps={cfg.schedule.stage2_steps}",
        "stage2.export_every=0",
        "checkpoint.every=100000",
        "logging.every=10" if cfg.schedule.stage1_steps >= 20 else "logging.every=1",
        "logging.preview_count=0",
        "logging.progress=false",
    ]


def enhance_overrides(
    cfg: StudyConfig,
    clip_dir: Path,
    seed: int,
    variant: str,
    cache_dir: str,
    vae: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """``--set`` overrides on ``enhance --preset tiny`` for one GenHancer variant; ``extra`` (a
    trend point's settings, e.g. the denoiser's depth) come last, so they win."""
    s = cfg.schedule
    sets = [
        *run_sets(cfg, clip_dir, seed, cache_dir),
        f"vae.name_or_path={vae}",
        f"stage1.steps={s.stage1_steps}",
        f"stage1.lr={s.stage1_lr}",
        f"stage2.lr={s.stage2_lr}",
        *[f"stage{k}.{b}={s.batch}" for k in (1, 2) for b in ("global_batch_size", "per_device_batch_size")],
        *s.enhance_sets,
    ]
    if variant == "local":
        sets.append(f"backbone.local_token_ratio={s.local_ratio}")
    elif variant == "one_stage":
        sets += [
            "train.one_stage=true",
            "train.stages=[2]",
            f"stage2.steps={s.stage1_steps + s.stage2_steps}",
        ]
    return [*sets, *extra]


def method_overrides(cfg: StudyConfig, clip_dir: Path, seed: int, variant: str, cache_dir: str) -> list[str]:
    """``--set`` overrides on ``enhance --method M --preset tiny``: the study's world, seed, stage
    lengths, global batch and AdamW learning rates; the stages, micro-batch and any non-AdamW
    learning rate stay the method's tiny recipe's."""
    s = cfg.schedule
    recipe = load_config("tiny", method=METHOD_OF[variant])
    sets = run_sets(cfg, clip_dir, seed, cache_dir)
    stage2_lr = s.stage1_lr * s.own_lr_ratio if variant.endswith("-own-lr") else s.stage2_lr
    for k in recipe.train.stages:
        stage = getattr(recipe, f"stage{k}")
        sets += [
            f"stage{k}.global_batch_size={s.batch}",
            f"stage{k}.per_device_batch_size={min(stage.per_device_batch_size, s.batch)}",
        ]
        if k == 1:
            sets += [f"stage1.steps={s.stage1_steps}", f"stage1.lr={s.stage1_lr}"]
        elif stage.optimizer == "adamw":
            sets.append(f"stage2.lr={stage2_lr}")
    method = METHOD_OF[variant]
    for item in cfg.method_sets:  # "KEY=VALUE" for every method, "METHOD:KEY=VALUE" for one
        prefix, _, rest = item.partition(":")
        if rest and "=" not in prefix:
            if prefix == method:
                sets.append(rest)
        else:
            sets.append(item)
    return sets


def train_variant(
    cfg: StudyConfig,
    clip_dir: Path,
    seed: int,
    variant: str,
    run_dir: Path,
    cache_dir: str,
    vae: str,
    extra: Sequence[str] = (),
) -> Path:
    """Run ``enhance`` (in process) unless ``run_dir`` already holds its export; the merged HF dir.
    ``extra``: further ``enhance --set`` overrides of a GenHancer variant (:func:`enhance_overrides`)."""
    done = run_dir / "export" / "hf" / "config.json"
    if done.is_file():
        return done.parent
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier try
    if variant in GENHANCER_VARIANTS:
        sets = enhance_overrides(cfg, clip_dir, seed, variant, cache_dir, vae, extra)
        ecfg = load_config("tiny", overrides=sets)
    else:
        sets = method_overrides(cfg, clip_dir, seed, variant, cache_dir)
        ecfg = load_config("tiny", overrides=sets, method=METHOD_OF[variant])
    run(ecfg, run_dir)
    return done.parent


def reconstruction_loss(run_dir: Path) -> float:
    """Mean logged training loss over the last quarter of the stage that trains the denoiser first
    (stage 1; stage 2 for ``one_stage``): how easy the condition makes reconstruction."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return float("nan")
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    stage = "stage1" if any(r.get("stage") == "stage1" for r in rows) else "stage2"
    rows = [r for r in rows if r.get("stage") == stage and "loss" in r]
    if not rows:
        return float("nan")
    last = rows[-max(1, len(rows) // 4) :]
    return sum(r["loss"] for r in last) / len(last)


def tower_change(original: Path, enhanced: Path) -> float:
    """Relative Frobenius change of the image-side weights: did training move the tower at all?"""
    from safetensors.torch import load_file

    a, b = load_file(str(original / "model.safetensors")), load_file(str(enhanced / "model.safetensors"))
    keys = [k for k in a if k.startswith(("vision_model.", "visual_projection.")) and k in b]
    num = sum(float((b[k].float() - a[k].float()).pow(2).sum()) for k in keys)
    den = sum(float(a[k].float().pow(2).sum()) for k in keys)
    return math.sqrt(num / den)
