"""Preview grids: each input image beside what the denoiser reconstructs from its global token
(discrete: the masked input and the decoded prediction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(columns: list[torch.Tensor], pad: int = 2) -> Image.Image:
    """Rows = images, columns = versions (input, reconstruction, ...), white gutters."""
    cols = [to_uint8(c) for c in columns]
    b, h, w, _ = cols[0].shape
    canvas = np.full((b * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for j, col in enumerate(cols):
        for i in range(b):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = col[i]
    return Image.fromarray(canvas)


def save_preview(model, batch: dict, path: Path, seed: int, steps: int) -> Path:
    """Write ``path``: input | sample from the global token. Uses its own RNG, so training is unaffected."""
    device = next(model.denoiser.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    pixels = batch["pixel_values"].to(device)
    if hasattr(model, "reconstruct_views"):  # discrete: input | masked input | decoded prediction
        columns = [batch["vae_pixels"], *model.reconstruct_views(pixels, gen, batch["vae_pixels"].to(device))]
    else:  # continuous: input | sample from the global token
        columns = [batch["vae_pixels"], model.reconstruct(pixels, gen, steps=steps)]
    model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(columns).save(path)
    return path
