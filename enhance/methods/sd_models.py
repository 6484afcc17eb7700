"""What the frozen-SD methods' models share: the projector into SD's condition width, the model
base (tower, projector, frozen UNet and VAE, the fixed text embedding), the parameter counts of
``--describe`` and the reader of their ``export/denoiser/``. Each method's own model (its loss) is
in its folder; the loop does not know which method it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from enhance.architectures import sd_unet_config
from enhance.denoiser_export import DenoiserExport
from enhance.denoisers.sd import build_sd, check_pipeline, text_embedding
from enhance.export_meta import DenoiserMeta
from enhance.methods.augment import augment_view, normalise
from enhance.methods.sections import AugmentSection, SDSection
from enhance.projector import _head
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError, first_line
from genhancer.toyworld.models import resolve_tiny

# --- projectors ---------------------------------------------------------------------------------


class TokenProjector(ModelMixin, ConfigMixin):
    """CLIP feature(s) -> SD condition width, added to a fixed text embedding.

    ``mlp=True`` (DCR, naive): ``LayerNorm -> Linear -> GELU -> Linear`` on the global token, one
    vector added to every text position. ``mlp=False`` (DIVA): one ``Linear`` per token.
    """

    @register_to_config
    def __init__(self, in_dim: int, out_dim: int, mlp: bool = True):
        super().__init__()
        self.net = _head(in_dim, out_dim, "gelu") if mlp else nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


# --- the models ---------------------------------------------------------------------------------


class SDMethodModel(nn.Module):
    """Tower, projector, frozen SD UNet (``denoiser``) and VAE (``codec``), and the fixed text
    embedding the condition is added to (``text_context`` [L, H], not a parameter)."""

    #: What a checkpoint holds besides LoRA and trained tower weights: the frozen UNet reloads.
    checkpoint_prefixes: tuple[str, ...] = ("projector.",)

    def __init__(
        self,
        *,
        backbone: nn.Module | None,
        projector: nn.Module | None,
        denoiser: nn.Module,
        codec: nn.Module | None,
        text_context: torch.Tensor,
        sd: SDSection,
    ):
        super().__init__()
        self.backbone, self.projector, self.denoiser, self.codec = backbone, projector, denoiser, codec
        self.register_buffer("text_context", text_context, persistent=False)
        self.sd_cfg = sd
        self.local_token_ratio = 0.0

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.training_forward(batch, generator)

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        with torch.autocast(batch["vae_pixels"].device.type, enabled=False):
            return self.codec.encode(batch["vae_pixels"].float(), generator=generator)

    def draw(self, z: torch.Tensor, generator: torch.Generator):
        """(t, noise, z_t) with t ~ randint(0, T) and Gaussian noise, both from ``generator``."""
        t = torch.randint(
            0, self.sd_cfg.num_train_timesteps, (z.shape[0],), generator=generator, device=z.device
        )
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return t, noise, self.denoiser.add_noise(z, noise, t)

    def global_condition(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """DCR / naive: the condition of the tower's global token (:meth:`token_condition`)."""
        return self.token_condition(self.backbone(pixel_values).global_token)

    def token_condition(self, g: torch.Tensor) -> torch.Tensor:
        """projector(global token) added to every text position: [B, L, H]."""
        return self.projector(g)[:, None, :] + self.text_context[None].to(g.dtype)

    def augmented_pixels(
        self, batch: dict, generator: torch.Generator, aug_cfg: AugmentSection
    ) -> torch.Tensor:
        unit = (batch["vae_pixels"].float() + 1) / 2
        view = augment_view(
            unit, generator, aug_cfg.jitter, aug_cfg.flip_p, aug_cfg.crop_scale, aug_cfg.crop_ratio
        )
        b = self.backbone
        return normalise(view, b.image_mean, b.image_std).to(batch["pixel_values"].dtype)

    def condition(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.global_condition(pixel_values)

    @torch.no_grad()
    def reconstruct(
        self, pixel_values: torch.Tensor, generator: torch.Generator, steps: int = 20
    ) -> torch.Tensor:
        """DDIM sample from the image's condition alone, decoded to [-1, 1]."""
        context = self.condition(pixel_values, generator)
        size = pixel_values.shape[-1] // self.codec.downsample
        shape = (pixel_values.shape[0], self.codec.latent_channels, size, size)
        z = self.denoiser.sample(context, shape, generator, steps or self.sd_cfg.reconstruct_steps)
        return self.codec.decode(z)


# --- --describe and the export reader -------------------------------------------------------------


def frozen_sd_architecture(sd: SDSection, backbone_dims: tuple[int, int] | None, mlp: bool) -> dict[str, Any]:
    """``{part: module or note}`` at the configured size, built on the current (meta) device:
    the frozen UNet when its architecture is known offline, and the projector."""
    parts: dict[str, Any] = {}
    unet = sd_unet_config(sd.path)
    parts["denoiser_frozen"] = (
        UNet2DConditionModel(**unet) if unet is not None else "unknown until the UNet is loaded"
    )
    if backbone_dims is not None:
        width = backbone_dims[0] if mlp else backbone_dims[1]
        parts["projector"] = TokenProjector(width, sd.cross_attention_dim, mlp=mlp)
    else:
        parts["projector"] = "unknown until the backbone is loaded"
    return parts


def load_sd_export(folder: Path, meta: DenoiserMeta, cache_dir: str | None) -> DenoiserExport:
    """A frozen-SD method's ``export/denoiser/``: its projector, and the SD (``method.sd.path``) it
    was trained through (the global-token methods: DCR and the naive baseline)."""
    try:
        projector = TokenProjector.from_pretrained(folder / "projector")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the projector from {folder}: {first_line(exc)}") from None
    sd = configtools.from_dict(SDSection, meta.method_config.get("sd") or {}, "method.sd")
    path = resolve_tiny(sd.path, cache_dir)
    check_pipeline(sd, path)
    denoiser, codec, _ = build_sd(sd, cache_dir)
    text = text_embedding(sd, path, "")

    def make_model(backbone: nn.Module, e: DenoiserExport) -> SDMethodModel:
        return SDMethodModel(
            backbone=backbone,
            projector=e.projector,
            denoiser=e.denoiser,
            codec=e.codec,
            text_context=e.text_context,
            sd=sd,
        )

    return DenoiserExport(
        projector.eval(), denoiser.eval(), codec.eval(), meta, make_model, sd.reconstruct_steps, text
    )
