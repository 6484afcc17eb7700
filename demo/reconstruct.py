"""What the global token keeps: the image the enhanced run's denoiser rebuilds from it.

GenHancer trains a denoiser to reconstruct the image from the tower's global token alone, so
the reconstruction is a picture of what the token remembers. The demo feeds the *same*
exported projector and denoiser with each model's token: the enhanced tower is what they were
trained with; the original tower's token shows what that conditioning had to work from before
stage 2 changed it. Reconstructions are seeded, so the same input gives the same picture.

The denoiser comes from ``RUN/export/denoiser/``, read back by ``enhance.export`` (the module that
wrote it), so this file only draws. A discrete run's picture is the VQ decode of the codes it
predicts with every position masked, i.e. from the global token alone (argmax, so the seed does not
matter there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from demo.common import SIDES, Unavailable
from demo.images import open_image, square_view, to_pil
from enhance.export import DenoiserExport, load_denoiser_export
from genhancer.runtime.errors import UserError


class _Registry(Protocol):
    """What the view reads of :class:`demo.models.ModelRegistry` (which imports this module)."""

    cfg: Any

    def reconstructor(self) -> Reconstructor: ...

    def encoder(self, side: str) -> Any: ...


class Reconstructor:
    """An exported run's projector + denoiser + codec, fed with any tower's global token.

    Args:
        export: the run's :class:`~enhance.export.DenoiserExport`.
        steps (`int`): Euler steps per reconstruction (continuous only).
    """

    def __init__(self, export: DenoiserExport, steps: int):
        self.export = export
        self.steps = steps
        self.device = torch.device("cpu")

    @property
    def kind(self) -> str:
        return self.export.kind

    @property
    def image_size(self) -> int:
        return self.export.image_size

    @property
    def projector(self):
        return self.export.projector

    @property
    def denoiser(self):
        return self.export.denoiser

    @property
    def codec(self):
        return self.export.codec

    @classmethod
    def load(
        cls, denoiser_dir: str | Path, device: str = "cpu", cache_dir: str | None = None, steps: int = 0
    ) -> Reconstructor:
        """Rebuild from ``denoiser_dir`` (``RUN/export/denoiser``); a run the demo cannot use is
        :class:`Unavailable`, with the reason."""
        try:
            export = load_denoiser_export(denoiser_dir, cache_dir)
        except UserError as exc:
            raise Unavailable(str(exc)) from None
        return cls(export, steps or export.preview_steps).to(device)

    def to(self, device: str | torch.device) -> Reconstructor:
        self.device = torch.device(device)
        self.export.to(self.device)
        return self

    @property
    def global_dim(self) -> int:
        return int(self.projector.config.global_dim)

    @torch.no_grad()
    def reconstruct(self, encoder, image: Image.Image, seed: int = 0) -> Image.Image:
        """The image rebuilt from ``encoder``'s global token for ``image``."""
        if encoder.image_size != self.image_size:
            raise UserError(
                f"the denoiser works at {self.image_size}px but this tower takes {encoder.image_size}px"
            )
        if self.export.local_token_ratio > 0:
            raise UserError("the run conditioned on local tokens too; the demo shows global-token runs only")
        pixels = encoder.preprocess([image]).to(self.device, torch.float32)
        token = encoder.global_token(pixels).float()
        if token.shape[-1] != self.global_dim:
            raise UserError(
                f"this tower's global token is {token.shape[-1]}-d; the denoiser was trained on {self.global_dim}-d"
            )
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return to_pil(self.export.reconstruct(token, pixels, generator, self.steps)[0])


@dataclass
class ReconstructionView:
    side: str
    image: Image.Image | None
    error: str = ""


def reconstruction_views(
    registry: _Registry, image
) -> tuple[Image.Image | None, list[ReconstructionView], str]:
    """What the reconstruction button computes: (input as the tower sees it, one view per side, message)."""
    cfg = registry.cfg
    try:
        img = open_image(image, "image", cfg.max_image_pixels, int(cfg.max_upload_mb * 1e6))
        rec = registry.reconstructor()
    except UserError as exc:
        return None, [], str(exc)
    if cfg.reconstruction_steps:
        rec.steps = cfg.reconstruction_steps
    shown = square_view(img, rec.image_size)
    views = []
    for side in SIDES:
        try:
            views.append(ReconstructionView(side, rec.reconstruct(registry.encoder(side), img, cfg.seed)))
        except UserError as exc:
            views.append(ReconstructionView(side, None, str(exc)))
    return shown, views, ""
