"""GenHancer's model: the continuous (flow matching on VAE latents) or discrete (masked VQ codes)
denoiser around the tower, built from the config's ``method`` section."""

from __future__ import annotations

import torch

from enhance.denoisers.continuous import build_continuous_denoiser
from enhance.denoisers.discrete import PerceiverDenoiser
from enhance.model import DiscreteGenHancerModel, GenHancerModel
from enhance.projector import ConditionProjector
from enhance.vae import build_codec
from enhance.vq import build_vq
from genhancer.runtime.errors import UserError


def _continuous(cfg, backbone, cache_dir):
    codec = build_codec(cfg.method.vae, cache_dir)
    factor = codec.downsample * 2  # VAE downsampling, then 2x2 packing
    if cfg.backbone.image_size % factor:
        raise UserError(
            f"backbone.image_size={cfg.backbone.image_size} is not divisible by {factor} "
            f"(VAE downsampling x 2x2 packing); pick a multiple of {factor}"
        )
    torch.manual_seed(cfg.train.seed)
    projector = ConditionProjector(
        global_dim=backbone.global_dim,
        pooled_dim=cfg.method.denoiser.pooled_projection_dim,
        context_dim=cfg.method.denoiser.joint_attention_dim,
        local_dim=backbone.local_dim if cfg.backbone.local_token_ratio > 0 else 0,
        hidden_act=cfg.method.projector.hidden_act,
    )
    denoiser = build_continuous_denoiser(cfg.method.denoiser, codec.latent_channels)
    return GenHancerModel(
        backbone,
        projector,
        denoiser,
        codec,
        local_token_ratio=cfg.backbone.local_token_ratio,
        timestep_sampler=cfg.method.flow.timestep_sampler,
        timestep_scale=cfg.method.flow.scale,
    )


def _discrete(cfg, backbone, cache_dir):
    d = cfg.method.denoiser
    codec = build_vq(d, cfg.backbone.image_size, cache_dir)
    torch.manual_seed(cfg.train.seed)
    projector = ConditionProjector(
        global_dim=backbone.global_dim,
        pooled_dim=0,
        context_dim=d.perceiver_hidden,
        local_dim=backbone.local_dim if cfg.backbone.local_token_ratio > 0 else 0,
        hidden_act=cfg.method.projector.hidden_act,
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


def build_genhancer(cfg, backbone, cache_dir: str | None = None) -> GenHancerModel:
    """GenHancer's model around ``backbone``: the codec it reconstructs in (VAE or VQ tokenizer),
    a random-init projector and a random-init denoiser, seeded by ``train.seed``."""
    builders = {"continuous": _continuous, "discrete": _discrete}
    kind = cfg.method.denoiser.kind
    if kind not in builders:  # a hand-built tree skips the config's enum check
        raise UserError(f"unknown denoiser kind '{kind}'; choose one of {sorted(builders)}")
    return builders[kind](cfg, backbone, cache_dir)
