"""The naive contrastive baseline's section (``method:`` with ``name: naive-contrastive``): DCR's
paper's baseline on a frozen SD-2.1 (v-prediction), the same augmented view as DCR."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from enhance.methods.sections import AugmentSection, SDSection
from genhancer.runtime.configtools import doc


def _naive_sd() -> SDSection:
    return SDSection(path="stabilityai/stable-diffusion-2-1", target="v_prediction", unet_dtype="bfloat16")


@dataclass
class NaiveContrastiveSection:
    name: Literal["naive-contrastive"] = doc(
        "naive-contrastive", "naive-contrastive: frozen SD, diffusion MSE + InfoNCE on the tower's features"
    )
    sd: SDSection = field(default_factory=_naive_sd)
    augment: AugmentSection = field(default_factory=AugmentSection)
    contrastive_weight: float = doc(1.0, "weight of the InfoNCE term on the tower's global features")
    reconstruction_weight: float = doc(1.0, "weight of the diffusion MSE term")
    temperature: float = doc(0.1, "InfoNCE temperature")
