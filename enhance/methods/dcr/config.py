"""DCR's section of the config (``method:`` with ``name: dcr``). Defaults: the official
``boyuh/DCR`` training configs (SD-2.1, v-prediction, bfloat16 UNet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from enhance.methods.sections import AugmentSection, SDSection
from genhancer.runtime.configtools import doc

DcrNegatives = Literal["exact", "sampled"]


def _dcr_sd() -> SDSection:
    return SDSection(path="stabilityai/stable-diffusion-2-1", target="v_prediction", unet_dtype="bfloat16")


@dataclass
class DCRSection:
    name: Literal["dcr"] = doc("dcr", "dcr: frozen SD, two stages, InfoNCE over predicted noise")
    sd: SDSection = field(default_factory=_dcr_sd)
    augment: AugmentSection = field(default_factory=AugmentSection)
    temperature: float = doc(0.1, "tau of the InfoNCE over predicted noise (official: 0.1)")
    negatives: DcrNegatives = doc(
        "exact",
        "exact: every other image's condition on each noisy latent, B^2 UNet calls per micro-batch (the "
        "official code) | sampled: method.num_negatives random others per anchor, B*(K+1) calls (an "
        "approximation; equal to exact when K = B-1)",
    )
    num_negatives: int = doc(3, "negatives per anchor with method.negatives=sampled")
    unet_chunk: int = doc(0, "UNet calls per forward chunk (0: all at once); same loss, less peak memory")


def dcr_negatives(b: int, section: DCRSection) -> int:
    """Negatives per anchor in a micro-batch of ``b``: every other image (exact) or
    ``num_negatives`` of them (sampled), never more than ``b - 1``."""
    return b - 1 if section.negatives == "exact" else min(section.num_negatives, b - 1)


def dcr_unet_calls(b: int, section: DCRSection) -> int:
    """UNet calls per micro-batch: ``b * (K + 1)`` (anchor + negatives) and ``b`` augmented views."""
    return b * (dcr_negatives(b, section) + 1) + b
