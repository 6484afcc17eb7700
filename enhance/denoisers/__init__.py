"""Denoiser registry: ``denoiser.kind`` -> builder of the whole GenHancer model around a tower.

Each builder takes the resolved config, the loaded backbone and the cache dir, and returns a
:class:`~enhance.model.GenHancerModel` (continuous) or its discrete subclass, with the target
codec (VAE or VQ tokenizer), a random-init projector and a random-init denoiser seeded by
``train.seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genhancer.runtime.errors import UserError


def _continuous(cfg, backbone, cache_dir):
    from enhance.denoisers.continuous import build_continuous_denoiser
    from enhance.model import GenHancerModel
    from enhance.projector import ConditionProjector
    from enhance.vae import build_codec

    codec = build_codec(cfg.vae, cache_dir)
    factor = codec.downsample * 2  # VAE downsampling, then 2x2 packing
    if cfg.backbone.image_size % factor:
        raise UserError(
            f"backbone.image_size={cfg.backbone.image_size} is not divisible by {factor} "
            f"(VAE downsampling x 2x2 packing); pick a multiple of {factor}"
        )
    torch.manual_seed(cfg.train.seed)
    projector = ConditionProjector(
        global_dim=backbone.global_dim,
        pooled_dim=cfg.denoiser.pooled_projection_dim,
        context_dim=cfg.denoiser.joint_attention_dim,
        local_dim=backbone.local_dim if cfg.backbone.local_token_ratio > 0 else 0,
        hidden_act=cfg.projector.hidden_act,
    )
    denoiser = build_continuous_denoiser(cfg.denoiser, codec.latent_channels)
    return GenHancerModel(
        backbone,
        projector,
        denoiser,
        codec,
        local_token_ratio=cfg.backbone.local_token_ratio,
        timestep_sampler=cfg.flow.timestep_sampler,
        timestep_scale=cfg.flow.scale,
    )


def _discrete(cfg, backbone, cache_dir):
    from enhance.denoisers.discrete import PerceiverDenoiser
    from enhance.model import DiscreteGenHancerModel
    from enhance.projector import ConditionProjector
    from enhance.vq import build_vq

    d = cfg.denoiser
    codec = build_vq(d, cfg.backbone.image_size, cache_dir)
    torch.manual_seed(cfg.train.seed)
    projector = ConditionProjector(
        global_dim=backbone.global_dim,
        pooled_dim=0,
        context_dim=d.perceiver_hidden,
        local_dim=backbone.local_dim if cfg.backbone.local_token_ratio > 0 else 0,
        hidden_act=cfg.projector.hidden_act,
    )
    denoiser = PerceiverDenoiser(
        codebook_size=codec.codebook_size,
        grid_size=codec.grid_size(cfg.backbone.image_size),
        hidden_size=d.perceiver_hidden,
        num_layers=d.num_layers,
        num_heads=d.perceiver_heads,
        decoder_layers=d.decoder_layers,
    )
    return DiscreteGenHancerModel(
        backbone,
        projector,
        denoiser,
        codec,
        local_token_ratio=cfg.backbone.local_token_ratio,
        mask_ratio=tuple(d.mask_ratio),
    )


MODEL_BUILDERS: dict[str, Callable] = {"continuous": _continuous, "discrete": _discrete}


def build_genhancer(cfg, backbone, cache_dir: str | None = None):
    try:
        builder = MODEL_BUILDERS[cfg.denoiser.kind]
    except KeyError:
        raise UserError(
            f"unknown denoiser kind '{cfg.denoiser.kind}'; choose one of {sorted(MODEL_BUILDERS)}"
        ) from None
    return builder(cfg, backbone, cache_dir)
