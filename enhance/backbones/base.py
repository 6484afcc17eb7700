"""One interface over the vision-language backbones GenHancer enhances.

The trainer only needs four things from a backbone: the global token that conditions the
denoiser (DESIGN.md: CLIP ``pooler_output`` through ``visual_projection``; SigLIP
``pooler_output``), the local patch tokens (ablation), the image-processor settings, and which
modules LoRA adapts. Everything else (loading, export) is family specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class BackboneOutput:
    global_token: torch.Tensor  # [B, global_dim]
    local_tokens: torch.Tensor  # [B, N, local_dim] patch tokens (no CLS)


class VisionBackbone(nn.Module):
    """A dual encoder whose image side GenHancer trains.

    Attributes:
        family: registry name (``openai-clip``, ``metaclip``, ``siglip``, ``open_clip``).
        model: the whole dual encoder (text side kept for export and evaluation).
        global_dim: width of the global token.
        local_dim: width of the local tokens.
        image_size: input resolution.
        image_mean / image_std: normalisation the tower expects.
    """

    family: str = ""
    global_dim: int
    local_dim: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    # --- what the trainer uses -------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        raise NotImplementedError

    @property
    def vision_module(self) -> nn.Module:
        """The image encoder (the part stage 2 adapts)."""
        raise NotImplementedError

    def lora_target_regex(self, names: list[str]) -> str:
        """A peft ``target_modules`` regex selecting ``names`` inside the image encoder only."""
        raise NotImplementedError

    default_lora_targets: tuple[str, ...] = ()

    # --- export ------------------------------------------------------------------------------
    def export(self, out_dir: Path) -> dict[str, str]:
        """Write the (LoRA-merged) model; return {kind: path} of what was written."""
        raise NotImplementedError
