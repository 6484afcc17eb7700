"""Denoiser registry: ``denoiser.kind`` -> builder."""

from __future__ import annotations

from collections.abc import Callable

from enhance.errors import UserError


def _continuous(cfg, latent_channels: int):
    from enhance.denoisers.continuous import build_continuous_denoiser

    return build_continuous_denoiser(cfg, latent_channels)


DENOISERS: dict[str, Callable] = {"continuous": _continuous}


def build_denoiser(cfg, latent_channels: int):
    try:
        builder = DENOISERS[cfg.kind]
    except KeyError:
        raise UserError(f"unknown denoiser kind '{cfg.kind}'; choose one of {sorted(DENOISERS)}") from None
    return builder(cfg, latent_channels)
