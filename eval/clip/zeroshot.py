"""Zero-shot classification and image-text retrieval: did global semantics survive enhancement?

GenHancer (Table 3) reports no loss on ImageNet-1K, CIFAR-100, SUN397, Cars and on
Flickr30k/COCO retrieval; the DCR paper reports a drop. These scorers let us measure either way.

* Classification: a class embedding is the renormalised mean of the normalised text embeddings
  of its prompt ensemble (:data:`TEMPLATES`); an image goes to the class with the highest logit.
* Retrieval: images with several captions each; R@K in both directions. ``t2i`` (text -> image,
  the paper's "Retrieval-Image") ranks images for each caption; ``i2t`` (image -> text, the
  paper's "Retrieval-Text") ranks captions for each image and counts a hit when any of the
  image's captions is within the top K.

Ties count against the model: a right answer sharing its score with a wrong one is ranked
below it. The metric functions are pure (tensors in, numbers out) and tested by hand.

Data: an image folder (``root/<class name>/*.jpg``; underscores in folder names read as
spaces), a retrieval folder (``root/captions.jsonl`` with ``{"image": file, "captions": [...]}``
per line, images relative to ``root``), or a ``datasets`` id (class names from the label
feature; captions from a list-of-strings column).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from eval.config import DatasetConfig
from genhancer.runtime.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Prompt ensembles, written for this project in the spirit of the CLIP paper's: several
# phrasings marginalise over wording the class name alone does not fix.
_GENERIC = (
    "a photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a painting of a {}.",
    "a sketch of a {}.",
    "a rendering of a {}.",
    "a black and white photo of a {}.",
    "a jpeg photo of a {}.",
    "art of the {}.",
)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "generic": _GENERIC,
    "imagenet1k": _GENERIC + ("itap of a {}.", "a toy {}.", "a plastic {}.", "a {} in a video game."),
    "cifar100": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a low contrast photo of a {}.",
        "a high contrast photo of a {}.",
        "a pixelated photo of a {}.",
        "a photo of the small {}.",
        "a photo of the big {}.",
        "a bad photo of the {}.",
    ),
    "sun397": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a picture of a {}, a kind of place.",
        "a view of a {}.",
    ),
    "cars": (
        "a photo of a {}.",
        "a photo of my {}.",
        "a photo of the {}, a type of car.",
        "a close-up photo of a {}, a car.",
        "a photo of a {} parked on the street.",
    ),
    # Toy world (fixtures): the tiny towers only know caption-style text, so the ensemble varies
    # the attributes that are not the class (shape, count, size) around the class word.
    "toy_color": (
        "one small {} circle",
        "one large {} square",
        "two small {} triangles",
        "two large {} diamonds",
        "three small {} squares",
        "three large {} circles",
    ),
    "toy_shape": ("one small red {}", "one large blue {}", "one small green {}", "one large yellow {}"),
}


def get_templates(name: str) -> tuple[str, ...]:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(f"unknown prompt template set '{name}'; choose one of {sorted(TEMPLATES)}") from None


# --- pure metrics -------------------------------------------------------------------------------


def _ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target, ties counted against it: #others with score >= target's."""
    own = scores.gather(1, target[:, None])
    ahead = (scores >= own).sum(1) - 1  # minus the target itself
    return ahead


def topk_accuracy(
    logits: torch.Tensor, labels: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-K accuracy in percent, ``{"top1": ..., "top5": ...}`` (K above the class count is skipped)."""
    return {k: 100.0 * sum(v) / len(v) for k, v in topk_hits(logits, labels, ks).items()}


def topk_hits(
    logits: torch.Tensor, labels: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, list[bool]]:
    """Per image: is its label within the top K? (the items behind :func:`topk_accuracy`)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    rank = _ranks(logits, labels)
    return {f"top{k}": (rank < k).tolist() for k in ks if k <= logits.shape[1]}


def retrieval_recall(
    sims: torch.Tensor, caption_image: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """R@K in percent for both directions.

    ``sims[i, t]`` scores image ``i`` against caption ``t``; ``caption_image[t]`` is the image
    caption ``t`` belongs to. Keys: ``i2t_R@K`` (per image: best rank among its captions) and
    ``t2i_R@K`` (per caption: rank of its image).
    """
    return {k: 100.0 * sum(v) / len(v) for k, v in retrieval_hits(sims, caption_image, ks).items()}


def retrieval_hits(
    sims: torch.Tensor, caption_image: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, list[bool]]:
    """Per image (``i2t_R@K``) or per caption (``t2i_R@K``): a hit within K? (behind :func:`retrieval_recall`)."""
    sims = torch.as_tensor(sims, dtype=torch.float64)
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    n_img, n_txt = sims.shape
    t2i = _ranks(sims.T, owner)
    i2t = torch.full((n_img,), n_txt, dtype=torch.long)
    for t in range(n_txt):
        # rank of caption t in its image's row, ties against it
        i = int(owner[t])
        r = int((sims[i] >= sims[i, t]).sum()) - 1
        i2t[i] = min(int(i2t[i]), r)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = (i2t < k).tolist()
    for k in ks:
        out[f"t2i_R@{k}"] = (t2i < k).tolist()
    return out


# --- data ---------------------------------------------------------------------------------------


@dataclass
class ClassificationSet:
    name: str
    images: list  # PIL images or paths
    labels: list[int]
    classnames: list[str]
    revision: str


@dataclass
class RetrievalSet:
    name: str
    images: list  # PIL images or paths
    captions: list[str]
    caption_image: list[int]
    revision: str


def _open(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with Image.open(item) as im:
        return im.convert("RGB")


def _folder_revision(root: Path, paths: Sequence[Path], extra: str = "") -> str:
    """``files:<hash>`` of relative names and sizes (cheap for ImageNet-sized folders; moving the
    folder keeps it)."""

    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}".encode())
    return "files:" + h.hexdigest()[:12]


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists() or path.startswith(("/", ".", "~")) or path.count("/") > 1


def load_classification(ds: DatasetConfig, limit: int | None = None) -> ClassificationSet:
    """From an image folder (``ds.path/<class>/*.jpg``) or a ``datasets`` id."""
    name, path, image_column, label_column = ds.name, ds.path, ds.image_column, ds.label_column
    if _is_local(path):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UserError(f"zero-shot dataset '{name}': folder not found: {root}")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not classes:
            raise UserError(f"zero-shot dataset '{name}': {root} has no class folders")
        files, labels = [], []
        for c, cls in enumerate(classes):
            for f in sorted((root / cls).iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(f)
                    labels.append(c)
        if not files:
            raise UserError(f"zero-shot dataset '{name}': no images under {root}")
        if limit:
            # spread the limit over classes: every k-th image keeps the class balance
            step = max(1, len(files) // limit)
            keep = list(range(0, len(files), step))[:limit]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        names = [c.replace("_", " ") for c in classes]
        return ClassificationSet(name, files, labels, names, _folder_revision(root, files))
    data = _load_hf(name, path, ds.split, limit)
    if image_column not in data.column_names or label_column not in data.column_names:
        raise UserError(
            f"zero-shot dataset '{name}' ({path}): needs columns '{image_column}' and '{label_column}', "
            f"has {data.column_names}"
        )
    feature = data.features[label_column]
    names = getattr(feature, "names", None)
    if not names:
        raise UserError(f"zero-shot dataset '{name}' ({path}): column '{label_column}' has no class names")
    return ClassificationSet(
        name,
        list(data[image_column]),
        [int(x) for x in data[label_column]],
        [n.replace("_", " ") for n in names],
        _hf_revision(data, path),
    )


def load_retrieval(ds: DatasetConfig, limit: int | None = None) -> RetrievalSet:
    """From ``ds.path/captions.jsonl`` (+ images beside it) or a ``datasets`` id with a caption-list column."""
    name, path, image_column, caption_column = ds.name, ds.path, ds.image_column, ds.caption_column
    images: list = []
    captions: list[str] = []
    owner: list[int] = []
    if _is_local(path):
        root = Path(path).expanduser()
        index = root / "captions.jsonl"
        if not index.is_file():
            raise UserError(f"retrieval dataset '{name}': {index} not found")
        files = []
        for line_no, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                file, caps = row["image"], row["captions"]
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f'{index} line {line_no}: expected {{"image": ..., "captions": [...]}}'
                ) from None
            f = root / file
            if not f.is_file():
                raise UserError(f"retrieval image missing: {f} (named by {index} line {line_no})")
            files.append(f)
            for c in [caps] if isinstance(caps, str) else caps:
                captions.append(str(c))
                owner.append(len(files) - 1)
            if limit and len(files) >= limit:
                break
        return RetrievalSet(name, files, captions, owner, _folder_revision(root, files, index.read_text()))
    data = _load_hf(name, path, ds.split, limit)
    if image_column not in data.column_names or caption_column not in data.column_names:
        raise UserError(
            f"retrieval dataset '{name}' ({path}): needs columns '{image_column}' and '{caption_column}', "
            f"has {data.column_names}"
        )
    for i, (im, caps) in enumerate(zip(data[image_column], data[caption_column])):
        images.append(im)
        for c in [caps] if isinstance(caps, str) else caps:
            captions.append(str(c))
            owner.append(i)
    return RetrievalSet(name, images, captions, owner, _hf_revision(data, path))


def _load_hf(name: str, path: str, split: str, limit: int | None):
    try:
        import datasets

        ds = datasets.load_dataset(path, split=split)
    except Exception as exc:  # datasets raises many types for "not reachable / not found"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load dataset '{name}' from '{path}' (split {split}): {first}") from None
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _hf_revision(ds, path: str) -> str:
    fp = getattr(ds, "_fingerprint", "") or ""
    return f"{path}@{fp}" if fp else path


# --- model --------------------------------------------------------------------------------------


def class_embeddings(encoder, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[C, D]``: per class, the renormalised mean of its normalised prompt embeddings."""
    out = []
    for cls in classnames:
        emb = encoder.encode_texts([t.format(cls) for t in templates])
        emb = torch.nn.functional.normalize(emb.double(), dim=-1).mean(0)
        out.append(torch.nn.functional.normalize(emb, dim=-1))
    return torch.stack(out)


def evaluate_classification(encoder, data: ClassificationSet, templates: Sequence[str]) -> dict[str, float]:
    return {k: 100.0 * sum(v) / len(v) for k, v in classification_hits(encoder, data, templates).items()}


def classification_hits(encoder, data: ClassificationSet, templates: Sequence[str]) -> dict[str, list[bool]]:
    """Per image and K: a top-K hit (the per-item results behind :func:`evaluate_classification`)."""
    classes = class_embeddings(encoder, data.classnames, templates)
    img = encoder.encode_images([_open(x) for x in data.images], desc=f"{data.name} images")
    return topk_hits(encoder.logits(img, classes), data.labels)


def evaluate_retrieval(encoder, data: RetrievalSet) -> dict[str, float]:
    return {k: 100.0 * sum(v) / len(v) for k, v in retrieval_item_hits(encoder, data).items()}


def retrieval_item_hits(encoder, data: RetrievalSet) -> dict[str, list[bool]]:
    """Per image (i2t) or caption (t2i): a hit within K (behind :func:`evaluate_retrieval`)."""
    img = encoder.encode_images([_open(x) for x in data.images], desc=f"{data.name} images")
    txt = encoder.encode_texts(data.captions)
    return retrieval_hits(encoder.logits(img, txt), data.caption_image)
