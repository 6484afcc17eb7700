"""The continuous denoiser g_phi: a lightweight FLUX MM-DiT trained from scratch (paper Sec. 3.3).

``diffusers.FluxTransformer2DModel(num_layers=2, num_single_layers=4)`` is the paper's model.
This module adds what FLUX's pipeline normally does around it: 2x2 latent packing and the
rotary position ids (one context token at (0, 0, 0), image tokens at (0, row, col)).
"""

from __future__ import annotations

import torch
from torch import nn

from genhancer.runtime.errors import UserError


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)*(W/2), 4C], each token a 2x2 patch (channel-major within it)."""
    b, c, h, w = z.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent grid {h}x{w} must be even to pack 2x2")
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent grid of ``h`` x ``w``."""
    b, n, d = tokens.shape
    c = d // 4
    z = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, c, h, w)


def image_position_ids(h: int, w: int, device=None) -> torch.Tensor:
    """[(h/2)*(w/2), 3] ids (0, row, col) of the packed grid."""
    rows = torch.arange(h // 2, device=device).repeat_interleave(w // 2)
    cols = torch.arange(w // 2, device=device).repeat(h // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).float()


def flux_kwargs(cfg, latent_channels: int) -> dict:
    """FluxTransformer2DModel constructor kwargs from a :class:`~enhance.config.DenoiserConfig`."""
    return {
        "patch_size": 1,
        "in_channels": 4 * latent_channels,
        "out_channels": None,
        "num_layers": cfg.num_layers,
        "num_single_layers": cfg.num_single_layers,
        "attention_head_dim": cfg.attention_head_dim,
        "num_attention_heads": cfg.num_attention_heads,
        "joint_attention_dim": cfg.joint_attention_dim,
        "pooled_projection_dim": cfg.pooled_projection_dim,
        "guidance_embeds": cfg.guidance_embeds,
        "axes_dims_rope": tuple(cfg.axes_dims_rope),
    }


class ContinuousDenoiser(nn.Module):
    """Velocity predictor over packed VAE latents, conditioned on the projected global token.

    Args:
        transformer: a ``FluxTransformer2DModel``.
        guidance (`float`, defaults to 4.0): fixed value fed to the guidance embedding.
    """

    def __init__(self, transformer: nn.Module, guidance: float = 4.0):
        super().__init__()
        self.transformer = transformer
        self.guidance = guidance

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, pooled: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """``z_t`` [B, C, H, W] latents at time ``t`` [B] -> predicted velocity, same shape."""
        b, _, h, w = z_t.shape
        tokens = pack_latents(z_t)
        img_ids = image_position_ids(h, w, device=z_t.device)
        txt_ids = torch.zeros(context.shape[1], 3, device=z_t.device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance, device=z_t.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=tokens.to(self.transformer.dtype),
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=t.to(tokens.dtype),  # FLUX scales t in [0, 1] by 1000 internally
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)


def build_continuous_denoiser(cfg, latent_channels: int) -> ContinuousDenoiser:
    """Random-init FLUX transformer (paper) or, for the Fig. 1 (iv) ablation, a pretrained one."""
    from diffusers import FluxTransformer2DModel

    if cfg.init_from:
        try:
            transformer = FluxTransformer2DModel.from_pretrained(
                cfg.init_from, subfolder=cfg.init_subfolder or None
            )
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load a FLUX transformer from denoiser.init_from='{cfg.init_from}': {exc}"
            ) from None
        if transformer.config.in_channels != 4 * latent_channels:
            raise UserError(
                f"pretrained transformer takes {transformer.config.in_channels} input channels, "
                f"the VAE gives {4 * latent_channels} packed channels"
            )
    else:
        transformer = FluxTransformer2DModel(**flux_kwargs(cfg, latent_channels))
    return ContinuousDenoiser(transformer, guidance=cfg.guidance)
