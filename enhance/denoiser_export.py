"""What ``export/denoiser/`` rebuilds into: the projector, the generator and its frozen codec, as
training built them, and the method's own model around a fixed token for reconstructions. The
method that wrote the folder builds it (``Method.load_export``); this class knows no method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from enhance.backbones.base import BackboneOutput
from enhance.export_meta import DenoiserMeta


class FixedToken(nn.Module):
    """A stand-in backbone that hands the model an already computed global token."""

    def __init__(self, token: torch.Tensor):
        super().__init__()
        self.token = token

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        return BackboneOutput(global_token=self.token, local_tokens=self.token[:, None, :0])


@dataclass
class DenoiserExport:
    """The generator side of an export.

    Args:
        projector: the condition projector the run trained.
        denoiser: the method's denoiser (GenHancer's, or the frozen SD UNet).
        codec: the frozen VAE or VQ tokenizer.
        meta: the parsed ``genhancer.json``.
        make_model: ``(backbone, parts) -> model`` with the method's ``reconstruct``.
        default_steps: the run's own sampling steps for previews.
        text_context: frozen-SD methods: the embedding the condition is added to.
    """

    projector: nn.Module
    denoiser: nn.Module
    codec: nn.Module
    meta: DenoiserMeta
    make_model: Callable[[nn.Module, DenoiserExport], nn.Module]
    default_steps: int
    text_context: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return self.meta.denoiser_kind

    @property
    def image_size(self) -> int:
        return int(self.meta.backbone["image_size"])

    @property
    def local_token_ratio(self) -> float:
        return float(self.meta.backbone.get("local_token_ratio", 0.0))

    @property
    def preview_steps(self) -> int:
        """The run's own sampling steps (GenHancer's ``flow.preview_steps``, SD's DDIM steps)."""
        return self.default_steps

    def to(self, device: str | torch.device) -> DenoiserExport:
        for part in (self.projector, self.denoiser, self.codec):
            part.to(device)
        if self.text_context is not None:
            self.text_context = self.text_context.to(device)
        return self

    @torch.no_grad()
    def reconstruct(
        self, token: torch.Tensor, pixels: torch.Tensor, generator: torch.Generator, steps: int
    ) -> torch.Tensor:
        """Images in [-1, 1] rebuilt from ``token`` (a precomputed global token per image) with the
        training model's own ``reconstruct`` (``pixels`` only give the output size)."""
        model = self.make_model(FixedToken(token), self)
        return model.reconstruct(pixels, generator, steps=steps or self.default_steps)
