"""The optimiser and its learning-rate schedule, built the same way for every training command.

A stage's section (``sections.OptimSection`` and the commands' subclasses) names the optimiser
settings; :func:`build_optimizer` makes AdamW (or DIVA's SGD), :func:`lr_schedule` the LR
multiplier as a pure function of the step (constant or cosine, warmup given in steps or as a
ratio of the stage), :func:`prepare` hands both to the accelerator (telling DeepSpeed what it
cannot infer), and :func:`grad_accum_steps` splits the global batch over the processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch

from genhancer.runtime.deepspeed_compat import (
    allow_scalar_parameter_broadcast,
    is_deepspeed,
    offloads_optimizer,
)
from genhancer.runtime.errors import UserError

Schedule = Literal["constant", "cosine"]


def lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    """Constant LR after an optional linear warmup: a pure function of the step."""

    def f(step: int) -> float:
        if warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / warmup_steps)

    return f


def cosine_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 0 at ``total_steps`` (LLaVA); a pure function of the step."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def lr_schedule(
    kind: Schedule, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0
) -> Callable[[int], float]:
    """The LR multiplier of a stage of ``total_steps``: ``constant`` or ``cosine`` after a linear
    warmup of ``warmup_steps``, or of ``ceil(warmup_ratio * total_steps)`` (LLaVA's 3 %)."""
    if warmup_steps and warmup_ratio:
        raise UserError("give the warmup in steps or as a ratio, not both")
    warmup = warmup_steps or math.ceil(warmup_ratio * total_steps)
    if kind == "cosine":
        return cosine_lambda(warmup, total_steps)
    if kind == "constant":
        return lr_lambda(warmup)
    raise UserError(f"unknown LR schedule {kind!r}; valid: constant, cosine")


def grad_accum_steps(name: str, global_batch: int, per_device: int, world: int) -> int:
    """Micro-batches per optimizer step, or a clear error when the global batch does not split."""
    per_step = per_device * world
    if global_batch % per_step:
        raise UserError(
            f"{name}.global_batch_size {global_batch} is not a multiple of per-device batch "
            f"{per_device} x {world} processes"
        )
    return global_batch // per_step


def build_optimizer(accelerator, params, section: Any) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA unless DeepSpeed steps it on offloaded CPU copies), or SGD with momentum
    when ``section.optimizer`` says so (DIVA's official optimiser). ``section`` supplies ``lr``,
    ``betas`` (or ``momentum``) and ``weight_decay``."""
    if getattr(section, "optimizer", "adamw") == "sgd":
        return torch.optim.SGD(
            params, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay
        )
    return torch.optim.AdamW(
        params,
        lr=section.lr,
        betas=tuple(section.betas),
        weight_decay=section.weight_decay,
        fused=accelerator.device.type == "cuda" and not offloads_optimizer(accelerator),
    )


def configure_engine(accelerator, section: Any) -> None:
    """Under DeepSpeed, the settings it cannot infer for this stage (a no-op elsewhere). No
    dataloader goes through ``prepare`` (each rank streams its own data), so its batch sizes come
    from ``section``; the loop accumulates and tells the engine where a step ends, so the engine's
    own accumulation is 1; the engine clips (``clip_grad_norm_`` then only reads the norm)."""
    if not is_deepspeed(accelerator):
        return
    allow_scalar_parameter_broadcast()  # CLIP's 0-dim logit_scale (see deepspeed_compat)
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["gradient_accumulation_steps"] = 1
    ds["train_micro_batch_size_per_gpu"] = section.per_device_batch_size
    ds["train_batch_size"] = section.per_device_batch_size * accelerator.num_processes
    ds["gradient_clipping"] = section.grad_clip
    if offloads_optimizer(accelerator):
        # ZeRO-Offload steps our AdamW on the CPU copies of the partitions (DeepSpeed refuses a
        # client optimizer there unless told; its own CPU Adam needs a compiled extension)
        ds["zero_force_ds_cpu_optimizer"] = False


def prepare(accelerator, module: torch.nn.Module, params, section: Any, lr_fn: Callable[[int], float]):
    """``(prepared module, optimizer, scheduler)`` of one stage: :func:`build_optimizer` over
    ``params``, a ``LambdaLR`` of ``lr_fn``, the engine configured and both prepared."""
    optimizer = build_optimizer(accelerator, params, section)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_fn)
    configure_engine(accelerator, section)
    prepared, optimizer = accelerator.prepare(module, optimizer)
    return prepared, optimizer, scheduler
