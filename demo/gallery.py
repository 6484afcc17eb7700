"""One-click examples for the pair test: MMVP-VLM pairs, real when on disk, toy-world otherwise.

Each example is an MMVP pair: two images and the two statements, statement 1 true of image A
and statement 2 of image B, so picking one also marks the truth. The gallery takes one pair
per visual pattern first, so the nine patterns are all in view.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from eval.clip.fixtures import write_toy_mmvp_vlm
from eval.clip.mmvp_vlm import load_mmvp_vlm
from genhancer.runtime.errors import UserError

#: Pairs per pattern in the generated toy set (the gallery never shows more than a few).
TOY_PAIRS_PER_PATTERN = 2


@dataclass(frozen=True)
class Example:
    image_a: str
    image_b: str
    statement_a: str
    statement_b: str
    pattern: str

    def row(self) -> list[str]:
        """Values in the order of the pair test's inputs (A, B, statement 1, statement 2, truths)."""
        return [self.image_a, self.image_b, self.statement_a, self.statement_b, "image A", "image B"]


@dataclass
class Gallery:
    examples: list[Example]
    source: str  # what the user is looking at, for the caption
    root: Path  # folder to allow for file serving


def _pick(pairs, size: int) -> list:
    """Round-robin over patterns, in order of first appearance, up to ``size`` pairs."""
    by_pattern: dict[str, list] = {}
    for p in pairs:
        by_pattern.setdefault(p.pattern, []).append(p)
    out: list = []
    depth = 0
    while len(out) < size and any(len(v) > depth for v in by_pattern.values()):
        out += [v[depth] for v in by_pattern.values() if len(v) > depth][: size - len(out)]
        depth += 1
    return out


def load_gallery(
    data_root: str = "", size: int = 9, toy_dir: str | Path | None = None, seed: int = 0
) -> Gallery:
    """Examples from ``data_root/mmvp_vlm`` when it holds the benchmark, else a generated toy set
    (written once to ``toy_dir``, or to a fixed folder in the system temp dir)."""

    note = ""
    if data_root:
        root = Path(data_root).expanduser() / "mmvp_vlm"
        if (root / "Questions.csv").is_file():
            try:
                data = load_mmvp_vlm(root)
                return Gallery(_examples(_pick(data.pairs, size)), f"MMVP-VLM from {root}", root)
            except UserError as exc:
                note = f" ({exc})"
        else:
            note = f" (no MMVP-VLM under {root})"

    # one folder per recipe, reused across starts; Questions.csv is written last, so it marks a
    # complete set
    name = f"genhancer-demo-gallery-s{seed}-p{TOY_PAIRS_PER_PATTERN}"
    target = Path(toy_dir) if toy_dir else Path(tempfile.gettempdir()) / name
    if not (target / "Questions.csv").is_file():
        write_toy_mmvp_vlm(target, seed=seed, pairs_per_pattern=TOY_PAIRS_PER_PATTERN)
    data = load_mmvp_vlm(target, pairs_per_pattern=TOY_PAIRS_PER_PATTERN)
    return Gallery(_examples(_pick(data.pairs, size)), "toy-world MMVP-style pairs" + note, target)


def _examples(pairs) -> list[Example]:
    return [
        Example(str(p.first.image), str(p.second.image), p.first.statement, p.second.statement, p.pattern)
        for p in pairs
    ]
