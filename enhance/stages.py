"""Which parameters train in each stage (paper Alg. 1).

* Stage 1: tower frozen; projector + denoiser train.
* Stage 2: LoRA on the tower (``stage2.lora_targets``) and the biases ``stage2.lora_bias``
  names; ``stage2_all`` also trains projector + denoiser, ``stage2_only`` freezes them. ``train.one_stage`` (ablation) is stage 2 started from a random denoiser.
The VAE is frozen throughout.
"""

from __future__ import annotations

import torch
from torch import nn

from enhance.methods import get_method
from enhance.model import GenHancerModel
from genhancer.runtime.errors import UserError


def lora_targets(backbone, cfg) -> str | list[str]:
    """peft ``target_modules`` for ``stage2.lora_targets`` (narrowed by ``lora_target_modules``)."""
    names = list(cfg.stage2.lora_target_modules)
    if cfg.stage2.lora_targets == "encoder":
        return backbone.lora_target_regex(names or list(backbone.default_lora_targets))
    targets = backbone.all_linear_targets(names)
    if not targets:
        raise UserError(
            f"stage2.lora_target_modules={names} matches no linear layer of the image side "
            f"(stage2.lora_targets={cfg.stage2.lora_targets})"
        )
    return targets


def add_lora(model: GenHancerModel, cfg) -> None:
    """Wrap the dual encoder with peft LoRA on the image side (r 16, alpha 16, dropout 0.1).

    Biases are not handed to peft (its ``bias="all"`` would reach the text tower): which of them
    train is decided in :func:`configure_stage` from ``stage2.lora_bias``."""
    from peft import LoraConfig, get_peft_model

    backbone = model.backbone
    lora_cfg = LoraConfig(
        r=cfg.stage2.lora_r,
        lora_alpha=cfg.stage2.lora_alpha,
        lora_dropout=cfg.stage2.lora_dropout,
        target_modules=lora_targets(backbone, cfg),
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
    """Fold LoRA into the tower weights (before export); trained biases already live in them."""
    if has_lora(model):
        model.backbone.model = model.backbone.model.merge_and_unload()


def tower_bias_names(backbone, mode: str) -> list[str]:
    """Names (in ``backbone``) of the tower biases that train under ``stage2.lora_bias=mode``:
    none; those of the LoRA-adapted layers (``lora_only``, as peft's mode of that name); or every
    bias of the image side (``all``). Never a text-tower bias."""
    if mode == "none":
        return []
    from peft.tuners.lora import LoraLayer

    if mode == "lora_only":
        out = []
        for name, module in backbone.named_modules():
            if isinstance(module, LoraLayer) and backbone.is_vision_side(name.removeprefix("model.")):
                base = module.get_base_layer()
                out += [f"{name}.base_layer.{n}" for n, _ in base.named_parameters() if n.endswith("bias")]
        return sorted(set(out))  # a wrapped MultiheadAttention also lists its wrapped out_proj
    return sorted(
        n
        for n, _ in backbone.named_parameters()
        if n.rpartition(".")[2].endswith("bias")
        and "lora_" not in n
        and backbone.is_vision_side(n.removeprefix("model."))
    )


def configure_stage(model: GenHancerModel, stage: int, cfg) -> list[nn.Parameter]:
    """Set ``requires_grad`` for ``stage`` as the method's plan says (``method.trains``: parts among
    projector, denoiser, lora, tower), adding LoRA when needed; return the trainable params."""
    parts = get_method(cfg.method.name).trains(stage, cfg)
    model.requires_grad_(False)
    model.trained_tower_biases = []
    model.trained_tower_params = []
    if "lora" in parts:
        if not has_lora(model):
            add_lora(model, cfg)
        biases = tower_bias_names(model.backbone, cfg.stage2.lora_bias)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_("lora_" in name or name in biases)
        model.trained_tower_biases = [f"backbone.{n}" for n in biases]
    if "tower" in parts:  # full fine-tuning of the image side (DIVA); the text tower stays frozen
        names = [
            n
            for n, _ in model.backbone.named_parameters()
            if model.backbone.is_vision_side(n.removeprefix("model."))
        ]
        chosen = set(names)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(name in chosen)
        model.trained_tower_params = [f"backbone.{n}" for n in names]
    if "projector" in parts:
        model.projector.requires_grad_(True)
    if "denoiser" in parts:
        model.denoiser.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def trainable_counts(model: GenHancerModel) -> dict[str, int]:
    """Trainable parameters by part: ``lora``, ``tower_bias``, ``tower`` (full tuning), ``projector``,
    ``denoiser``."""
    counts = {"lora": 0, "tower_bias": 0, "tower": 0, "projector": 0, "denoiser": 0}
    biases = set(getattr(model, "trained_tower_biases", ()))
    full = set(getattr(model, "trained_tower_params", ()))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_" in name:
            counts["lora"] += p.numel()
        elif name in biases:
            counts["tower_bias"] += p.numel()
        elif name in full:
            counts["tower"] += p.numel()
        elif name.split(".", 1)[0] in counts:
            counts[name.split(".", 1)[0]] += p.numel()
    return counts


def checkpoint_state(model: GenHancerModel) -> dict[str, torch.Tensor]:
    """Everything a resume needs that is not the (frozen, reloadable) base tower or VAE:
    projector, denoiser, LoRA weights and the tower biases stage 2 trains, keyed by their names
    in ``model``."""
    state = {}
    biases = set(getattr(model, "trained_tower_biases", ()))  # stage2.lora_bias (see configure_stage)
    biases |= set(getattr(model, "trained_tower_params", ()))  # stage2.tower_tuning=full
    prefixes = getattr(model, "checkpoint_prefixes", ("projector.", "denoiser."))
    for name, tensor in model.state_dict().items():
        if name.startswith(prefixes) or "lora_" in name or name in biases:
            state[name] = tensor.detach().cpu().contiguous()
    return state


def load_checkpoint_state(
    model: GenHancerModel, state: dict[str, torch.Tensor], partial: bool = False
) -> None:
    """Load :func:`checkpoint_state` back. ``partial``: an earlier stage's checkpoint, which lacks
    what this stage added (stage 2's LoRA and tower biases) but nothing else."""
    missing = set(checkpoint_state(model)) - set(state)
    if partial:
        missing = {k for k in missing if not k.startswith("backbone.")}
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    model.load_state_dict(state, strict=False)
