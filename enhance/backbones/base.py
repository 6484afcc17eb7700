"""One interface over the vision-language backbones GenHancer enhances.

The trainer only needs four things from a backbone: the global token that conditions the
denoiser (CLIP ``pooler_output`` through ``visual_projection``; SigLIP
``pooler_output``), the local patch tokens (ablation), the image-processor settings, and which
modules LoRA adapts. Everything else (loading, export) is family specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genhancer.runtime.errors import UserError


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

    @classmethod
    def bare(cls, model: nn.Module) -> VisionBackbone:
        """A backbone around ``model`` without processor or image settings: enough to place LoRA
        and count parameters (``enhance --describe`` builds towers on the meta device)."""
        obj = cls.__new__(cls)
        VisionBackbone.__init__(obj, model)
        return obj

    # --- what the trainer uses -------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        raise NotImplementedError

    @property
    def joint_dim(self) -> int:
        return self.global_dim

    def joint_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The global token followed by the patch tokens in the same space: [B, 1+N, joint_dim]
        (DIVA's multi-token condition)."""

        raise UserError(
            f"method diva needs the tower's tokens in the joint space; not available for {self.family}"
        )

    @property
    def vision_module(self) -> nn.Module:
        """The image encoder (the part stage 2 adapts)."""
        raise NotImplementedError

    def lora_target_regex(self, names: list[str]) -> str:
        """A peft ``target_modules`` regex selecting ``names`` inside the image encoder only."""
        raise NotImplementedError

    default_lora_targets: tuple[str, ...] = ()

    #: Module-name prefixes (inside ``model``) of the image side: the encoder and the projection
    #: to the joint space. LoRA and trained biases stay inside them, so the text tower never trains.
    vision_prefixes: tuple[str, ...] = ()

    def is_vision_side(self, name: str) -> bool:
        """Whether a module or parameter name of ``model`` (peft wrapper prefix allowed) is image side."""
        name = name.removeprefix("base_model.model.")
        return any(name == p or name.startswith(p + ".") for p in self.vision_prefixes)

    def all_linear_targets(self, names: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Full names of every linear layer of the image side (peft's ``all-linear`` restricted to
        it, as the official code's LoRA ends up), optionally only those whose last name part is in
        ``names``. A ``nn.MultiheadAttention`` is adapted as a whole: it calls its ``out_proj``
        weight functionally, so a LoRA on that ``Linear`` alone would never run."""
        out = []
        for name, module in self.model.named_modules():
            if not self.is_vision_side(name):
                continue
            parent = self.model.get_submodule(name.rpartition(".")[0]) if "." in name else self.model
            if isinstance(parent, nn.MultiheadAttention):
                continue
            if isinstance(module, nn.Linear | nn.MultiheadAttention):
                if not names or name.rpartition(".")[2] in names:
                    out.append(name)
        return out

    # --- export ------------------------------------------------------------------------------
    def export(self, out_dir: Path) -> dict[str, str]:
        """Write the (LoRA-merged) model; return {kind: path} of what was written."""
        raise NotImplementedError
