"""What a non-finite loss or gradient does (``train.nonfinite``): the loop asks a policy.

A new mode is a :class:`NonFinitePolicy` subclass, listed in :data:`NONFINITE_POLICIES` and in
``sections.NonFinite``; the loop itself does not change.
"""

from __future__ import annotations

from typing import Protocol

import torch

from genhancer.runtime.errors import UserError


class Named(Protocol):
    """What a policy reads of the stage: its name, for the messages."""

    name: str


class NonFinitePolicy:
    """What a non-finite gradient norm does (``train.nonfinite``). A new mode is a subclass, listed
    in :data:`NONFINITE_POLICIES` and in ``sections.NonFinite``; the loop itself does not change."""

    def __init__(self, accelerator, spec: Named):
        self.accelerator = accelerator
        self.spec = spec
        self.nonfinite_steps = 0  # updates dropped (the ``nonfinite_steps`` metric)

    def check_engine(self, deepspeed: bool) -> None:
        """Refuse an engine the policy cannot work with (before any step)."""

    def keep_update(self, grad_norm: torch.Tensor, step: int) -> bool:
        """After clipping optimizer step ``step`` (1-based): apply the update, or drop it."""
        return True

    def check(self, step: int) -> None:
        """Before anything of step ``step`` is logged or saved: raise to stop the run."""


class StopPolicy(NonFinitePolicy):
    """Stop with a clear error, saving nothing after the last good step, with no host sync per step:
    the first bad step is remembered on the device and read only at log/checkpoint steps. The
    weights may go bad in memory meanwhile, but they are never written."""

    def __init__(self, accelerator, spec: Named):
        super().__init__(accelerator, spec)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=accelerator.device)

    def keep_update(self, grad_norm: torch.Tensor, step: int) -> bool:
        bad = ~torch.isfinite(torch.as_tensor(grad_norm, device=self.first_bad.device)).reshape(())
        self.first_bad = torch.where(
            bad & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad
        )
        return True

    def check(self, step: int) -> None:
        step_bad = int(self.accelerator.reduce(self.first_bad.clone(), reduction="max").item())
        if step_bad > 0:
            raise UserError(
                f"{self.spec.name}: non-finite loss or gradient at step {step_bad}; stopped at step "
                f"{step} before anything after step {step_bad - 1} was logged or saved. Lower "
                "the LR, or set train.nonfinite=skip to skip such batches"
            )


class SkipPolicy(NonFinitePolicy):
    """Drop the update and count it; the data position keeps moving. One host sync per step."""

    def check_engine(self, deepspeed: bool) -> None:
        if deepspeed:
            raise UserError(
                "train.nonfinite=skip cannot drop an update under DeepSpeed (the engine steps inside "
                "backward); use train.nonfinite=stop"
            )

    def keep_update(self, grad_norm: torch.Tensor, step: int) -> bool:
        if bool(torch.isfinite(grad_norm)):  # the sync, by choice
            return True
        self.nonfinite_steps += 1
        return False


NONFINITE_POLICIES: dict[str, type[NonFinitePolicy]] = {"stop": StopPolicy, "skip": SkipPolicy}
