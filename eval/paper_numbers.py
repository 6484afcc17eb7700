"""Published numbers, as data, so the leaderboard can show them beside ours.

Sources, each row labelled by paper and table:

* the GenHancer paper: Table 1 (per-pattern MMVP-VLM), Table 2 (LLaVA-1.5), Table 3 (zero-shot,
  OpenAI ViT-L/14@224), Table 6 (discrete denoiser averages);
* the DCR paper: Table 1 (per-pattern MMVP-VLM of original, DIVA, GenHancer, un2CLIP, DCR),
  Table 2 (zero-shot clustering NMI / ACC / ARI on six datasets), Table 3 (LLaVA-1.5), Table 4
  (the naive reconstruction + contrastive sum). Its Table 1 reprints GenHancer's per-pattern rows
  unchanged, some averages 0.1 lower (19.2 where GenHancer prints 19.3); both are kept as printed.

Keys match the metric names our scorers record. A model matches a paper row by its HF id (the
original towers), or, for an ``enhance`` export (``RUN/export/hf``), by the backbone recorded in
``RUN/export/denoiser/genhancer.json`` and the method recorded in ``genhancer_export.json``
(genhancer, diva, dcr, naive-contrastive; older exports: genhancer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from enhance.layout import (
    DENOISER_DIR,
    DENOISER_META,
    EXPORT_DIR,
    HF_DIR,
    read_denoiser_meta,
    read_export_meta,
)
from eval.clip.mmvp_vlm import PATTERN_KEYS
from genhancer.runtime.errors import UserError

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
    # Averages only: Table 6 (discrete denoiser).
    ("OpenAI ViT-L/14", 224, "GenHancer (discrete)"): {"average": 28.9},
    ("SigLIP SO400M/14", 224, "GenHancer (discrete)"): {"average": 45.2},
    ("SigLIP SO400M/14", 384, "GenHancer (discrete)"): {"average": 40.7},
}

# DCR paper Table 1 (per pattern + average, as printed; un2CLIP only where it reports numbers).
_DCR_T1 = {
    ("OpenAI ViT-L/14", 224): {
        "original": "13.3 13.3 20.0 20.0 13.3 53.3 20.0 6.7 13.3 19.2",
        "DIVA": "13.3 20.0 40.0 6.7 20.0 53.3 46.7 20.0 13.3 25.9",
        "GenHancer": "13.3 33.3 33.3 20.0 6.7 73.3 46.7 20.0 40.0 31.8",
        "un2CLIP": "0.0 33.3 46.7 26.7 13.3 80.0 40.0 20.0 33.3 32.6",
        "DCR": "13.3 33.3 33.3 26.7 6.7 73.3 46.7 20.0 46.7 33.3",
    },
    ("OpenAI ViT-L/14", 336): {
        "original": "0.0 20.0 40.0 20.0 6.7 20.0 33.3 6.7 33.3 20.0",
        "DIVA": "26.7 20.0 33.3 13.3 13.3 46.7 26.7 6.7 40.0 25.2",
        "GenHancer": "6.7 20.0 33.3 20.0 6.7 73.3 53.3 26.7 26.7 29.6",
        "un2CLIP": "6.7 33.3 46.7 13.3 13.3 80.0 40.0 20.0 20.0 30.4",
        "DCR": "13.3 26.7 33.3 20.0 6.7 73.3 46.7 33.3 26.7 31.1",
    },
    ("MetaCLIP ViT-L/14", 224): {
        "original": "13.3 6.7 66.7 6.7 33.3 46.7 20.0 6.7 13.3 23.7",
        "DIVA": "6.7 6.7 60.0 0.0 26.7 66.7 20.0 20.0 40.0 27.4",
        "GenHancer": "13.3 20.0 53.3 13.3 26.7 80.0 33.3 13.3 33.3 31.8",
        "DCR": "20.0 20.0 53.3 13.3 26.7 80.0 33.3 13.3 33.3 32.6",
    },
    ("MetaCLIP ViT-H/14", 224): {
        "original": "6.7 13.3 60.0 13.3 6.7 53.3 26.7 13.3 33.3 25.2",
        "DIVA": "13.3 20.0 53.3 33.3 13.3 66.7 33.3 13.3 40.0 31.8",
        "GenHancer": "20.0 20.0 66.7 26.7 26.7 66.7 33.3 20.0 53.3 37.0",
        "DCR": "20.0 20.0 66.7 26.7 26.7 66.7 33.3 26.7 53.3 37.8",
    },
    ("SigLIP SO400M/14", 224): {
        "original": "26.7 20.0 53.3 40.0 20.0 66.7 40.0 20.0 53.3 37.8",
        "DIVA": "13.3 26.7 60.0 46.7 13.3 73.3 53.3 26.7 53.3 40.7",
        "GenHancer": "20.0 20.0 66.7 60.0 20.0 86.7 40.0 13.0 53.3 42.2",
        "DCR": "13.3 26.7 73.3 60.0 20.0 80.0 40.0 20.0 53.3 43.0",
    },
    ("SigLIP SO400M/14", 384): {
        "original": "20.0 26.7 60.0 33.3 13.3 66.7 33.3 26.7 53.3 37.0",
        "DIVA": "26.7 33.3 53.3 26.7 13.3 80.0 40.0 26.7 46.7 38.5",
        "GenHancer": "26.7 20.0 66.7 33.3 13.3 86.7 40.0 26.7 46.7 40.0",
        "un2CLIP": "20.0 20.0 60.0 46.7 26.7 73.3 40.0 26.7 60.0 41.5",
        "DCR": "26.7 33.3 60.0 33.3 26.7 80.0 40.0 33.3 46.7 42.2",
    },
}
DCR_MMVP_VLM: dict[tuple[str, int, str], dict[str, float]] = {
    (label, res, method): _row(values)
    for (label, res), rows in _DCR_T1.items()
    for method, values in rows.items()
}
# DCR Table 4 (OpenAI ViT-L/14@224): the naive weighted sum of reconstruction and contrastive losses.
DCR_MMVP_VLM[("OpenAI ViT-L/14", 224, "Naive")] = {"average": 22.96}

#: DCR Table 2 columns (our dataset names, paper order) and its metrics.
CLUSTERING_DATASETS: tuple[str, ...] = ("mnist", "cifar10", "eurosat", "caltech101", "dtd", "imagenet1k")
CLUSTERING_TITLES: dict[str, str] = {
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "eurosat": "EuroSAT",
    "caltech101": "Caltech-101",
    "dtd": "DTD",
    "imagenet1k": "ImageNet-1K",
    "average": "Avg",
}
CLUSTERING_METRICS: tuple[str, ...] = ("nmi", "acc", "ari")


def _clustering_row(values: str) -> dict[str, float]:
    nums = [float(v) for v in values.split()]
    keys = [f"{d}/{m}" for d in (*CLUSTERING_DATASETS, "average") for m in CLUSTERING_METRICS]
    return dict(zip(keys, nums, strict=True))


# DCR Table 2: NMI ACC ARI per dataset (MNIST .. ImageNet-1K) then Avg. The table names its
# backbones O-1, M-1, S-1; O-1 is OpenAI ViT-L/14@224 (its "Ours" average, 0.76/0.67/0.54, is the
# ViT-L@224 row of Tables 4 and 7), and M-1 / S-1 are read as the @224 MetaCLIP ViT-L/14 and SigLIP
# SO400M/14 (the text names "SigLIP ViT-SO@224" as the best average, which is S-1's).
_DCR_T2 = {
    ("OpenAI ViT-L/14", 224): {
        "original": "0.63 0.63 0.50 0.82 0.82 0.76 0.71 0.72 0.61 0.78 0.53 0.35 0.55 0.45 0.30 0.79 0.53 0.41 0.71 0.61 0.49",
        "DIVA": "0.66 0.60 0.49 0.81 0.82 0.75 0.70 0.72 0.61 0.78 0.52 0.34 0.51 0.41 0.26 0.79 0.52 0.40 0.71 0.60 0.48",
        "GenHancer": "0.69 0.73 0.60 0.58 0.65 0.49 0.61 0.67 0.56 0.81 0.54 0.38 0.56 0.45 0.31 0.64 0.26 0.14 0.65 0.55 0.41",
        "un2CLIP": "0.67 0.70 0.53 0.81 0.82 0.74 0.64 0.75 0.60 0.80 0.55 0.41 0.55 0.46 0.31 0.73 0.41 0.28 0.70 0.62 0.48",
        "DCR": "0.73 0.74 0.62 0.89 0.86 0.80 0.68 0.73 0.61 0.83 0.57 0.43 0.58 0.48 0.33 0.84 0.66 0.45 0.76 0.67 0.54",
    },
    ("MetaCLIP ViT-L/14", 224): {
        "original": "0.59 0.62 0.47 0.79 0.73 0.67 0.59 0.56 0.46 0.79 0.52 0.40 0.56 0.51 0.36 0.81 0.56 0.44 0.69 0.58 0.47",
        "DIVA": "0.60 0.65 0.49 0.77 0.79 0.72 0.65 0.75 0.56 0.80 0.56 0.39 0.60 0.52 0.36 0.81 0.56 0.44 0.71 0.64 0.49",
        "GenHancer": "0.76 0.73 0.77 0.70 0.70 0.60 0.62 0.72 0.65 0.81 0.55 0.41 0.59 0.49 0.34 0.64 0.27 0.15 0.69 0.58 0.49",
        "DCR": "0.78 0.79 0.68 0.80 0.82 0.76 0.72 0.77 0.67 0.82 0.57 0.42 0.60 0.54 0.37 0.84 0.69 0.45 0.76 0.70 0.56",
    },
    ("SigLIP SO400M/14", 224): {
        "original": "0.68 0.74 0.56 0.94 0.97 0.95 0.64 0.69 0.55 0.89 0.61 0.43 0.66 0.55 0.40 0.85 0.63 0.52 0.78 0.70 0.57",
        "DIVA": "0.63 0.61 0.46 0.94 0.98 0.95 0.66 0.73 0.57 0.90 0.66 0.48 0.66 0.55 0.41 0.85 0.63 0.52 0.77 0.69 0.57",
        "GenHancer": "0.80 0.78 0.70 0.72 0.69 0.61 0.65 0.70 0.57 0.88 0.64 0.48 0.62 0.55 0.42 0.77 0.48 0.35 0.74 0.64 0.52",
        "DCR": "0.85 0.89 0.78 0.95 0.98 0.95 0.76 0.81 0.69 0.89 0.66 0.48 0.67 0.59 0.44 0.88 0.65 0.55 0.83 0.76 0.65",
    },
}
DCR_CLUSTERING: dict[tuple[str, int, str], dict[str, float]] = {
    (label, res, method): _clustering_row(values)
    for (label, res), rows in _DCR_T2.items()
    for method, values in rows.items()
}
# DCR Table 4 (OpenAI ViT-L/14@224): averages only.
DCR_CLUSTERING[("OpenAI ViT-L/14", 224, "Naive")] = {
    "average/nmi": 0.72,
    "average/acc": 0.65,
    "average/ari": 0.50,
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

GENHANCER_PAPER = "GenHancer"
DCR_PAPER = "DCR"
#: paper -> benchmark -> table. Rows are keyed (backbone label, resolution, method as printed).
TABLES: dict[str, dict[str, dict[tuple[str, int, str], dict[str, float]]]] = {
    GENHANCER_PAPER: {"mmvp_vlm": MMVP_VLM, "zeroshot": ZEROSHOT},
    DCR_PAPER: {"mmvp_vlm": DCR_MMVP_VLM, "clustering": DCR_CLUSTERING},
}
#: Which tables of each paper a benchmark's rows come from (the report's legends).
TABLE_NUMBERS: dict[tuple[str, str], str] = {
    (GENHANCER_PAPER, "mmvp_vlm"): "Tab. 1/6",
    (GENHANCER_PAPER, "zeroshot"): "Tab. 3",
    (DCR_PAPER, "mmvp_vlm"): "Tab. 1/4",
    (DCR_PAPER, "clustering"): "Tab. 2/4",
}


#: How each paper labels the rows of our methods (the papers' own words: data, not branches).
#: ``{kind}`` is GenHancer's denoiser kind, which its own paper reports separately.
_DEFAULT_ROW_NAMES = {"original": "original", "genhancer": "GenHancer", "diva": "DIVA"}
PAPER_ROW_NAMES: dict[str, dict[str, str]] = {
    GENHANCER_PAPER: {**_DEFAULT_ROW_NAMES, "genhancer": "GenHancer ({kind})"},
    DCR_PAPER: {**_DEFAULT_ROW_NAMES, "dcr": "DCR", "naive-contrastive": "Naive"},
}


def paper_method(paper: str, method: str, denoiser_kind: str = "continuous") -> str | None:
    """How ``paper`` names the row of our ``method`` (``results.json``'s ``method`` field)."""
    name = PAPER_ROW_NAMES.get(paper, _DEFAULT_ROW_NAMES).get(method)
    return name.format(kind=denoiser_kind) if name is not None else None


@dataclass(frozen=True)
class PaperRow:
    """A published row a model corresponds to, and its numbers per benchmark."""

    backbone: str
    resolution: int
    method: str
    numbers: dict[str, dict[str, float]] = field(default_factory=dict)
    paper: str = GENHANCER_PAPER

    @property
    def label(self) -> str:
        return f"paper: {self.backbone}@{self.resolution} {self.method}"

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.backbone, self.resolution, self.method)

    @property
    def sourced_label(self) -> str:
        """The row label naming the paper it comes from, its backbone and method."""
        return f"paper ({self.paper}): {self.backbone}@{self.resolution} {self.method}"


def export_backbone(spec: str) -> tuple[str, str] | None:
    """(base HF id, denoiser kind) of an ``enhance`` export, read from its ``genhancer.json``."""
    path = Path(spec).expanduser()
    for folder in (path / EXPORT_DIR / DENOISER_DIR, path.parent / DENOISER_DIR):
        if (folder / DENOISER_META).is_file():
            try:
                meta = read_denoiser_meta(folder)
                return meta.backbone["name_or_path"], meta.denoiser_kind
            except (UserError, KeyError, TypeError):
                return None
    return None


def _export_method(spec: str) -> str:
    path = Path(spec).expanduser()
    for folder in (path, path / EXPORT_DIR, path / EXPORT_DIR / HF_DIR):
        try:
            meta = read_export_meta(folder)
        except UserError:
            return "genhancer"
        if meta is not None:
            return meta.method
    return "genhancer"


def match_paper_rows(spec: str, method: str | None = None) -> list[PaperRow]:
    """Every published row for a model spec, one per paper (GenHancer's first).

    ``method`` is our method name (``results.json``'s ``method``); None reads it from the export.
    """
    base, kind = spec, "continuous"
    exported = export_backbone(spec)
    if exported is not None:
        base, kind = exported
        method = method or _export_method(spec)
    else:
        method = method or "original"
    if base not in BACKBONES:
        return []
    label, res = BACKBONES[base]
    rows = []
    for paper, tables in TABLES.items():
        name = paper_method(paper, method, kind)
        if name is None:
            continue
        numbers = {b: t[(label, res, name)] for b, t in tables.items() if (label, res, name) in t}
        if numbers:
            rows.append(PaperRow(label, res, name, numbers, paper))
    return rows


def match_paper_row(spec: str, method: str | None = None) -> PaperRow | None:
    """The GenHancer paper's row for a model spec (or the DCR paper's when only it has one)."""
    rows = match_paper_rows(spec, method)
    return rows[0] if rows else None


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


def _t2(values: str) -> tuple[float | None, ...]:
    return tuple(None if v == "-" else float(v) for v in values.split())


#: LLaVA-1.5 Vicuna-7B rows in TABLE2_COLUMNS order (None: not reported): (vision tower method,
#: the tables that print it). The DCR paper's Table 3 reprints GenHancer's Table 2 rows unchanged
#: and adds un2CLIP and DCR.
LLAVA_ROWS: tuple[tuple[str, str, tuple[float | None, ...]], ...] = (
    (
        "original",
        "GenHancer Tab. 2, DCR Tab. 3",
        _t2("24.7 76.4 53.6 56.4 17.6 49.6 60.9 58.7 87.3 86.1 84.2 66.8 27.6"),
    ),
    (
        "DIVA",
        "GenHancer Tab. 2, DCR Tab. 3",
        _t2("31.3 75.3 51.7 56.1 22.3 51.3 63.4 60.2 87.9 87.0 84.6 66.3 28.6"),
    ),
    (
        "GenHancer",
        "GenHancer Tab. 2, DCR Tab. 3",
        _t2("30.7 77.3 55.6 59.1 24.4 52.9 63.6 63.2 88.1 86.7 84.6 66.5 28.4"),
    ),
    ("un2CLIP", "DCR Tab. 3", _t2("31.3 - - - - 53.9 65.1 61.2 88.0 87.4 85.4 68.4 28.4")),
    ("DCR", "DCR Tab. 3", _t2("31.3 78.6 57.8 61.2 25.3 54.1 65.5 63.5 88.0 87.4 85.8 67.5 28.6")),
)
#: tower -> row (the rows above without their sources).
LLAVA_TABLE2: dict[str, tuple[float | None, ...]] = {tower: nums for tower, _, nums in LLAVA_ROWS}
