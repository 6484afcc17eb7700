"""Backbone registry: family name -> loader. Unknown names list the choices."""

from __future__ import annotations

from collections.abc import Callable

from enhance.backbones.base import BackboneOutput, VisionBackbone
from enhance.backbones.hf import load_hf_backbone
from enhance.backbones.openclip import load_open_clip_backbone
from enhance.towers.resolve import resolve_tower
from genhancer.runtime.errors import UserError
from genhancer.toyworld.models import resolve_tiny


def _load_hf(cfg, cache_dir) -> VisionBackbone:

    # hf:REPO/SUB@REV and WEIGHTS::BASE specs become a local folder (enhance.towers)
    path = resolve_tiny(resolve_tower(cfg.name_or_path, cache_dir, "backbone.name_or_path"), cache_dir)
    return load_hf_backbone(
        cfg.family, path, cfg.image_size, cfg.revision, cfg.trust_remote_code, cfg.allow_pickle
    )


def _load_open_clip(cfg, cache_dir) -> VisionBackbone:

    return load_open_clip_backbone(cfg.name_or_path, cfg.pretrained, cfg.image_size)


BACKBONES: dict[str, Callable] = {
    "openai-clip": _load_hf,
    "metaclip": _load_hf,
    "siglip": _load_hf,
    "open_clip": _load_open_clip,
}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def build_backbone(cfg, cache_dir: str | None = None) -> VisionBackbone:
    """Load the backbone named by a :class:`~enhance.config.BackboneConfig`."""
    try:
        loader = BACKBONES[cfg.family]
    except KeyError:
        raise UserError(f"unknown backbone family '{cfg.family}'; choose one of {list_backbones()}") from None
    return loader(cfg, cache_dir)


__all__ = ["BackboneOutput", "VisionBackbone", "build_backbone", "list_backbones", "BACKBONES"]
