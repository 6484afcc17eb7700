"""The frozen VQ image tokenizer of the discrete denoiser (paper Alg. 2, step 3)."""

from __future__ import annotations

import torch
from torch import nn

from genhancer.runtime.errors import UserError, loading
from genhancer.toyworld.models import resolve_tiny


class VQCodec(nn.Module):
    """Wraps ``diffusers.VQModel``: image in [-1, 1] <-> grid of code indices."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.vq = vq
        self.codebook_size = vq.config.num_vq_embeddings
        self.downsample = 2 ** (len(vq.config.block_out_channels) - 1)

    def grid_size(self, image_size: int) -> int:
        return image_size // self.downsample

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> long [B, (H/f)*(W/f)] code indices, row-major."""
        h = self.vq.encode(pixels.to(self.vq.dtype)).latents
        _, _, (_, _, indices) = self.vq.quantize(h)
        return indices.view(h.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """long [B, L] -> images [B, 3, H, W] in [-1, 1]."""
        b, n = codes.shape
        g = int(round(n**0.5))
        dim = self.vq.quantize.embedding.weight.shape[1]
        z = self.vq.quantize.get_codebook_entry(codes.reshape(-1), (b, g, g, dim))
        return self.vq.decode(z, force_not_quantize=True).sample.float().clamp(-1, 1)


def build_vq(cfg, image_size: int, cache_dir: str | None = None) -> VQCodec:
    """Load the tokenizer named by ``denoiser.tokenizer`` and check it against the config."""
    from diffusers import VQModel

    name = cfg.tokenizer
    if not name:
        raise UserError("denoiser.kind=discrete needs denoiser.tokenizer (a diffusers VQModel dir or HF id)")
    path = resolve_tiny(name, cache_dir)
    with loading(f"the VQ tokenizer from '{name}' (subfolder '{cfg.tokenizer_subfolder}')"):
        vq = VQModel.from_pretrained(path, subfolder=cfg.tokenizer_subfolder or None)
    vq.requires_grad_(False).eval()
    codec = VQCodec(vq)
    if cfg.codebook_size and cfg.codebook_size != codec.codebook_size:
        raise UserError(
            f"VQ tokenizer '{name}' has {codec.codebook_size} codes but denoiser.codebook_size={cfg.codebook_size}"
        )
    if image_size % codec.downsample:
        raise UserError(
            f"VQ tokenizer '{name}' downsamples by {codec.downsample}: tower resolution {image_size} "
            f"gives a non-integer grid ({image_size}/{codec.downsample})"
        )
    grid = codec.grid_size(image_size)
    if cfg.token_grid and cfg.token_grid != grid:
        raise UserError(
            f"VQ tokenizer '{name}' gives a {grid}x{grid} grid at {image_size}px but denoiser.token_grid={cfg.token_grid}"
        )
    return codec
