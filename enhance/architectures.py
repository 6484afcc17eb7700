"""Architectures as data: the shapes of the paper towers, SD-2.1's UNet and FLUX's VAE, read from
``enhance/model_configs/*.json`` (open_clip's model-config idea), so ``--describe`` and ``bench/``
size real models on the meta device without a download, from one table."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "model_configs"


@cache
def _table(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def known_towers() -> list[str]:
    return [k for k in _table("towers") if not k.startswith("_")]


TINY_TOWER = "genhancer-tiny:clip"


def _tiny_vision() -> tuple[str, dict[str, int], int]:
    """The tiny toy-world CLIP, from its build recipe (the one place its sizes are written)."""
    from genhancer.toyworld.models import TINY_CLIP_RECIPE as r  # torch: only for the tiny tower

    vision = {
        "hidden_size": r["vision_hidden"],
        "intermediate_size": 4 * r["vision_hidden"],
        "num_hidden_layers": r["vision_layers"],
        "num_attention_heads": r["heads"],
        "patch_size": r["patch_size"],
        "image_size": r["image_size"],
    }
    return "clip", vision, r["projection_dim"]


def tower_dims(name: str) -> tuple[int, int] | None:
    """(global token width, local token width) of a known tower, else None."""
    if name == TINY_TOWER:
        _, vision, proj = _tiny_vision()
        return proj, vision["hidden_size"]
    entry = _table("towers").get(name)
    if entry is None or name.startswith("_"):
        return None
    return int(entry["global_dim"]), int(entry["local_dim"])


def tower_vision(name: str) -> tuple[str, dict[str, int], int] | None:
    """(model type ``clip``/``siglip``, the vision config, projection dim) of a known tower."""
    if name == TINY_TOWER:
        return _tiny_vision()
    entry = _table("towers").get(name)
    if entry is None or name.startswith("_"):
        return None
    base = _table("towers")["_bases"][entry["base"]]
    vision = {**base, "patch_size": entry["patch_size"], "image_size": entry["image_size"]}
    return entry["type"], vision, int(entry["projection_dim"])


def sd_unet_config(path: str) -> dict[str, Any] | None:
    """The UNet config of a known SD pipeline (matched by id prefix), else None."""
    for prefix, config in _table("sd_unets").items():
        if not prefix.startswith("_") and path.startswith(prefix):
            return dict(config)
    return None


def vae_config(name: str) -> dict[str, Any] | None:
    """The AutoencoderKL config of a known VAE (by hub id), else None."""
    config = _table("vaes").get(name)
    return None if config is None or name.startswith("_") else dict(config)
