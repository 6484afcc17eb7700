"""MMVP (the MLLM benchmark) per visual pattern: which of the 9 patterns each of the 150 pairs tests.

The MMVP paper reports its benchmark per visual pattern, but the data does not say which pair
tests which pattern: ``Questions.csv`` of ``MMVP/MMVP`` (and ``lmms-lab-eval/MMVP``) has only
``Index, Question, Options, Correct Answer``, and the authors' repository (``tsb0601/MMVP``,
read at commit 7635005: ``scripts/evaluate_mllm.py``, ``scripts/gpt_grader.py``, README)
publishes no pair-to-pattern table. Only MMVP-VLM, "distilled from the MMVP benchmark" (its
README), carries the pattern: a ``Type`` per statement, 15 pairs per pattern.

So the mapping is *derived*, not published: :func:`derive_pattern_map` matches each MMVP-VLM
image to the MMVP image it was taken from (a 16x16 grey thumbnail, normalised, nearest by cosine
similarity; both images of a VLM pair must land in one MMVP pair) and gives that MMVP pair the
VLM pair's pattern. MMVP-VLM has 135 pairs, MMVP 150: the pairs no VLM pair matches stay
``unmapped`` and are reported as such, never guessed. The question ids of the two benchmarks are
numbered independently (MMVP-VLM's run pattern by pattern), so ids alone cannot carry the
mapping; the images can.

The mapping is a small CSV (``Index,pattern``: the MMVP 1-based question ``Index`` and a
pattern key of :data:`eval.clip.mmvp_vlm.PATTERN_KEYS`), written once by
``python -m eval.mllm.mmvp_patterns --mmvp DIR --mmvp-vlm DIR --out patterns.csv`` and read by
the leaderboard from ``lmms.mmvp_patterns`` (default ``DATA_ROOT/mmvp/patterns.csv`` when present;
the toy fixtures write theirs).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from eval.clip.mmvp_vlm import PATTERN_KEYS, MMVPData, load_mmvp_vlm, pattern_key
from genhancer.runtime.cli import command
from genhancer.runtime.errors import UserError

PATTERN_FILE = "patterns.csv"
UNMAPPED = "unmapped"
#: Cosine similarity of normalised 16x16 grey thumbnails above which two images are the same photo.
MATCH_THRESHOLD = 0.9
THUMB = 16


def pair_of(index: int) -> int:
    """0-based MMVP pair of a 1-based question ``Index`` (as :func:`eval.mllm.scoring.score_mmvp`)."""
    return (int(index) - 1) // 2


def read_pattern_map(path: str | Path) -> dict[int, str]:
    """``Index,pattern`` rows -> {0-based pair: pattern key}; both questions of a pair must agree."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MMVP pattern map {path} not found (lmms.mmvp_patterns)")
    out: dict[int, str] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"Index", "pattern"} <= set(reader.fieldnames):
            raise UserError(f"{path}: expected columns Index,pattern, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                pair = pair_of(int(row["Index"]))
            except (TypeError, ValueError):
                raise UserError(f"{path} line {line}: Index '{row['Index']}' is not an integer") from None
            key = pattern_key(str(row["pattern"]))
            if key not in PATTERN_KEYS and key != UNMAPPED:
                raise UserError(
                    f"{path} line {line}: unknown pattern '{row['pattern']}'; use {list(PATTERN_KEYS)}"
                )
            if out.get(pair, key) != key:
                raise UserError(f"{path} line {line}: pair {pair} given two patterns ({out[pair]}, {key})")
            out[pair] = key
    return out


def write_pattern_map(path: str | Path, pattern_of_pair: Mapping[int, str], n_pairs: int) -> Path:
    """Write ``Index,pattern`` for both questions of every pair (``unmapped`` where none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Index", "pattern"])
        for p in range(n_pairs):
            for index in (2 * p + 1, 2 * p + 2):
                w.writerow([index, pattern_of_pair.get(p, UNMAPPED)])
    return path


def _thumb(image) -> list[float]:
    """A 16x16 grey thumbnail, zero-mean and unit-norm (robust to re-encoding and resizing)."""
    from PIL import Image

    im = image.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    px = [float(v) for v in im.getdata()]
    mean = sum(px) / len(px)
    px = [v - mean for v in px]
    norm = sum(v * v for v in px) ** 0.5 or 1.0
    return [v / norm for v in px]


def derive_pattern_map(
    mmvp_images: Mapping[int, object], vlm: MMVPData, threshold: float = MATCH_THRESHOLD
) -> dict[int, str]:
    """{0-based MMVP pair: pattern} from MMVP-VLM's patterns, by matching images.

    ``mmvp_images`` maps the MMVP 1-based ``Index`` to its PIL image. A VLM pair maps to the MMVP
    pair holding both its images (each the nearest MMVP image, similarity >= ``threshold``);
    a VLM pair whose images match nothing, or two different MMVP pairs, maps nowhere.
    """
    import torch
    from PIL import Image

    indices = sorted(mmvp_images)
    if not indices:
        raise UserError("MMVP data has no images to match")
    bank = torch.tensor([_thumb(mmvp_images[i]) for i in indices])
    out: dict[int, str] = {}
    for pair in vlm.pairs:
        found = []
        for item in (pair.first, pair.second):
            with Image.open(item.image) as im:
                sims = bank @ torch.tensor(_thumb(im))
            best = int(sims.argmax())
            found.append(pair_of(indices[best]) if float(sims[best]) >= threshold else None)
        if found[0] is not None and found[0] == found[1]:
            out[found[0]] = pattern_key(pair.first.type)  # the statement's own Type column
    return out


def load_mmvp_images(folder: str | Path) -> dict[int, object]:
    """{Index: image} from an MMVP copy: ``*.parquet`` with ``Index`` and ``image`` (lmms-lab-eval),
    or the published ``MMVP Images/<Index>.jpg``."""
    folder = Path(folder)
    jpgs = sorted((folder / "MMVP Images").glob("*.jpg"))
    if jpgs:
        from PIL import Image

        return {int(p.stem): Image.open(p).convert("RGB") for p in jpgs if p.stem.isdigit()}
    shards = sorted(folder.rglob("*.parquet"))
    if not shards:
        raise UserError(f"no MMVP data in {folder}: expected *.parquet or 'MMVP Images/<Index>.jpg'")

    from datasets import load_dataset
    from PIL import Image

    ds = load_dataset("parquet", data_files=[str(s) for s in shards], split="train")
    out = {}
    for row in ds:
        img = row["image"]
        if isinstance(img, dict):
            img = Image.open(io.BytesIO(img["bytes"]))
        out[int(row["Index"])] = img.convert("RGB")
    return out


@command("mmvp_patterns")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.mllm.mmvp_patterns",
        description="Derive MMVP's pair-to-pattern map from MMVP-VLM (matched by image) and write it as CSV.",
    )
    p.add_argument("--mmvp", required=True, help="MMVP folder (DATA_ROOT/mmvp: *.parquet or 'MMVP Images/')")
    p.add_argument("--mmvp-vlm", required=True, help="MMVP-VLM folder in the published layout")
    p.add_argument("--out", required=True, help="CSV to write (e.g. DATA_ROOT/mmvp/patterns.csv)")
    args = p.parse_args(argv)
    images = load_mmvp_images(args.mmvp)
    mapping = derive_pattern_map(images, load_mmvp_vlm(args.mmvp_vlm))
    n_pairs = max(pair_of(i) for i in images) + 1
    write_pattern_map(args.out, mapping, n_pairs)
    print(f"{len(mapping)} of {n_pairs} MMVP pairs mapped to a pattern; the rest '{UNMAPPED}' -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
