"""Diagnostics as loop hooks: measurements the loop calls at fixed points without changing training.

A hook sees each micro-batch before its forward (:meth:`LoopHook.on_micro_batch`) and adds keys
to the next logged record (:meth:`LoopHook.record`). The loop builds the hooks its spec asks for
(:func:`hooks_for`); a new diagnostic is a subclass and one line there, the loop stays as it is.
"""

from __future__ import annotations

from typing import Any

import torch


class LoopHook:
    """A diagnostic of the loop. It must leave training bit-identical (fork the RNG, use the
    unwrapped module, never touch ``.grad``)."""

    def on_micro_batch(self, loop: Any, batch: dict, micro: int, weight: float) -> None:
        """Before the forward of micro-batch ``micro`` of the step being accumulated."""

    def record(self) -> dict[str, float]:
        """Keys for the record being logged (then forgotten)."""
        return {}


class GradientConflictProbe(LoopHook):
    """Cosine between the gradients of each pair of the task's ``loss_terms`` on the trainable
    weights (``logging.grad_conflict``), on this rank's first micro-batch of a logged step. A
    separate forward with the same seed, under forked RNG and through the unwrapped module (no DDP
    hooks), so the step itself trains exactly as without it. Not under DeepSpeed (partitioned
    weights)."""

    def __init__(self):
        self.pending: dict[str, float] = {}

    def on_micro_batch(self, loop: Any, batch: dict, micro: int, weight: float) -> None:
        if micro == 0 and weight and loop.logs_next_step() and not loop.deepspeed:
            self.pending = self.measure(loop, batch, micro)

    def record(self) -> dict[str, float]:
        out, self.pending = self.pending, {}
        return out

    @staticmethod
    def measure(loop: Any, batch: dict, micro: int) -> dict[str, float]:
        seed = loop.micro_seed(micro)
        module = loop.accelerator.unwrap_model(loop.model)
        device, trainable = loop.device, loop.trainable
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            gen = torch.Generator(device=device).manual_seed(seed)
            with loop.accelerator.autocast():
                out = module(batch, gen)
            terms = out.get("loss_terms") or {}
            names = sorted(terms)
            grads = {}
            for i, name in enumerate(names):
                if not terms[name].requires_grad:  # a term that reaches no trainable weight
                    g = [None] * len(trainable)
                else:
                    g = torch.autograd.grad(
                        terms[name], trainable, retain_graph=i < len(names) - 1, allow_unused=True
                    )
                grads[name] = torch.cat(
                    [
                        (x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                        for x, p in zip(g, trainable)
                    ]
                )
        record = {}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                cos = torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0, eps=1e-12)
                record[f"grad_cos_{a}_{b}"] = float(cos)
        for name in names:
            record[f"grad_norm_{name}"] = float(grads[name].norm())
        return record


def hooks_for(spec: Any) -> list[LoopHook]:
    """The hooks a stage's spec asks for."""
    return [GradientConflictProbe()] if getattr(spec, "grad_conflict", False) else []
