"""DCR's naive baseline: a frozen SD-2.1; the diffusion MSE plus an InfoNCE between the tower's
global features of an image and of its augmented view; projector first, then tower LoRA."""

from __future__ import annotations

from typing import Any

from enhance.methods.frozen_sd import FrozenSD
from enhance.methods.naive_contrastive.config import NaiveContrastiveSection


class NaiveContrastive(FrozenSD):
    name = "naive-contrastive"
    summary = "frozen SD; w_rec * diffusion MSE + w_con * InfoNCE on the tower's global features"
    section = NaiveContrastiveSection
    legacy_sections = ("naive",)
    augment_from_dcr = True  # the old tree read this baseline's augmented view from dcr.*
    plan = {
        1: "projector trains on the diffusion MSE, tower frozen",
        2: "tower LoRA trains on w_rec * MSE + w_con * InfoNCE, projector frozen",
    }

    def build(self, cfg: Any, backbone: Any, cache_dir: str | None):
        from enhance.methods.naive_contrastive.model import NaiveContrastiveModel

        parts = self.parts(cfg, backbone.global_dim, cache_dir, "")
        return NaiveContrastiveModel(backbone=backbone, section=cfg.method, **parts)
