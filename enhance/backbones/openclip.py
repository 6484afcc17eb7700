"""open_clip backbones (for example the MetaCLIP or LAION checkpoints published for open_clip)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from enhance.backbones.base import BackboneOutput, VisionBackbone
from genhancer.runtime.errors import UserError


class OpenCLIPBackbone(VisionBackbone):
    """Global token = ``model.visual`` pooled output after its projection (what ``encode_image`` returns)."""

    family = "open_clip"
    # nn.MultiheadAttention is adapted as a whole (peft wraps its packed in_proj and out_proj);
    # a LoRA on its ``out_proj`` alone would be bypassed by the functional attention call.
    default_lora_targets = ("attn", "c_fc", "c_proj")
    # ``visual.proj`` is a bare parameter, not a layer: LoRA cannot reach it (it stays frozen).
    vision_prefixes = ("visual",)

    def __init__(self, model: nn.Module, model_name: str, image_size: int):
        super().__init__(model)
        self.model_name = model_name
        visual = model.visual
        size = visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        if image_size != size:
            raise UserError(
                f"backbone.image_size={image_size} but open_clip model '{model_name}' takes {size}px; "
                f"set backbone.image_size={size}"
            )
        self.image_size = image_size
        self.image_mean = tuple(float(x) for x in visual.preprocess_cfg["mean"])
        self.image_std = tuple(float(x) for x in visual.preprocess_cfg["std"])
        self.global_dim = int(visual.output_dim)
        self.local_dim = int(visual.transformer.width)

    @property
    def vision_module(self) -> nn.Module:
        return self.model.visual

    def lora_target_regex(self, names: list[str]) -> str:
        alts = "|".join(re.escape(n) for n in names)
        return rf"(.*\.)?visual\.transformer\.resblocks\.\d+\.(mlp\.)?({alts})"

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        visual = self.model.visual
        visual.output_tokens = True  # only for this call: the model's own API stays as open_clip made it
        try:
            pooled, tokens = visual(pixel_values)
        finally:
            visual.output_tokens = False
        return BackboneOutput(global_token=pooled, local_tokens=tokens)

    def export(self, out_dir: Path) -> dict[str, str]:
        from safetensors.torch import save_file

        target = out_dir / "open_clip"
        target.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, target / "open_clip_model.safetensors")
        import open_clip

        meta = {"model_name": self.model_name, "model_cfg": open_clip.get_model_config(self.model_name)}
        (target / "open_clip_config.json").write_text(json.dumps(meta, indent=2))
        return {"open_clip": str(target)}


def register_model_config(name: str) -> str:
    """An open_clip model name as ``open_clip.create_model`` takes it: a JSON config path is
    registered with open_clip and named by its stem; any other name is returned as it is."""
    import open_clip

    if not name.endswith(".json"):
        return name
    path = Path(name)
    if not path.is_file():
        raise UserError(f"open_clip model config not found: {path}")
    open_clip.add_model_config(path)
    return path.stem


def load_open_clip_backbone(model_name: str, pretrained: str, image_size: int) -> OpenCLIPBackbone:
    """``model_name``: an open_clip architecture (or a JSON config path); ``pretrained``: tag or file."""
    import open_clip

    model_name = register_model_config(model_name)
    if model_name not in open_clip.list_models():
        raise UserError(f"unknown open_clip model '{model_name}'; see open_clip.list_models()")
    if pretrained and not (
        Path(pretrained).is_file() or pretrained in open_clip.list_pretrained_tags_by_model(model_name)
    ):
        raise UserError(
            f"open_clip weights '{pretrained}' are neither a file nor a known tag for {model_name}"
        )
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"cannot load open_clip '{model_name}' with weights '{pretrained}': {exc}") from None
    model.eval()
    return OpenCLIPBackbone(model, model_name, image_size)
