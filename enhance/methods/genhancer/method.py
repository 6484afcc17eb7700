"""GenHancer: a randomly initialised lightweight denoiser reconstructs the image from the tower's
global token (stage 1, tower frozen), then LoRA on the tower learns through that reconstruction
loss (stage 2). Its recipes are the backbone presets themselves (``enhance/presets/*.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enhance.methods.base import Method
from enhance.methods.genhancer.config import GenHancerSection
from genhancer.runtime.errors import UserError


class GenHancer(Method):
    name = "genhancer"
    summary = "random-init lightweight denoiser reconstructs from the global token; two stages"
    section = GenHancerSection
    legacy_sections = ("denoiser", "vae", "flow", "projector")
    plan = {
        1: "projector + denoiser train (tower frozen), flow matching / masked codes",
        2: "tower LoRA (+ projector and denoiser with stage2_all)",
    }

    def validate(self, cfg: Any) -> None:
        super().validate(cfg)
        m: GenHancerSection = cfg.method
        d = m.denoiser
        if cfg.latent_cache.path and d.kind == "discrete":
            raise UserError(
                "latent_cache.path caches VAE posteriors for the continuous denoiser; the discrete "
                "denoiser's VQ codes are not cached (leave latent_cache.path empty)"
            )
        if d.kind == "discrete":
            lo_hi = d.mask_ratio
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] < 1:
                raise UserError(
                    f"method.denoiser.mask_ratio must be [lo, hi] with 0 < lo <= hi < 1, got {lo_hi}"
                )
            if d.perceiver_hidden % d.perceiver_heads:
                raise UserError(
                    f"method.denoiser.perceiver_hidden {d.perceiver_hidden} must be divisible by "
                    f"method.denoiser.perceiver_heads {d.perceiver_heads}"
                )
        elif sum(d.axes_dims_rope) != d.attention_head_dim:
            raise UserError(
                f"method.denoiser.axes_dims_rope {d.axes_dims_rope} must sum to "
                f"method.denoiser.attention_head_dim {d.attention_head_dim}"
            )
        if len(d.axes_dims_rope) != 3:
            raise UserError("method.denoiser.axes_dims_rope needs 3 entries (text, row, col)")
        if m.flow.scale <= 0:
            raise UserError("method.flow.scale must be > 0")

    def build(self, cfg: Any, backbone: Any, cache_dir: str | None):
        from enhance.methods.genhancer.model import build_genhancer  # torch loads after the config checks

        return build_genhancer(cfg, backbone, cache_dir)

    def trains(self, stage: int, cfg: Any) -> set[str]:
        if stage == 1:
            return {"projector", "denoiser"}
        parts = {"lora" if cfg.stage2.tower_tuning == "lora" else "tower"}
        if cfg.stage2.variant == "stage2_all" or cfg.train.one_stage:
            parts |= {"projector", "denoiser"}
        return parts

    def architecture(self, cfg: Any, backbone_dims: tuple[int, int] | None) -> dict[str, Any]:
        from enhance.methods.genhancer.describe import architecture

        return architecture(cfg, backbone_dims)

    def preview_steps(self, cfg: Any) -> int:
        return cfg.method.flow.preview_steps

    def path_keys(self, cfg: Any) -> dict[str, str]:
        if cfg.method.denoiser.kind == "discrete":
            return {"method.denoiser.tokenizer": "the VQ tokenizer"}
        return {
            "method.vae.name_or_path": "the VAE",
            "method.denoiser.init_from": "the FLUX transformer to start from",
        }

    def export_extras(self, model: Any, cfg: Any, folder: Path) -> None:
        if cfg.method.denoiser.kind == "continuous":  # the FLUX transformer inside ContinuousDenoiser
            model.denoiser.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
        else:  # discrete: the Perceiver itself
            model.denoiser.save_pretrained(folder / "perceiver", safe_serialization=True)

    def load_export(self, folder: Path, meta: Any, cache_dir: str | None):
        from enhance.methods.genhancer.export import load_genhancer_export

        return load_genhancer_export(folder, meta, cache_dir)
