"""Hugging Face CLIP (OpenAI, MetaCLIP) and SigLIP backbones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from enhance.backbones.base import BackboneOutput, VisionBackbone
from genhancer.runtime.errors import UserError, loading

# Paper: LoRA on all linear layers of the vision encoder blocks (q/k/v/out_proj/fc1/fc2).
_LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _load_processor(name_or_path: str, revision: str, trust_remote_code: bool):
    from transformers import AutoProcessor

    kwargs = {"revision": revision} if revision else {}
    return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)


class HFDualEncoder(VisionBackbone):
    """Shared code for HF CLIP-like models (``vision_model`` + optional ``visual_projection``)."""

    default_lora_targets = _LINEAR_TARGETS
    vision_prefixes = ("vision_model", "visual_projection")
    vision_model_class: str = ""

    def __init__(self, model: nn.Module, processor, image_size: int):
        super().__init__(model)
        self.processor = processor
        vcfg = model.config.vision_config
        if image_size != vcfg.image_size:
            raise UserError(
                f"backbone.image_size={image_size} but the tower was trained at {vcfg.image_size}px; "
                f"set backbone.image_size={vcfg.image_size} or pick a preset for this resolution"
            )
        self.image_size = image_size
        ip = processor.image_processor
        self.image_mean = tuple(float(x) for x in ip.image_mean)
        self.image_std = tuple(float(x) for x in ip.image_std)
        self.local_dim = vcfg.hidden_size

    @property
    def vision_module(self) -> nn.Module:
        return self.model.vision_model

    def lora_target_regex(self, names: list[str]) -> str:
        alts = "|".join(re.escape(n) for n in names)
        # Encoder blocks (and the SigLIP pooling head's MLP); never the text tower.
        return rf"(.*\.)?vision_model\..*(self_attn|mlp)\.({alts})"

    def export(self, out_dir: Path) -> dict[str, str]:
        import transformers

        hf_dir = out_dir / "hf"
        self.model.save_pretrained(hf_dir, safe_serialization=True)
        self.processor.save_pretrained(hf_dir)
        tower_cls = getattr(transformers, self.vision_model_class)
        tower = tower_cls(self.model.config.vision_config).to(self.model.dtype)  # keep the saved dtype
        # transformers 5 puts the encoder directly on CLIPVisionModel; 4.x nests it in .vision_model
        getattr(tower, "vision_model", tower).load_state_dict(self.model.vision_model.state_dict())
        tower_dir = out_dir / "vision_tower"
        tower.save_pretrained(tower_dir, safe_serialization=True)
        _prefix_keys(tower_dir, "vision_model.")
        self.processor.image_processor.save_pretrained(tower_dir)
        return {"hf": str(hf_dir), "vision_tower": str(tower_dir)}


def _prefix_keys(model_dir: Path, prefix: str) -> None:
    """Store tower weights as ``vision_model.*``: the layout transformers 4.x (and so the original
    LLaVA code, pinned to 4.37) expects; transformers 5 reads it too."""

    from safetensors.torch import load_file, save_file

    for f in sorted(model_dir.glob("*.safetensors")):
        state = load_file(f)
        if all(k.startswith(prefix) for k in state):
            continue
        save_file(
            {k if k.startswith(prefix) else prefix + k: v for k, v in state.items()},
            f,
            metadata={"format": "pt"},
        )
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {
            k if k.startswith(prefix) else prefix + k: v for k, v in data["weight_map"].items()
        }
        index.write_text(json.dumps(data, indent=2))


class HFCLIPBackbone(HFDualEncoder):
    """OpenAI CLIP / MetaCLIP: global token = ``visual_projection(pooler_output)``."""

    vision_model_class = "CLIPVisionModel"

    def __init__(self, model: nn.Module, processor, image_size: int, family: str = "openai-clip"):
        super().__init__(model, processor, image_size)
        self.family = family
        self.global_dim = model.config.projection_dim

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        out = self.model.vision_model(pixel_values=pixel_values)
        return BackboneOutput(
            global_token=self.model.visual_projection(out.pooler_output),
            local_tokens=out.last_hidden_state[:, 1:],
        )

    @property
    def joint_dim(self) -> int:
        return self.global_dim

    def joint_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[CLS] and every patch token through ``post_layernorm`` and ``visual_projection``: [B, 1+N, D]
        in the joint space (DIVA's condition; ``[:, 0]`` is the global token)."""
        vm = self.model.vision_model
        hidden = vm(pixel_values=pixel_values).last_hidden_state
        return self.model.visual_projection(vm.post_layernorm(hidden))


class HFSiglipBackbone(HFDualEncoder):
    """SigLIP: global token = the attention-pooled ``pooler_output`` (no projection layer)."""

    family = "siglip"
    vision_model_class = "SiglipVisionModel"

    def __init__(self, model: nn.Module, processor, image_size: int):
        super().__init__(model, processor, image_size)
        self.global_dim = model.config.vision_config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        out = self.model.vision_model(pixel_values=pixel_values)
        return BackboneOutput(global_token=out.pooler_output, local_tokens=out.last_hidden_state)

    @property
    def joint_dim(self) -> int:
        return self.global_dim

    def joint_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled token followed by every (post-norm) patch token: [B, 1+N, D]."""
        out = self.model.vision_model(pixel_values=pixel_values)
        return torch.cat([out.pooler_output[:, None], out.last_hidden_state], dim=1)


def _check_model_type(family: str, name_or_path: str, revision: str) -> None:
    """A SigLIP checkpoint named as a CLIP family (or the reverse) fails early, by name."""
    from transformers import AutoConfig

    kwargs = {"revision": revision} if revision else {}
    try:
        model_type = AutoConfig.from_pretrained(name_or_path, **kwargs).model_type
    except (OSError, ValueError):
        return  # the loader below reports the missing/corrupt path
    expected = "siglip" if family == "siglip" else "clip"
    if model_type != expected:
        raise UserError(
            f"'{name_or_path}' is a '{model_type}' model but backbone.family={family} expects '{expected}'; "
            "set backbone.family to match the checkpoint"
        )


def _refuse_pickle(name_or_path: str) -> None:
    """A local model dir with pickled weights only (``pytorch_model.bin``) is refused: unpickling
    can run arbitrary code. Hub ids get ``use_safetensors=True`` in the loader instead."""
    local = Path(name_or_path)
    if not local.is_dir() or any(local.glob("*.safetensors")) or any(local.glob("*.safetensors.index.json")):
        return
    pickled = sorted(p.name for p in local.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise UserError(
            f"'{name_or_path}' holds pickled weights only ({', '.join(pickled)}), which can run code "
            "when loaded; convert them to safetensors, or set backbone.allow_pickle=true if you trust "
            "the source"
        )


def load_hf_backbone(
    family: str,
    name_or_path: str,
    image_size: int,
    revision: str = "",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> VisionBackbone:
    """Load an HF CLIP/SigLIP checkpoint with its processor; errors name the path.

    Safetensors only unless ``allow_pickle`` (a pickled ``.bin`` can execute code when loaded)."""
    from transformers import CLIPModel, SiglipModel

    model_cls = SiglipModel if family == "siglip" else CLIPModel
    kwargs = {"revision": revision} if revision else {}
    if not allow_pickle:
        _refuse_pickle(name_or_path)
        kwargs["use_safetensors"] = True
    _check_model_type(family, name_or_path, revision)
    hint = "Give a local model dir or an HF id you have access to (backbone.name_or_path)."
    with loading(f"{family} backbone from '{name_or_path}'", hint):
        model = model_cls.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
        processor = _load_processor(name_or_path, revision, trust_remote_code)
    model.eval()
    if family == "siglip":
        return HFSiglipBackbone(model, processor, image_size)
    return HFCLIPBackbone(model, processor, image_size, family=family)
