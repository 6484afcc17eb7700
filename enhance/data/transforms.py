"""One crop, two views: CLIP-normalised input for the tower and [-1, 1] pixels for the VAE.

GenHancer reconstructs the image the tower saw, so both views must come from the same crop. The
random crop draws only from the ``random.Random`` passed in (never the global RNG), which makes
augmentation a pure function of whatever seeded that generator -- the stream seeds it from
``(seed, epoch, item)`` so resumed runs see identical pixels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

#: OpenAI CLIP normalisation, the usual ``mean``/``std`` for :func:`make_transform`.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[int, int, int, int]  # left, top, right, bottom


def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """The RandomResizedCrop box (torchvision's algorithm: 10 tries, then a clamped centre crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def _to_unit_array(img: Image.Image) -> np.ndarray:
    """uint8 HWC RGB image -> float32 CHW array in [0, 1].

    The arithmetic is done in numpy: small torch ops in the trainer's process contend with its
    intra-op thread pool and were ~100x slower on a busy 2-core machine.
    """
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32, order="C") / np.float32(
        255.0
    )


class PairTransform:
    """``(pil_image, rng) -> {"pixel_values", "vae_pixels"}``, both ``float32[3, R, R]``.

    ``train=True``: RandomResizedCrop(``scale``, ``ratio``) with bicubic resampling, drawn from
    ``rng``. ``train=False``: resize the shorter side to ``resolution`` and centre-crop (``rng`` is
    ignored and may be None). A class rather than a closure so it pickles into spawned workers.
    """

    def __init__(
        self,
        resolution: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        train: bool = True,
    ):
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {mean} and {std}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.resolution, self.scale, self.ratio, self.train = resolution, tuple(scale), tuple(ratio), train
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def crop(self, img: Image.Image, rng: random.Random | None) -> Image.Image:
        """The shared ``resolution``-square RGB crop both views are made from."""
        img = img if img.mode == "RGB" else img.convert("RGB")
        res = self.resolution
        if self.train:
            if rng is None:
                raise ValueError("a training transform needs an explicit random.Random")
            return self.cut(img, random_resized_crop_box(img.width, img.height, rng, self.scale, self.ratio))
        short = min(img.width, img.height)
        w, h = max(res, round(img.width * res / short)), max(res, round(img.height * res / short))
        if (w, h) != img.size:
            img = img.resize((w, h), Image.BICUBIC)
        left, top = int(round((w - res) / 2)), int(round((h - res) / 2))
        return img.crop((left, top, left + res, top + res))

    def cut(self, img: Image.Image, box: Box) -> Image.Image:
        """The ``box`` region resized to the ``resolution`` square (bicubic), as the training crop."""
        img = img if img.mode == "RGB" else img.convert("RGB")
        return img.resize((self.resolution, self.resolution), Image.BICUBIC, box=box)

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image tensor shapes (what an empty batch is shaped like)."""
        r = self.resolution
        return {"pixel_values": (3, r, r), "vae_pixels": (3, r, r)}

    def normalise(self, crop: Image.Image) -> torch.Tensor:
        """The tower view of an already cropped ``resolution``-square RGB image."""
        return torch.from_numpy((_to_unit_array(crop) - self.mean) / self.std)

    def views(self, crop: Image.Image) -> dict[str, torch.Tensor]:
        """Both views of an already cropped ``resolution``-square RGB image."""
        unit = _to_unit_array(crop)
        return {
            "pixel_values": torch.from_numpy((unit - self.mean) / self.std),
            "vae_pixels": torch.from_numpy(unit * np.float32(2.0) - np.float32(1.0)),
        }

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        return self.views(self.crop(img, rng))

    def __repr__(self) -> str:
        return (
            f"PairTransform(resolution={self.resolution}, scale={self.scale}, ratio={self.ratio}, "
            f"train={self.train})"
        )


def make_transform(
    resolution: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    train: bool = True,
) -> PairTransform:
    """The training (random crop) or eval (resize + centre crop) transform; see :class:`PairTransform`."""
    return PairTransform(resolution, mean, std, scale, ratio, train)
