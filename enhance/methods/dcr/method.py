"""DCR: a frozen SD-2.1; the InfoNCE over the UNet's predicted noise under every image's condition
(anchor, the augmented view and the ground truth as positives); projector first, then tower LoRA."""

from __future__ import annotations

from typing import Any

from enhance.methods.dcr.config import DCRSection, dcr_negatives, dcr_unet_calls
from enhance.methods.frozen_sd import FrozenSD
from genhancer.runtime.errors import UserError


class DCR(FrozenSD):
    name = "dcr"
    summary = "frozen SD; InfoNCE over predicted noise (anchor, augmented-view and target positives)"
    section = DCRSection
    legacy_sections = ("dcr",)
    augment_from_dcr = True
    plan = {
        1: "projector (2-layer MLP on the global token) trains, tower frozen, DCR loss",
        2: "tower LoRA trains, projector frozen, DCR loss",
    }

    def validate(self, cfg: Any) -> None:
        super().validate(cfg)
        m: DCRSection = cfg.method
        if m.temperature <= 0 or m.num_negatives < 1 or m.unet_chunk < 0:
            raise UserError(
                "method.temperature must be > 0, method.num_negatives >= 1, method.unet_chunk >= 0"
            )

    def build(self, cfg: Any, backbone: Any, cache_dir: str | None):
        from enhance.methods.dcr.model import DCRModel

        return DCRModel(
            backbone=backbone, section=cfg.method, **self.parts(cfg, backbone.global_dim, cache_dir, "")
        )

    def describe(self, cfg: Any) -> dict:
        out = super().describe(cfg)
        m: DCRSection = cfg.method
        costs = {}
        for name in ("stage1", "stage2"):
            b = getattr(cfg, name).per_device_batch_size
            calls = dcr_unet_calls(b, m)
            costs[name] = {
                "per_device_batch": b,
                "unet_calls_per_micro_batch": calls,
                "vs_one_call_per_image": round(calls / b, 2),
                "note": f"method.negatives={m.negatives}: B*(K+1) pairs + B augmented-view calls, "
                f"K={dcr_negatives(b, m)}" + (" (exact: B^2 + B)" if m.negatives == "exact" else ""),
            }
        out["unet_cost"] = costs
        return out
