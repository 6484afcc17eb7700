"""Reading GenHancer's ``export/denoiser/`` back: the projector, the FLUX transformer (continuous)
or the Perceiver (discrete), and the frozen codec named in ``genhancer.json``."""

from __future__ import annotations

from pathlib import Path

from diffusers import FluxTransformer2DModel

from enhance.denoiser_export import DenoiserExport
from enhance.denoisers.continuous import ContinuousDenoiser
from enhance.denoisers.discrete import PerceiverDenoiser
from enhance.export_meta import DenoiserMeta
from enhance.methods.genhancer.config import GenHancerSection
from enhance.model import DiscreteGenHancerModel, GenHancerModel
from enhance.projector import ConditionProjector
from enhance.vae import build_codec
from enhance.vq import build_vq
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError, first_line


def _continuous_model(backbone, e: DenoiserExport) -> GenHancerModel:
    return GenHancerModel(backbone, e.projector, e.denoiser, e.codec)


def _discrete_model(backbone, e: DenoiserExport) -> DiscreteGenHancerModel:
    return DiscreteGenHancerModel(backbone, e.projector, e.denoiser, e.codec)


def load_genhancer_export(folder: Path, meta: DenoiserMeta, cache_dir: str | None) -> DenoiserExport:
    section = configtools.from_dict(GenHancerSection, meta.method_config, "method")
    kind = section.denoiser.kind
    weights = "transformer" if kind == "continuous" else "perceiver"
    if not (folder / weights / "config.json").is_file():
        raise UserError(f"{folder} has no {weights}/ (the exported {kind} denoiser weights)")
    try:
        projector = ConditionProjector.from_pretrained(folder / "projector")
        if kind == "continuous":
            module = FluxTransformer2DModel.from_pretrained(folder / weights)
        else:
            module = PerceiverDenoiser.from_pretrained(folder / weights)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the denoiser from {folder}: {first_line(exc)}") from None
    steps = section.flow.preview_steps
    if kind == "discrete":
        codec = build_vq(section.denoiser, int(meta.backbone["image_size"]), cache_dir)
        return DenoiserExport(projector.eval(), module.eval(), codec.eval(), meta, _discrete_model, steps)
    codec = build_codec(section.vae, cache_dir)
    denoiser = ContinuousDenoiser(module, guidance=section.denoiser.guidance)
    return DenoiserExport(projector.eval(), denoiser.eval(), codec.eval(), meta, _continuous_model, steps)
