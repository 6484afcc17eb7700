"""``python -m eval.reproduce``: does GenHancer put rarely-captioned detail into the global token?

One command, CPU only, from scratch: for each seed it pretrains a tiny CLIP on *sparse* toy-world
captions (:mod:`genhancer.toyworld.sparse`: count, orientation and position stated in only a
tenth of the captions), enhances it with ``enhance`` three ways, and scores the original and
each enhanced tower on held-out toy scenes with a protocol fixed before any result was seen
(README, "Does it work?"):

* ``enhanced``: two-stage GenHancer, global token only (the method);
* ``local``: the same with ``backbone.local_token_ratio`` of the patch tokens in the condition
  (paper Fig. 1 iii: reconstruction gets easier, the gain should shrink);
* ``one_stage``: ``train.one_stage`` end to end, as many steps as both stages together
  (paper Fig. 6: the gain should shrink).

Measurements (all on world seeds the training never saw): toy MMVP-VLM pair accuracy per
pattern, linear probes on the frozen global token per attribute, zero-shot classification of the
always-captioned attributes (forgetting check). Per metric: mean and std over seeds, the paired
difference, a paired t-test over seeds and a sign test on the items pooled over seeds.

Writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/fig_*.png``; per-seed results land in
``DIR/seed<k>/scores.json`` as soon as they exist, and a rerun reuses finished trainings.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from eval.stats import mean_std as _mean_std
from eval.stats import paired_t, sign_test

log = logging.getLogger("reproduce")

VARIANTS: tuple[str, ...] = ("enhanced", "local", "one_stage")
#: The field's other methods (``enhance --method``), trained on the same world, seeds and schedule.
METHOD_VARIANTS: tuple[str, ...] = ("diva", "dcr", "naive-contrastive")
ALL_VARIANTS: tuple[str, ...] = (*VARIANTS, *METHOD_VARIANTS)
#: ``make reproduce-small``: GenHancer against DIVA, DCR and the naive baseline.
HEAD_TO_HEAD: tuple[str, ...] = ("enhanced", *METHOD_VARIANTS)
MODELS: tuple[str, ...] = ("original", *VARIANTS)
CLUSTER_ATTRIBUTES: tuple[str, ...] = ("shape", "color")
PROBE_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "count", "orientation", "position")
ZEROSHOT_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size")
#: MMVP patterns whose pair differs in a rarely captioned attribute (orientation, count, position).
RARE_PATTERNS: tuple[str, ...] = ("orientation", "quantity", "position", "viewpoint")
# Held-out worlds (pretraining uses 1000 + seed, enhancement 2000 + seed).
MMVP_WORLD, PROBE_WORLD, ZEROSHOT_WORLD = 9001, 9002, 9003


@dataclass(frozen=True)
class Protocol:
    """Every size of the run; ``small`` is the pre-registered setting, ``smoke`` the test's."""

    clip_steps: int = 400
    clip_images: int = 2048
    rare_prob: float = 0.1
    enhance_images: int = 4096
    batch: int = 32
    stage1_steps: int = 200
    stage1_lr: float = 1e-3
    stage2_steps: int = 100
    # lr x steps = 0.05, the paper's stage-2 product (1e-5 x 5,000): the same Adam travel per weight.
    stage2_lr: float = 5e-4
    local_ratio: float = 0.25
    mmvp_pairs: int = 40
    probe_train: int = 1500
    probe_test: int = 1000
    zeroshot_images: int = 600
    digits_images: int = 1797


PROTOCOLS: dict[str, Protocol] = {
    "small": Protocol(),
    "smoke": Protocol(
        clip_steps=3,
        clip_images=32,
        enhance_images=32,
        batch=8,
        stage1_steps=2,
        stage2_steps=2,
        mmvp_pairs=2,
        probe_train=40,
        probe_test=30,
        zeroshot_images=24,
        digits_images=40,
    ),
}


def _eval_module(name: str) -> ModuleType:
    """``eval.clip.<name>`` (new layout) or ``eval.<name>`` (old layout)."""
    try:
        return importlib.import_module(f"eval.clip.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(f"eval.{name}")


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


def held_out(p: Protocol, image_size: int = 64) -> HeldOut:
    """Toy MMVP-VLM pairs (the fixture's pair makers), probe and zero-shot sets."""
    from genhancer.runtime.seeding import derive_seed
    from genhancer.toyworld.world import COLORS, SHAPES, SIZES, ToyWorld, caption, render

    makers = _eval_module("fixtures").MMVP_PATTERN_ATTRIBUTES
    world = ToyWorld(seed=MMVP_WORLD, image_size=image_size)
    images, statements, patterns = [], [], []
    for key, (_, make) in makers.items():
        for j in range(p.mmvp_pairs):
            rng = random.Random(derive_seed("reproduce_mmvp", key, j))
            scene = world.scene(derive_seed("reproduce_mmvp_scene", key, j) % 10**9)
            for s in make(world, scene, rng):
                images.append(render(s, image_size))
                statements.append("a photo of " + caption(s))
            patterns.append(key)

    def labelled(seed: int, n: int, attrs: Sequence[str]) -> tuple[list, dict[str, list[int]]]:
        samples = list(ToyWorld(seed=seed, image_size=image_size).samples(n))
        values = {"shape": SHAPES, "color": COLORS, "size": SIZES}
        labels = {}
        for a in attrs:
            order = values.get(a) or sorted({s.attributes[a] for s in samples}, key=str)
            if a == "count":
                order = [1, 2, 3]
            elif a == "orientation":
                order = ["up", "right", "down", "left"]
            elif a == "position":
                order = ["left", "center", "right", "top", "bottom"]
            labels[a] = [list(order).index(s.attributes[a]) for s in samples]
        return [s.image for s in samples], labels

    probe_images, probe_labels = labelled(PROBE_WORLD, p.probe_train + p.probe_test, PROBE_ATTRIBUTES)
    zs_images, zs_labels = labelled(ZEROSHOT_WORLD, p.zeroshot_images, ZEROSHOT_ATTRIBUTES)
    # Prompts in the sparse-caption grammar, the class word among every value of the other two.
    zs_prompts = {
        "shape": [[f"{z} {c} {v}" for z in SIZES for c in COLORS] for v in SHAPES],
        "color": [[f"{z} {v} {s}" for z in SIZES for s in SHAPES] for v in COLORS],
        "size": [[f"{v} {c} {s}" for c in COLORS for s in SHAPES] for v in SIZES],
    }
    from eval.clip.clustering import _digits

    digit_labels, read_digits, _, _ = _digits()
    keep = list(range(0, len(digit_labels), max(1, len(digit_labels) // p.digits_images)))[: p.digits_images]
    return HeldOut(
        images,
        statements,
        patterns,
        probe_images,
        probe_labels,
        p.probe_train,
        zs_images,
        zs_labels,
        zs_prompts,
        read_digits(keep),
        [int(digit_labels[i]) for i in keep],
    )


# --- scoring one tower ----------------------------------------------------------------------------


def _unwrap(features) -> torch.Tensor:
    """transformers 5 returns a model output (projected ``pooler_output``); 4.x a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


class Tower:
    """A saved ``CLIPModel`` dir: global tokens (``get_image_features``) and text embeddings."""

    def __init__(self, path: str | Path):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path).eval()
        self.processor = CLIPProcessor.from_pretrained(path)

    @torch.no_grad()
    def images(self, images: list, batch: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            px = self.processor.image_processor(images[i : i + batch], return_tensors="pt")["pixel_values"]
            out.append(_unwrap(self.model.get_image_features(pixel_values=px)))
        return torch.cat(out).float()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        emb = _unwrap(self.model.get_text_features(**tok)).float()
        return torch.nn.functional.normalize(emb, dim=-1)


def score_tower(path: str | Path, data: HeldOut) -> dict:
    """Metrics (percent) plus per-item correctness (for the pooled sign test) of one tower."""
    mmvp, probe = _eval_module("mmvp_vlm"), _eval_module("probe")
    tower = Tower(path)
    metrics: dict[str, float] = {}
    items: dict[str, list[bool]] = {}

    img = torch.nn.functional.normalize(tower.images(data.mmvp_images), dim=-1)
    txt = tower.texts(data.mmvp_statements)
    sims = [
        (txt[2 * k : 2 * k + 2] @ img[2 * k : 2 * k + 2].T).tolist() for k in range(len(data.mmvp_patterns))
    ]
    score = mmvp.score_pairs(sims, data.mmvp_patterns)
    for key in dict.fromkeys(data.mmvp_patterns):
        idx = [k for k, q in enumerate(data.mmvp_patterns) if q == key]
        metrics[f"mmvp/{key}"] = 100.0 * sum(score.pair_correct[k] for k in idx) / len(idx)
        items[f"mmvp/{key}"] = [score.pair_correct[k] for k in idx]
    items["mmvp/average"] = list(score.pair_correct)

    feats = tower.images(data.probe_images)
    n = data.probe_train
    for a, y in data.probe_labels.items():
        fitted = probe.fit_linear_probe(feats[:n], y[:n], max(y) + 1)
        right = (fitted.predict(feats[n:]) == torch.tensor(y[n:])).tolist()
        metrics[f"probe/{a}"] = 100.0 * sum(right) / len(right)
        items[f"probe/{a}"] = right

    zs = torch.nn.functional.normalize(tower.images(data.zs_images), dim=-1)
    for a, classes in data.zs_prompts.items():
        emb = torch.stack([torch.nn.functional.normalize(tower.texts(ps).mean(0), dim=0) for ps in classes])
        right = ((zs @ emb.T).argmax(1) == torch.tensor(data.zs_labels[a])).tolist()
        metrics[f"zeroshot/{a}"] = 100.0 * sum(right) / len(right)
        items[f"zeroshot/{a}"] = right
    metrics.update(cluster_metrics(feats[n:], {a: data.probe_labels[a][n:] for a in CLUSTER_ATTRIBUTES}))
    metrics.update(cluster_metrics(tower.images(data.digits_images), {"digits": data.digits_labels}))
    metrics.update(summaries(metrics))
    return {"metrics": metrics, "items": items, "global_tokens": feats[n:]}


def cluster_metrics(feats: torch.Tensor, labels: dict[str, list[int]]) -> dict[str, float]:
    """Zero-shot clustering (eval.clip.clustering: k-means on the L2-normalised global token, k =
    classes, NMI / Hungarian ACC / ARI) per label set, in percent."""
    import numpy as np

    from eval.clip.clustering import clustering_scores, l2_normalise, run_kmeans

    x = l2_normalise(feats.numpy())
    out = {}
    for name, y in labels.items():
        y = np.asarray(y)
        scores = clustering_scores(y, run_kmeans(x, int(np.unique(y).size)))
        out.update({f"cluster/{name}_{k}": 100.0 * v for k, v in scores.items()})
    return out


def summaries(m: dict[str, float]) -> dict[str, float]:
    """The pre-registered headline numbers: averages over groups of the per-item metrics."""

    def mean(keys: Sequence[str]) -> float:
        return sum(m[k] for k in keys) / len(keys)

    mmvp_keys = [k for k in m if k.startswith("mmvp/")]
    return {
        "mmvp/average": mean(mmvp_keys),
        "mmvp/rare": mean([f"mmvp/{k}" for k in RARE_PATTERNS]),
        "probe/rare": mean([f"probe/{a}" for a in ("count", "orientation", "position")]),
        "probe/common": mean([f"probe/{a}" for a in ("shape", "color", "size")]),
        "zeroshot/mean": mean([f"zeroshot/{a}" for a in ZEROSHOT_ATTRIBUTES]),
        "cluster/acc_mean": mean([f"cluster/{a}_acc" for a in (*CLUSTER_ATTRIBUTES, "digits")]),
        "cluster/nmi_mean": mean([f"cluster/{a}_nmi" for a in (*CLUSTER_ATTRIBUTES, "digits")]),
    }


# --- training -------------------------------------------------------------------------------------


def run_sets(p: Protocol, clip_dir: Path, seed: int, cache_dir: str) -> list[str]:
    """What every run of a seed shares: the tower, world, seed, stage-2 length, no checkpoints or
    per-step exports, quiet logging."""
    return [
        f"backbone.name_or_path={clip_dir}",
        f"cache_dir={cache_dir}",
        f"train.seed={seed}",
        f"data.toyworld_seed={2000 + seed}",
        f"data.toyworld_size={p.enhance_images}",
        f"stage2.steps={p.stage2_steps}",
        "stage2.export_every=0",
        "checkpoint.every=100000",
        "logging.every=10" if p.stage1_steps >= 20 else "logging.every=1",
        "logging.preview_count=0",
        "logging.progress=false",
    ]


def enhance_overrides(
    p: Protocol, clip_dir: Path, seed: int, variant: str, cache_dir: str, vae: str = "genhancer-tiny:vae"
) -> list[str]:
    """``--set`` overrides on ``enhance --preset tiny`` for one variant."""
    sets = [
        *run_sets(p, clip_dir, seed, cache_dir),
        f"vae.name_or_path={vae}",
        f"stage1.steps={p.stage1_steps}",
        f"stage1.lr={p.stage1_lr}",
        f"stage2.lr={p.stage2_lr}",
    ]
    sets += [
        f"stage{k}.{b}={p.batch}" for k in (1, 2) for b in ("global_batch_size", "per_device_batch_size")
    ]
    if variant == "local":
        sets.append(f"backbone.local_token_ratio={p.local_ratio}")
    elif variant == "one_stage":
        sets += [
            "train.one_stage=true",
            "train.stages=[2]",
            f"stage2.steps={p.stage1_steps + p.stage2_steps}",
        ]
    return sets


def method_overrides(
    p: Protocol, clip_dir: Path, seed: int, method: str, cache_dir: str, extra: Sequence[str] = ()
) -> list[str]:
    """``--set`` overrides on ``enhance --method M --preset tiny``: the same world, seed, schedule
    (stage lengths and learning rates) and batch as GenHancer; the frozen SD is the tiny one the
    method's tiny recipe names (built once on the full-caption world)."""
    sets = run_sets(p, clip_dir, seed, cache_dir)
    if method != "diva":  # DIVA is one stage with its own optimiser (SGD, cosine; tiny recipe)
        sets += [f"stage1.steps={p.stage1_steps}", f"stage1.lr={p.stage1_lr}", f"stage2.lr={p.stage2_lr}"]
    per_device = min(p.batch, 8) if method == "dcr" else p.batch  # DCR: B^2 UNet calls per micro-batch
    sets += [f"stage{k}.global_batch_size={p.batch}" for k in (1, 2)]
    sets += [f"stage{k}.per_device_batch_size={per_device}" for k in (1, 2)]
    return [*sets, *extra]


def train_variant(
    p: Protocol,
    clip_dir: Path,
    seed: int,
    variant: str,
    run_dir: Path,
    cache_dir: str,
    vae: str,
    method_sets: Sequence[str] = (),
) -> Path:
    """Run ``enhance`` (in process) unless ``run_dir`` already holds its export; the merged HF dir."""
    done = run_dir / "export" / "hf" / "config.json"
    if not done.is_file():
        from enhance.config import load_config
        from enhance.train import run

        if variant in METHOD_VARIANTS:
            cfg = load_config(
                "tiny",
                overrides=method_overrides(p, clip_dir, seed, variant, cache_dir, method_sets),
                method=variant,
            )
        else:
            cfg = load_config("tiny", overrides=enhance_overrides(p, clip_dir, seed, variant, cache_dir, vae))
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # an unfinished earlier try
        run(cfg, run_dir)
    return done.parent


def reconstruction_loss(run_dir: Path) -> float:
    """Mean logged training loss over the last quarter of the stage that trains the denoiser first
    (stage 1; stage 2 for ``one_stage``): how easy the condition makes reconstruction."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    stage = "stage1" if any(r.get("stage") == "stage1" for r in rows) else "stage2"
    rows = [r for r in rows if r.get("stage") == stage]
    last = rows[-max(1, len(rows) // 4) :]
    return sum(r["loss"] for r in last) / len(last)


def tower_change(original: Path, enhanced: Path) -> float:
    """Relative Frobenius change of the image-side weights: did stage 2 move the tower at all?"""
    from safetensors.torch import load_file

    a, b = load_file(str(original / "model.safetensors")), load_file(str(enhanced / "model.safetensors"))
    keys = [k for k in a if k.startswith(("vision_model.", "visual_projection.")) and k in b]
    num = sum(float((b[k].float() - a[k].float()).pow(2).sum()) for k in keys)
    den = sum(float(a[k].float().pow(2).sum()) for k in keys)
    return math.sqrt(num / den)


def run_seed(
    p: Protocol,
    seed: int,
    out: Path,
    data: HeldOut,
    cache_dir: str,
    vae: str,
    variants: Sequence[str] = VARIANTS,
    method_sets: Sequence[str] = (),
) -> dict:
    """Pretrain, enhance each of ``variants``, score them and the original; writes
    ``out/seed<k>/scores.json`` (reused only when it holds the same variants)."""
    from genhancer.toyworld.sparse import sparse_clip

    folder = out / f"seed{seed}"
    path = folder / "scores.json"
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("variants", list(VARIANTS)) == list(variants):
            return record
    t0 = time.time()
    clip_dir = sparse_clip(
        cache_dir, seed=1000 + seed, train_steps=p.clip_steps, num_images=p.clip_images, rare_prob=p.rare_prob
    )
    timings = {"pretrain_s": time.time() - t0}
    towers = {"original": clip_dir}
    for v in variants:
        t = time.time()
        towers[v] = train_variant(p, clip_dir, seed, v, folder / v, cache_dir, vae, method_sets)
        timings[f"{v}_train_s"] = time.time() - t
    t = time.time()
    scored = {name: score_tower(d, data) for name, d in towers.items()}
    timings["score_s"] = time.time() - t
    base = scored["original"]["global_tokens"]
    record = {
        "seed": seed,
        "variants": list(variants),
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


# --- statistics -----------------------------------------------------------------------------------


def aggregate(records: list[dict]) -> dict:
    """Per metric and variant: mean/std of both models, paired difference, t-test, pooled sign test."""
    keys = list(records[0]["metrics"]["original"])
    variants = records[0].get("variants", list(VARIANTS))
    table: dict[str, dict] = {}
    for v in variants:
        rows = {}
        for k in keys:
            orig = [r["metrics"]["original"][k] for r in records]
            new = [r["metrics"][v][k] for r in records]
            diffs = [b - a for a, b in zip(orig, new, strict=True)]
            row = {
                "original": _mean_std(orig),
                v: _mean_std(new),
                "delta": _mean_std(diffs),
                "t_p": paired_t(diffs),
                "per_seed_delta": diffs,
            }
            if k in records[0]["items"]["original"]:
                before = [x for r in records for x in r["items"]["original"][k]]
                after = [x for r in records for x in r["items"][v][k]]
                row["sign"] = sign_test(before, after)
            rows[k] = row
        table[v] = rows
    extra = {
        name: {v: _mean_std([r[name][v] for r in records]) for v in variants}
        for name in ("recon_loss", "tower_change", "token_cosine")
    }
    return {"seeds": [r["seed"] for r in records], "variants": variants, "table": table, **extra}


# --- report ---------------------------------------------------------------------------------------


def _fmt(ms: Sequence[float]) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def _p(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def markdown(agg: dict, protocol: Protocol, wall_s: float) -> str:
    """The README table: enhanced vs original per metric, then the two trends."""
    t = agg["table"]["enhanced"]
    lines = [
        f"Seeds {agg['seeds']}; mean ± std over seeds; Δ = enhanced − original (paired); "
        "t: paired t-test over seeds; sign: items better/worse after, pooled over seeds, exact binomial p.",
        "",
        "| metric | original | enhanced | Δ | t p | sign (+/−, p) |",
        "|---|---|---|---|---|---|",
    ]
    for k, row in t.items():
        s = row.get("sign")
        sign = f"{s[0]}/{s[1]}, {_p(s[2])}" if s else ""
        lines.append(
            f"| {k} | {_fmt(row['original'])} | {_fmt(row['enhanced'])} | {row['delta'][0]:+.1f} ± "
            f"{row['delta'][1]:.1f} | {_p(row['t_p'])} | {sign} |"
        )
    lines += [
        "",
        "| variant | recon loss (end of first denoiser stage) | Δ probe/rare | Δ mmvp/average | Δ mmvp/rare | Δ zeroshot/mean | "
        "tower change | token cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in agg.get("variants", VARIANTS):
        r = agg["table"][v]
        cells = [
            f"{r[k]['delta'][0]:+.1f} ± {r[k]['delta'][1]:.1f}"
            for k in ("probe/rare", "mmvp/average", "mmvp/rare", "zeroshot/mean")
        ]
        lines.append(
            f"| {v} | {agg['recon_loss'][v][0]:.4f} ± {agg['recon_loss'][v][1]:.4f} | {' | '.join(cells)} | "
            f"{agg['tower_change'][v][0]:.4f} | {agg['token_cosine'][v][0]:.3f} |"
        )
    if any(v in METHOD_VARIANTS for v in agg.get("variants", ())):
        lines += ["", *head_to_head_lines(agg)]
    seeds_s = sum(sum(t.values()) for t in agg.get("timings_s", {}).values())
    lines += [
        "",
        f"Protocol: `{json.dumps(dataclasses.asdict(protocol))}`; this invocation {wall_s / 60:.1f} min "
        f"(finished seeds are reused); pretraining + training + scoring summed over seeds {seeds_s / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


#: The head-to-head's pre-registered rows (README, "Does it work?").
HEADLINES: tuple[str, ...] = (
    "mmvp/average",
    "mmvp/rare",
    "probe/rare",
    "probe/common",
    "zeroshot/mean",
    "cluster/acc_mean",
    "cluster/nmi_mean",
    "cluster/digits_acc",
)


def head_to_head_lines(agg: dict) -> list[str]:
    """One row per headline metric: the original, then each method as mean ± std, Δ and its paired
    t-test p over seeds."""
    variants = agg["variants"]
    t = agg["table"]
    head = "| metric | original | " + " | ".join(variants) + " |"
    lines = [
        "Head to head (each cell: mean ± std over seeds; Δ vs original; paired t-test p over seeds):",
        "",
        head,
        "|---" * (len(variants) + 2) + "|",
    ]
    for k in HEADLINES:
        if k not in t[variants[0]]:
            continue
        cells = [_fmt(t[variants[0]][k]["original"])]
        for v in variants:
            r = t[v][k]
            cells.append(f"{_fmt(r[v])} (Δ {r['delta'][0]:+.1f}, p {_p(r['t_p'])})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def figures(agg: dict, out: Path) -> list[Path]:
    """Per-attribute bars (original vs enhanced) and one figure per trend, with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if any(v in METHOD_VARIANTS for v in agg.get("variants", ())):
        paths.append(methods_figure(agg, out, plt))
    if "enhanced" not in agg["table"]:
        return paths
    t = agg["table"]["enhanced"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [6, 9, 3]})
    for ax, prefix, title in zip(
        axes,
        ("probe/", "mmvp/", "zeroshot/"),
        ("linear probe", "toy MMVP-VLM pairs", "zero-shot"),
        strict=True,
    ):
        keys = [
            k
            for k in t
            if k.startswith(prefix) and k.split("/")[1] not in ("average", "rare", "common", "mean")
        ]
        x = range(len(keys))
        for off, (name, col) in zip(
            (-0.2, 0.2), (("original", "tab:gray"), ("enhanced", "tab:blue")), strict=True
        ):
            ax.bar(
                [i + off for i in x],
                [t[k][name][0] for k in keys],
                0.4,
                yerr=[t[k][name][1] for k in keys],
                label=name,
                color=col,
                capsize=3,
            )
        ax.set_xticks(list(x), [k.split("/")[1] for k in keys], rotation=30)
        ax.set_title(title)
        ax.set_ylabel("accuracy (%)")
    axes[0].legend()
    fig.suptitle(f"Original vs GenHancer (two-stage, global token), seeds {agg['seeds']}")
    fig.tight_layout()
    paths.append(out / "fig_attributes.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    deltas = ("probe/rare", "mmvp/average", "mmvp/rare", "zeroshot/mean")
    for name, variants, title in (
        ("fig_trend_local.png", ("enhanced", "local"), "global token only vs + local tokens"),
        ("fig_trend_stages.png", ("enhanced", "one_stage"), "two-stage vs one-stage"),
    ):
        if not all(v in agg["table"] for v in variants):
            continue
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 3]})
        a1.bar(
            list(variants),
            [agg["recon_loss"][v][0] for v in variants],
            yerr=[agg["recon_loss"][v][1] for v in variants],
            color=["tab:blue", "tab:orange"],
            capsize=3,
        )
        a1.set_title("recon. loss, first denoiser stage")
        for i, v in enumerate(variants):
            r = agg["table"][v]
            a2.bar(
                [j + (i - 0.5) * 0.4 for j in range(len(deltas))],
                [r[k]["delta"][0] for k in deltas],
                0.4,
                yerr=[r[k]["delta"][1] for k in deltas],
                label=v,
                capsize=3,
                color=["tab:blue", "tab:orange"][i],
            )
        a2.axhline(0, color="k", lw=0.8)
        a2.set_xticks(range(len(deltas)), list(deltas))
        a2.set_ylabel("Δ vs original (points)")
        a2.set_title("gain over the original tower")
        a2.legend()
        fig.suptitle(title)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def methods_figure(agg: dict, out: Path, plt) -> Path:
    """Δ vs the original tower per headline metric, one bar per method, std over seeds."""
    variants = agg["variants"]
    keys = [k for k in HEADLINES if k in agg["table"][variants[0]]]
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        r = agg["table"][v]
        ax.bar(
            [j + (i - (len(variants) - 1) / 2) * width for j in range(len(keys))],
            [r[k]["delta"][0] for k in keys],
            width,
            yerr=[r[k]["delta"][1] for k in keys],
            label="genhancer" if v == "enhanced" else v,
            capsize=3,
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)), keys, rotation=20)
    ax.set_ylabel("Δ vs original (points)")
    ax.set_title(f"The methods head to head on the sparse-caption world, seeds {agg['seeds']}")
    ax.legend()
    fig.tight_layout()
    path = out / "fig_methods.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- entry point ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/reproduce-small")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--cache-dir", default="", help="tiny VAE / sparse CLIP cache (default ~/.cache/genhancer)"
    )
    parser.add_argument(
        "--vae", default="genhancer-tiny:vae", help="FLUX-style VAE dir (tests pass their own)"
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_VARIANTS,
        default=list(VARIANTS),
        help="what is trained against the original: GenHancer variants (enhanced, local, one_stage) "
        f"and/or the other methods ({', '.join(METHOD_VARIANTS)}); the head to head: "
        f"{' '.join(HEAD_TO_HEAD)}",
    )
    parser.add_argument(
        "--method-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra enhance --set for the other methods' runs (tests point sd.path at their own SD)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    from genhancer.toyworld.models import default_cache_dir

    cache_dir = args.cache_dir or str(default_cache_dir())
    p = PROTOCOLS[args.protocol]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = held_out(p)
    records = []
    for seed in args.seeds:
        log.info("seed %d", seed)
        records.append(run_seed(p, seed, out, data, cache_dir, args.vae, args.methods, args.method_set))
    wall = time.time() - start
    agg = aggregate(records)
    agg["protocol"] = dataclasses.asdict(p)
    agg["wall_s"] = wall
    agg["timings_s"] = {r["seed"]: r["timings_s"] for r in records}
    (out / "results.json").write_text(json.dumps(agg, indent=1))
    (out / "results.md").write_text(markdown(agg, p, wall))
    figures(agg, out)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
