"""GenHancer's parts at their configured size, for ``enhance --describe`` (built on the caller's
device, the meta device there, so nothing is allocated or downloaded)."""

from __future__ import annotations

from typing import Any

from diffusers import FluxTransformer2DModel

from enhance.denoisers.continuous import flux_kwargs
from enhance.denoisers.discrete import PerceiverDenoiser
from enhance.projector import ConditionProjector


def architecture(cfg: Any, backbone_dims: tuple[int, int] | None) -> dict[str, Any]:
    d = cfg.method.denoiser
    discrete = d.kind == "discrete"
    parts: dict[str, Any] = {}
    if not discrete:
        parts["denoiser"] = FluxTransformer2DModel(**flux_kwargs(d, cfg.method.vae.latent_channels))
    elif d.codebook_size and d.token_grid:
        parts["denoiser"] = PerceiverDenoiser(
            d.codebook_size,
            d.token_grid,
            d.perceiver_hidden,
            d.num_layers,
            d.perceiver_heads,
            d.decoder_layers,
        )
    else:
        parts["denoiser"] = "unknown until the tokenizer is loaded (set codebook_size and token_grid)"
    if backbone_dims is not None:
        parts["projector"] = ConditionProjector(
            backbone_dims[0],
            0 if discrete else d.pooled_projection_dim,
            d.perceiver_hidden if discrete else d.joint_attention_dim,
            backbone_dims[1] if cfg.backbone.local_token_ratio > 0 else 0,
        )
    else:
        parts["projector"] = "unknown until the backbone is loaded"
    return parts
