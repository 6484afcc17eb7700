"""DIVA: a frozen SD-2.1-base conditioned on the tower's tokens plus the prompt embedding; the
diffusion MSE trains the whole image side and a linear projector together, in one stage."""

from __future__ import annotations

from typing import Any

from enhance.methods.diva.config import DivaSection
from enhance.methods.frozen_sd import FrozenSD
from genhancer.runtime.errors import UserError


class DIVA(FrozenSD):
    name = "diva"
    summary = "frozen SD; tower tokens + prompt embedding condition the UNet; diffusion MSE; one stage"
    section = DivaSection
    legacy_sections = ("diva",)
    stages = (2,)
    plan = {2: "the whole image side (stage2.tower_tuning=full) and the linear projector train together"}
    mlp_projector = False

    def validate(self, cfg: Any) -> None:
        super().validate(cfg)
        m: DivaSection = cfg.method
        if m.draws < 1 or m.num_tokens < 1 or m.avg_window < 1:
            raise UserError("method.draws, method.num_tokens and method.avg_window must be >= 1")

    def build(self, cfg: Any, backbone: Any, cache_dir: str | None):
        from enhance.methods.diva.model import DivaModel

        m: DivaSection = cfg.method
        parts = self.parts(cfg, backbone.joint_dim, cache_dir, m.prompt)
        length = len(parts["text_context"])
        if m.text == "full" and m.tokens == "random_local" and m.num_tokens != length:
            raise UserError(
                f"method.text=full adds the prompt embedding position by position: method.num_tokens "
                f"must be its length {length}, got {m.num_tokens}"
            )
        return DivaModel(backbone=backbone, section=m, **parts)

    def trains(self, stage: int, cfg: Any) -> set[str]:
        return {"projector", "lora" if cfg.stage2.tower_tuning == "lora" else "tower"}

    def load_export(self, folder, meta, cache_dir):
        raise UserError(
            f"the run in {folder.parent.parent} is DIVA, which conditions the UNet on every tower token; "
            "reconstructions from the global token alone exist for genhancer, dcr and naive-contrastive"
        )
