"""Which parameters train in each stage (paper Alg. 1).

* Stage 1: tower frozen; projector + denoiser train.
* Stage 2: LoRA on the tower; ``stage2_all`` also trains projector + denoiser, ``stage2_only``
  freezes them. ``train.one_stage`` (ablation) is stage 2 started from a random denoiser.
The VAE is frozen throughout.
"""

from __future__ import annotations

import torch
from torch import nn

from enhance.model import GenHancerModel


def add_lora(model: GenHancerModel, cfg) -> None:
    """Wrap the dual encoder with peft LoRA on the image side (r 16, alpha 16, dropout 0.1)."""
    from peft import LoraConfig, get_peft_model

    backbone = model.backbone
    names = list(cfg.stage2.lora_target_modules) or list(backbone.default_lora_targets)
    lora_cfg = LoraConfig(
        r=cfg.stage2.lora_r,
        lora_alpha=cfg.stage2.lora_alpha,
        lora_dropout=cfg.stage2.lora_dropout,
        target_modules=backbone.lora_target_regex(names),
        bias="none",
    )
    # LoRA A is drawn from its own seeded stream: a run resumed at the stage boundary must start
    # stage 2 from the same adapter as an uninterrupted one, whatever the global RNG went through.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed + 2)
        backbone.model = get_peft_model(backbone.model, lora_cfg)


def has_lora(model: GenHancerModel) -> bool:
    return any("lora_" in n for n, _ in model.backbone.named_parameters())


def merge_lora(model: GenHancerModel) -> None:
    """Fold LoRA into the tower weights (before export)."""
    if has_lora(model):
        model.backbone.model = model.backbone.model.merge_and_unload()


def configure_stage(model: GenHancerModel, stage: int, cfg) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``stage`` (adding LoRA when needed); return the trainable params."""
    model.requires_grad_(False)
    if stage == 1:
        model.projector.requires_grad_(True)
        model.denoiser.requires_grad_(True)
    else:
        if not has_lora(model):
            add_lora(model, cfg)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        if cfg.stage2.variant == "stage2_all" or cfg.train.one_stage:
            model.projector.requires_grad_(True)
            model.denoiser.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def checkpoint_state(model: GenHancerModel) -> dict[str, torch.Tensor]:
    """Everything a resume needs that is not the (frozen, reloadable) base tower or VAE:
    projector, denoiser and LoRA weights, keyed by their names in ``model``."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(("projector.", "denoiser.")) or "lora_" in name:
            state[name] = tensor.detach().cpu().contiguous()
    return state


def load_checkpoint_state(model: GenHancerModel, state: dict[str, torch.Tensor]) -> None:
    missing = set(checkpoint_state(model)) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    model.load_state_dict(state, strict=False)
