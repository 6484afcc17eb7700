"""Published numbers, as data, so the leaderboard can show them beside ours.

Source: the GenHancer paper's Table 1 (per-pattern
MMVP-VLM), Table 3 (zero-shot, OpenAI ViT-L/14@224) and Table 6 (discrete denoiser); DCR and
un2CLIP averages come from the DCR paper. Keys match the metric names our scorers record.

A model matches a paper row by its HF id (the original towers), or, for an ``enhance`` export
(``RUN/export/hf``), by the backbone recorded in ``RUN/export/denoiser/genhancer.json``, which
matches the "GenHancer (continuous|discrete)" row of that backbone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from eval.clip.mmvp_vlm import PATTERN_KEYS

# Backbone rows of Table 1: (label, resolution) per HF id.
BACKBONES: dict[str, tuple[str, int]] = {
    "openai/clip-vit-large-patch14": ("OpenAI ViT-L/14", 224),
    "openai/clip-vit-large-patch14-336": ("OpenAI ViT-L/14", 336),
    "facebook/metaclip-l14-fullcc2.5b": ("MetaCLIP ViT-L/14", 224),
    "facebook/metaclip-h14-fullcc2.5b": ("MetaCLIP ViT-H/14", 224),
    "google/siglip-so400m-patch14-224": ("SigLIP SO400M/14", 224),
    "google/siglip-so400m-patch14-384": ("SigLIP SO400M/14", 384),
}


def _row(values: str) -> dict[str, float]:
    nums = [float(v) for v in values.split()]
    return dict(zip((*PATTERN_KEYS, "average"), nums))


# (backbone label, resolution, method) -> {metric: value}; Table 1 (per pattern + average).
MMVP_VLM: dict[tuple[str, int, str], dict[str, float]] = {
    ("OpenAI ViT-L/14", 224, "original"): _row("13.3 13.3 20.0 20.0 13.3 53.3 20.0 6.7 13.3 19.3"),
    ("OpenAI ViT-L/14", 224, "DIVA"): _row("13.3 20.0 40.0 6.7 20.0 53.3 46.7 20.0 13.3 25.9"),
    ("OpenAI ViT-L/14", 224, "GenHancer (continuous)"): _row(
        "13.3 33.3 33.3 20.0 6.7 73.3 46.7 20.0 40.0 31.9"
    ),
    ("OpenAI ViT-L/14", 336, "original"): _row("0.0 20.0 40.0 20.0 6.7 20.0 33.3 6.7 33.3 20.0"),
    ("OpenAI ViT-L/14", 336, "DIVA"): _row("26.7 20.0 33.3 13.3 13.3 46.7 26.7 6.7 40.0 25.2"),
    ("OpenAI ViT-L/14", 336, "GenHancer (continuous)"): _row(
        "6.7 20.0 33.3 20.0 6.7 73.3 53.3 26.7 26.7 29.6"
    ),
    ("MetaCLIP ViT-L/14", 224, "original"): _row("13.3 6.7 66.7 6.7 33.3 46.7 20.0 6.7 13.3 23.7"),
    ("MetaCLIP ViT-L/14", 224, "DIVA"): _row("6.7 6.7 60.0 0.0 26.7 66.7 20.0 20.0 40.0 27.4"),
    ("MetaCLIP ViT-L/14", 224, "GenHancer (continuous)"): _row(
        "13.3 20.0 53.3 13.3 26.7 80.0 33.3 13.3 33.3 31.9"
    ),
    ("MetaCLIP ViT-H/14", 224, "original"): _row("6.7 13.3 60.0 13.3 6.7 53.3 26.7 13.3 33.3 25.2"),
    ("MetaCLIP ViT-H/14", 224, "DIVA"): _row("13.3 20.0 53.3 33.3 13.3 66.7 33.3 13.3 40.0 31.9"),
    ("MetaCLIP ViT-H/14", 224, "GenHancer (continuous)"): _row(
        "20.0 20.0 66.7 26.7 26.7 66.7 33.3 20.0 53.3 37.0"
    ),
    ("SigLIP SO400M/14", 224, "original"): _row("26.7 20.0 53.3 40.0 20.0 66.7 40.0 20.0 53.3 37.8"),
    ("SigLIP SO400M/14", 224, "DIVA"): _row("13.3 26.7 60.0 46.7 13.3 73.3 53.3 26.7 53.3 40.7"),
    # Table 1 prints 13.0 for "Texts" here (1/15 steps make 13.3 likely); kept as printed.
    ("SigLIP SO400M/14", 224, "GenHancer (continuous)"): _row(
        "20.0 20.0 66.7 60.0 20.0 86.7 40.0 13.0 53.3 42.2"
    ),
    ("SigLIP SO400M/14", 384, "original"): _row("20.0 26.7 60.0 33.3 13.3 66.7 33.3 26.7 53.3 37.0"),
    ("SigLIP SO400M/14", 384, "DIVA"): _row("26.7 33.3 53.3 26.7 13.3 80.0 40.0 26.7 46.7 38.5"),
    ("SigLIP SO400M/14", 384, "GenHancer (continuous)"): _row(
        "26.7 20.0 66.7 33.3 13.3 86.7 40.0 26.7 46.7 40.0"
    ),
    # Averages only: Table 6 (discrete denoiser) and the DCR paper (DCR, un2CLIP).
    ("OpenAI ViT-L/14", 224, "GenHancer (discrete)"): {"average": 28.9},
    ("SigLIP SO400M/14", 224, "GenHancer (discrete)"): {"average": 45.2},
    ("SigLIP SO400M/14", 384, "GenHancer (discrete)"): {"average": 40.7},
    ("OpenAI ViT-L/14", 224, "DCR"): {"average": 33.3},
    ("OpenAI ViT-L/14", 224, "un2CLIP"): {"average": 32.6},
    ("OpenAI ViT-L/14", 336, "DCR"): {"average": 31.1},
    ("OpenAI ViT-L/14", 336, "un2CLIP"): {"average": 30.4},
    ("MetaCLIP ViT-L/14", 224, "DCR"): {"average": 32.6},
    ("MetaCLIP ViT-H/14", 224, "DCR"): {"average": 37.8},
    ("SigLIP SO400M/14", 224, "DCR"): {"average": 43.0},
    ("SigLIP SO400M/14", 384, "DCR"): {"average": 42.2},
    ("SigLIP SO400M/14", 384, "un2CLIP"): {"average": 41.5},
}

# Table 3: zero-shot top-1 and R@5 (t2i = "Retrieval-Image", i2t = "Retrieval-Text").
ZEROSHOT: dict[tuple[str, int, str], dict[str, float]] = {
    ("OpenAI ViT-L/14", 224, "original"): {
        "imagenet1k/top1": 75.5,
        "cifar100/top1": 76.1,
        "sun397/top1": 67.5,
        "cars/top1": 77.7,
        "flickr30k/t2i_R@5": 87.2,
        "coco/t2i_R@5": 61.1,
        "flickr30k/i2t_R@5": 97.4,
        "coco/i2t_R@5": 79.2,
    },
    ("OpenAI ViT-L/14", 224, "GenHancer (continuous)"): {
        "imagenet1k/top1": 75.6,
        "cifar100/top1": 76.1,
        "sun397/top1": 67.5,
        "cars/top1": 77.6,
        "flickr30k/t2i_R@5": 87.3,
        "coco/t2i_R@5": 61.2,
        "flickr30k/i2t_R@5": 97.2,
        "coco/i2t_R@5": 79.4,
    },
}

TABLES: dict[str, dict[tuple[str, int, str], dict[str, float]]] = {"mmvp_vlm": MMVP_VLM, "zeroshot": ZEROSHOT}


@dataclass(frozen=True)
class PaperRow:
    """A published row a model corresponds to, and its numbers per benchmark."""

    backbone: str
    resolution: int
    method: str
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"paper: {self.backbone}@{self.resolution} {self.method}"


def _export_backbone(spec: str) -> tuple[str, str] | None:
    """(base HF id, denoiser kind) of an ``enhance`` export, read from its ``genhancer.json``."""
    path = Path(spec).expanduser()
    for meta in (
        path / "export" / "denoiser" / "genhancer.json",
        path.parent / "denoiser" / "genhancer.json",
    ):
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
                return data["backbone"]["name_or_path"], data.get("denoiser", {}).get("kind", "continuous")
            except (ValueError, KeyError, TypeError):
                return None
    return None


def match_paper_row(spec: str) -> PaperRow | None:
    """The paper row for a model spec (HF id of an original tower, or an export of one)."""
    base, method = spec, "original"
    exported = _export_backbone(spec)
    if exported is not None:
        base, method = exported[0], f"GenHancer ({exported[1]})"
    if base not in BACKBONES:
        return None
    label, res = BACKBONES[base]
    numbers = {b: t[(label, res, method)] for b, t in TABLES.items() if (label, res, method) in t}
    return PaperRow(label, res, method, numbers) if numbers else None


# --- MLLM (paper Table 2: LLaVA-1.5 Vicuna-7B; the DCR row from the DCR paper) -------------------

#: Table 2 columns: (header, benchmark, metric as our scorers record it). NaturalBench columns are
#: the highest-likelihood mode; POPE columns are F1 per split; Hallusion avg = mean(aAcc, fAcc, qAcc).
TABLE2_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("MMVP", "mmvp", "pair_accuracy"),
    ("NB Acc", "naturalbench", "Acc"),
    ("NB Q", "naturalbench", "Q_Acc"),
    ("NB I", "naturalbench", "I_Acc"),
    ("NB G", "naturalbench", "G_Acc"),
    ("CV-2D ADE", "cv_bench", "ADE20K"),
    ("CV-2D COCO", "cv_bench", "COCO"),
    ("CV-3D", "cv_bench", "3D"),
    ("POPE rand", "pope", "random/f1"),
    ("POPE pop", "pope", "popular/f1"),
    ("POPE adv", "pope", "adversarial/f1"),
    ("SciQA-IMG", "scienceqa_img", "accuracy"),
    ("Hallusion avg", "hallusion_bench", "avg"),
)


def _t2(values: str) -> tuple[float, ...]:
    return tuple(float(v) for v in values.split())


#: vision tower of LLaVA-1.5 Vicuna-7B -> Table 2 row, in TABLE2_COLUMNS order.
LLAVA_TABLE2: dict[str, tuple[float, ...]] = {
    "original": _t2("24.7 76.4 53.6 56.4 17.6 49.6 60.9 58.7 87.3 86.1 84.2 66.8 27.6"),
    "DIVA": _t2("31.3 75.3 51.7 56.1 22.3 51.3 63.4 60.2 87.9 87.0 84.6 66.3 28.6"),
    "GenHancer": _t2("30.7 77.3 55.6 59.1 24.4 52.9 63.6 63.2 88.1 86.7 84.6 66.5 28.4"),
    "DCR": _t2("31.3 78.6 57.8 61.2 25.3 54.1 65.5 63.5 88.0 87.4 85.8 67.5 28.6"),
}
