"""The augmented view DCR and the naive baseline contrast against, drawn from the step's generator.

The official code applies torchvision's ``ColorJitter``, horizontal and vertical flips and a
``RandomResizedCrop`` through the global RNG, to CLIP-normalised pixels (so ColorJitter's clamp to
[0, 1] cuts the normalised values). We apply the same four, in the same order, to the crop in
[0, 1] and normalise afterwards, with every draw taken from the step's ``torch.Generator``: the
view is then a pure function of (seed, step, micro-batch, rank), and a resumed run sees it again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=gen, device=gen.device).item())


def augment_view(
    images: torch.Tensor,
    generator: torch.Generator,
    jitter: Sequence[float] = (0.1, 0.1, 0.1, 0.05),
    flip_p: Sequence[float] = (0.5, 0.5),
    crop_scale: Sequence[float] = (0.9, 1.0),
    crop_ratio: Sequence[float] = (0.9, 1.1),
) -> torch.Tensor:
    """``images`` [B, 3, R, R] in [0, 1] -> an augmented copy, same shape and range."""
    from torchvision.transforms.v2 import functional as F

    from enhance.data.transforms import random_resized_crop_box

    out = []
    size = images.shape[-1]
    b, c, s, h = jitter
    for img in images:
        order = torch.randperm(4, generator=generator, device=generator.device).tolist()
        factors = (
            _uniform(generator, 1 - b, 1 + b),
            _uniform(generator, 1 - c, 1 + c),
            _uniform(generator, 1 - s, 1 + s),
            _uniform(generator, -h, h),
        )
        for k in order:
            if k == 0:
                img = F.adjust_brightness(img, factors[0])
            elif k == 1:
                img = F.adjust_contrast(img, factors[1])
            elif k == 2:
                img = F.adjust_saturation(img, factors[2])
            else:
                img = F.adjust_hue(img, factors[3])
        if _uniform(generator, 0, 1) < flip_p[0]:
            img = img.flip(-1)
        if _uniform(generator, 0, 1) < flip_p[1]:
            img = img.flip(-2)
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device).item())
        left, top, right, bottom = random_resized_crop_box(
            size, size, random.Random(seed), tuple(crop_scale), tuple(crop_ratio)
        )
        img = F.resized_crop(img, top, left, bottom - top, right - left, [size, size], antialias=True)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / sd
