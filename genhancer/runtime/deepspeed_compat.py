"""Work-arounds for DeepSpeed behaviour that breaks our models, applied only under DeepSpeed, and
the questions the runtime asks about the engine (:func:`is_deepspeed`, :func:`offloads_optimizer`).

DeepSpeed (checked: 0.19.8) broadcasts every parameter from rank 0 at engine start as
``p.data.view(torch.uint8)``; torch refuses that dtype view for a 0-dim tensor on any device, and
the CLIP/SigLIP dual encoders we train inside (``logit_scale``, ``logit_bias``) hold 0-dim
parameters, so ``accelerator.prepare`` fails before the first step. The wrapper below gives those
parameters a 1-element shape for the duration of the broadcast only (same storage, so the
broadcast value lands in the real parameter) and restores the 0-dim shape afterwards.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("enhance")

_PATCHED = "_genhancer_scalar_broadcast"


def allow_scalar_parameter_broadcast() -> None:
    """Wrap ``DeepSpeedEngine._broadcast_model`` once per process (idempotent)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = getattr(DeepSpeedEngine, "_broadcast_model", None)
    if original is None or getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def broadcast_model(self, *args, **kwargs):
        scalars = [p for p in self.module.parameters() if p.dim() == 0 and not hasattr(p, "ds_id")]
        for p in scalars:
            p.data = p.data.reshape(1)
        try:
            return original(self, *args, **kwargs)
        finally:
            for p in scalars:
                p.data = p.data.reshape(())

    setattr(broadcast_model, _PATCHED, True)
    DeepSpeedEngine._broadcast_model = broadcast_model
    log.debug("DeepSpeed: 0-dim parameters are broadcast as 1-element tensors")


def is_deepspeed(accelerator) -> bool:
    """The engine is DeepSpeed: it steps, clips and checkpoints itself (see trainer.Loop, checkpoint)."""
    return accelerator.distributed_type.value == "DEEPSPEED"


def offloads_optimizer(accelerator) -> bool:
    """DeepSpeed keeps the optimizer state in CPU memory (``offload_optimizer_device: cpu``)."""
    if not is_deepspeed(accelerator):
        return False
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
