"""The frozen FLUX-style VAE that gives the denoiser its latent space."""

from __future__ import annotations

import torch
from torch import nn

from genhancer.runtime.errors import UserError, loading
from genhancer.toyworld.models import resolve_tiny


class LatentCodec(nn.Module):
    """Wraps ``AutoencoderKL`` with FLUX latent normalisation ``z = (latent - shift) * scale``."""

    def __init__(
        self, vae: nn.Module, scaling_factor: float, shift_factor: float, sample_posterior: bool = True
    ):
        super().__init__()
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.sample_posterior = sample_posterior
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``pixels`` in [-1, 1] -> normalised latents [B, C, H/f, W/f] (float32)."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        latent = dist.sample(generator=generator) if self.sample_posterior else dist.mode()
        return (latent.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        latent = z / self.scaling_factor + self.shift_factor
        return self.vae.decode(latent.to(self.vae.dtype)).sample.float().clamp(-1, 1)


def build_codec(cfg, cache_dir: str | None = None) -> LatentCodec:
    """Load the VAE named by a :class:`~enhance.config.VAEConfig` and freeze it."""
    from diffusers import AutoencoderKL

    path = resolve_tiny(cfg.name_or_path, cache_dir)
    what = f"the VAE from '{cfg.name_or_path}' (subfolder '{cfg.subfolder}')"
    with loading(what, "Point vae.name_or_path at a FLUX.1 repo or a local copy of its vae/ folder."):
        vae = AutoencoderKL.from_pretrained(path, subfolder=cfg.subfolder or None)
    if vae.config.latent_channels != cfg.latent_channels:
        raise UserError(
            f"VAE at '{cfg.name_or_path}' has {vae.config.latent_channels} latent channels, "
            f"config says vae.latent_channels={cfg.latent_channels}"
        )
    vae.requires_grad_(False).eval()
    return LatentCodec(vae, cfg.scaling_factor, cfg.shift_factor, cfg.sample_posterior)
