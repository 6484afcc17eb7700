"""What the global token keeps: the image the enhanced run's denoiser rebuilds from it.

GenHancer trains a denoiser to reconstruct the image from the tower's global token alone, so
the reconstruction is a picture of what the token remembers. The demo feeds the *same*
exported projector and denoiser with each model's token: the enhanced tower is what they were
trained with; the original tower's token shows what that conditioning had to work from before
stage 2 changed it. Reconstructions are seeded, so the same input gives the same picture.

The denoiser comes from ``RUN/export/denoiser/`` (``projector/``, ``transformer/`` or, for the
discrete denoiser, ``perceiver/``, and ``genhancer.json``), rebuilt with the same classes as
training (``enhance.projector``, ``enhance.denoisers``, ``enhance.vae`` / ``enhance.vq``). A
discrete run's picture is the VQ decode of the codes it predicts with every position masked, i.e.
from the global token alone (argmax, so the seed does not matter there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from demo.images import open_image, to_pil
from demo.models import SIDES, ModelRegistry, Unavailable
from genhancer.runtime.errors import UserError, first_line


class Reconstructor:
    """Projector + denoiser + codec of an exported run.

    Args:
        projector: the exported :class:`~enhance.projector.ConditionProjector`.
        denoiser: a :class:`~enhance.denoisers.continuous.ContinuousDenoiser` or a
            :class:`~enhance.denoisers.discrete.PerceiverDenoiser`.
        codec: the run's frozen :class:`~enhance.vae.LatentCodec` (or :class:`~enhance.vq.VQCodec`).
        meta: the parsed ``genhancer.json``.
        steps (`int`): Euler steps per reconstruction (continuous only).
    """

    def __init__(self, projector, denoiser, codec, meta: dict, steps: int):
        self.projector = projector.eval()
        self.denoiser = denoiser.eval()
        self.codec = codec.eval()
        self.meta = meta
        self.steps = steps
        self.image_size = int(meta["backbone"]["image_size"])
        self.local_token_ratio = float(meta["backbone"].get("local_token_ratio", 0.0))
        self.kind = meta.get("denoiser", {}).get("kind", "continuous")

    @classmethod
    def load(
        cls, denoiser_dir: str | Path, device: str = "cpu", cache_dir: str | None = None, steps: int = 0
    ) -> Reconstructor:
        """Rebuild from ``denoiser_dir`` (``RUN/export/denoiser``); errors name what is missing."""
        from diffusers import FluxTransformer2DModel

        from enhance.config import DenoiserConfig, FlowConfig, VAEConfig
        from enhance.denoisers.continuous import ContinuousDenoiser
        from enhance.denoisers.discrete import PerceiverDenoiser
        from enhance.projector import ConditionProjector
        from enhance.vae import build_codec
        from enhance.vq import build_vq
        from genhancer.runtime import configtools

        folder = Path(denoiser_dir)
        try:
            meta = json.loads((folder / "genhancer.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder / 'genhancer.json'}: {first_line(exc)}") from None
        kind = meta.get("denoiser", {}).get("kind", "continuous")
        if kind not in ("continuous", "discrete"):
            raise Unavailable(f"the run in {folder.parent.parent} used an unknown '{kind}' denoiser")
        weights = "transformer" if kind == "continuous" else "perceiver"
        if not (folder / weights / "config.json").is_file():
            raise Unavailable(f"{folder} has no {weights}/ (the exported {kind} denoiser weights)")
        try:
            projector = ConditionProjector.from_pretrained(folder / "projector")
            if kind == "continuous":
                denoiser_module = FluxTransformer2DModel.from_pretrained(folder / weights)
            else:
                denoiser_module = PerceiverDenoiser.from_pretrained(folder / weights)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the denoiser from {folder}: {first_line(exc)}") from None
        flow_cfg = configtools.from_dict(FlowConfig, meta.get("flow", {}), "flow")
        if kind == "discrete":
            den_cfg = configtools.from_dict(DenoiserConfig, meta["denoiser"], "denoiser")
            codec = build_vq(den_cfg, int(meta["backbone"]["image_size"]), cache_dir)
            return cls(projector, denoiser_module, codec, meta, steps or flow_cfg.preview_steps).to(device)
        vae_cfg = configtools.from_dict(VAEConfig, meta["vae"], "vae")
        codec = build_codec(vae_cfg, cache_dir)
        denoiser = ContinuousDenoiser(denoiser_module, guidance=float(meta["denoiser"].get("guidance", 4.0)))
        rec = cls(projector, denoiser, codec, meta, steps or flow_cfg.preview_steps)
        return rec.to(device)

    def to(self, device: str | torch.device) -> Reconstructor:
        self.device = torch.device(device)
        for part in (self.projector, self.denoiser, self.codec):
            part.to(self.device)
        return self

    @property
    def global_dim(self) -> int:
        return int(self.projector.config.global_dim)

    @torch.no_grad()
    def reconstruct(self, encoder, image: Image.Image, seed: int = 0) -> Image.Image:
        """The image rebuilt from ``encoder``'s global token for ``image``."""
        from enhance.model import GenHancerModel

        if encoder.image_size != self.image_size:
            raise UserError(
                f"the denoiser works at {self.image_size}px but this tower takes {encoder.image_size}px"
            )
        if self.local_token_ratio > 0:
            raise UserError("the run conditioned on local tokens too; the demo shows global-token runs only")
        pixels = encoder.preprocess([image]).to(self.device, torch.float32)
        token = encoder.global_token(pixels).float()
        if token.shape[-1] != self.global_dim:
            raise UserError(
                f"this tower's global token is {token.shape[-1]}-d; the denoiser was trained on {self.global_dim}-d"
            )
        if self.kind == "discrete":
            from enhance.model import DiscreteGenHancerModel

            model = DiscreteGenHancerModel(_FixedToken(token), self.projector, self.denoiser, self.codec)
        else:
            model = GenHancerModel(_FixedToken(token), self.projector, self.denoiser, self.codec)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = model.reconstruct(pixels, generator, steps=self.steps)
        return to_pil(out[0])


class _FixedToken(torch.nn.Module):
    """A stand-in backbone that hands :meth:`GenHancerModel.reconstruct` an already computed token."""

    def __init__(self, token: torch.Tensor):
        super().__init__()
        self.token = token

    def forward(self, pixel_values: torch.Tensor):
        from enhance.backbones.base import BackboneOutput

        return BackboneOutput(global_token=self.token, local_tokens=self.token[:, None, :0])


@dataclass
class ReconstructionView:
    side: str
    image: Image.Image | None
    error: str = ""


def reconstruction_views(
    registry: ModelRegistry, image
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
    from demo.images import square_view

    shown = square_view(img, rec.image_size)
    views = []
    for side in SIDES:
        try:
            views.append(ReconstructionView(side, rec.reconstruct(registry.encoder(side), img, cfg.seed)))
        except UserError as exc:
            views.append(ReconstructionView(side, None, str(exc)))
    return shown, views, ""
