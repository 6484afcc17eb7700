"""What DIVA, DCR and the naive baseline share as methods: a frozen pretrained Stable Diffusion
(``method.sd``) that the tower's condition steers, and a projector that maps the tower into SD's
condition width. Each method's own folder adds its loss and schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enhance.methods.base import Method
from enhance.methods.sections import AUGMENT_KEYS, SD_VAE_KEYS
from genhancer.runtime.errors import UserError


class FrozenSD(Method):
    """Base of the methods that train through a frozen pretrained SD UNet."""

    #: The projector is a 2-layer MLP on the global token (DCR, naive) or one linear per token (DIVA).
    mlp_projector = True
    #: This method's augmented view came from the old top-level ``dcr.*`` keys (DCR's own, and
    #: the naive baseline's, which borrowed them).
    augment_from_dcr = False

    def __init__(self) -> None:
        self.recipes_file = Path(__file__).parent / self.name.replace("-", "_") / "recipes.yaml"

    def validate(self, cfg: Any) -> None:
        super().validate(cfg)
        sd = cfg.method.sd
        if sd.cross_attention_dim < 1 or sd.num_train_timesteps < 1:
            raise UserError("method.sd.cross_attention_dim and method.sd.num_train_timesteps must be >= 1")
        if cfg.latent_cache.path:
            raise UserError(
                f"latent_cache.path caches FLUX-VAE posteriors for GenHancer, not for {self.name}"
            )
        if cfg.backbone.local_token_ratio:
            raise UserError(f"backbone.local_token_ratio is a GenHancer ablation, not used by {self.name}")

    def legacy_key(self, key: str) -> str | None:
        top, _, rest = key.partition(".")
        if top == "sd":
            return f"method.sd.{rest}"
        if top == "vae" and rest in SD_VAE_KEYS:
            return f"method.sd.{rest}"
        if top == "dcr" and rest in AUGMENT_KEYS and self.augment_from_dcr:
            return f"method.augment.{rest}"
        if top in self.legacy_sections:
            return f"method.{rest}"
        return None

    def precheck(self, cfg: Any, cache_dir: str | None) -> None:
        from enhance.denoisers.sd import check_pipeline
        from genhancer.toyworld.models import resolve_tiny

        check_pipeline(cfg.method.sd, resolve_tiny(cfg.method.sd.path, cache_dir))

    def parts(self, cfg: Any, backbone_dim: int, cache_dir: str | None, prompt: str) -> dict:
        """The keyword arguments every frozen-SD model takes: the projector (seeded), the frozen
        UNet and VAE, the text embedding the condition is added to, and the SD section."""
        import torch

        from enhance.denoisers.sd import build_sd, text_embedding
        from enhance.methods.sd_models import TokenProjector

        sd = cfg.method.sd
        denoiser, codec, path = build_sd(sd, cache_dir)
        text = text_embedding(sd, path, prompt)
        if text.shape[-1] != sd.cross_attention_dim:
            raise UserError(
                f"the SD text encoder at '{sd.path}' gives {text.shape[-1]}-d embeddings, "
                f"method.sd.cross_attention_dim={sd.cross_attention_dim}"
            )
        torch.manual_seed(cfg.train.seed)
        projector = TokenProjector(backbone_dim, sd.cross_attention_dim, mlp=self.mlp_projector)
        return {"projector": projector, "denoiser": denoiser, "codec": codec, "text_context": text}

    def trains(self, stage: int, cfg: Any) -> set[str]:
        if stage == 1:
            return {"projector"}
        return {"lora" if cfg.stage2.tower_tuning == "lora" else "tower"}

    def describe(self, cfg: Any) -> dict:
        out = super().describe(cfg)
        sd = cfg.method.sd
        out["sd"] = {"path": sd.path, "target": sd.target, "unet_dtype": sd.unet_dtype}
        return out

    def architecture(self, cfg: Any, backbone_dims: tuple[int, int] | None) -> dict[str, Any]:
        from enhance.methods.sd_models import frozen_sd_architecture

        return frozen_sd_architecture(cfg.method.sd, backbone_dims, self.mlp_projector)

    def preview_steps(self, cfg: Any) -> int:
        return cfg.method.sd.reconstruct_steps

    def path_keys(self, cfg: Any) -> dict[str, str]:
        return {"method.sd.path": "the Stable Diffusion pipeline"}

    def load_export(self, folder: Path, meta: Any, cache_dir: str | None):
        from enhance.methods.sd_models import load_sd_export

        return load_sd_export(folder, meta, cache_dir)
