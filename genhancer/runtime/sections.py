"""Config sections every training command shares, composed into each command's tree.

The YAML keys stay where users write them (``stage1.lr``, ``train.seed``, ``checkpoint.every``):
a command's stage section subclasses :class:`OptimSection`, its ``train`` section subclasses
:class:`TrainSection`, and so on, overriding only the defaults that differ (with their own doc, or
with :func:`~genhancer.runtime.configtools.override` where the text stays the same).
Each enum is a ``Literal`` written once here or beside its section; ``configtools`` checks the
value and names the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from genhancer.runtime.configtools import doc
from genhancer.runtime.errors import UserError

NonFinite = Literal["stop", "skip"]
MixedPrecision = Literal["no", "bf16", "fp16"]

NONFINITE_MODES: tuple[str, ...] = get_args(NonFinite)


LrSchedule = Literal["constant", "cosine"]


@dataclass
class OptimSection:
    """One stage's optimiser and batch settings (AdamW, global batch split into micro-batches)."""

    lr: float = doc(1e-4, "learning rate")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    betas: list[float] = doc([0.9, 0.999], "AdamW betas")
    global_batch_size: int = doc(256, "samples per optimizer step over all processes")
    per_device_batch_size: int = doc(16, "samples per forward; accumulation fills the global batch")
    grad_clip: float = doc(1.0, "max grad norm (0 disables)")
    lr_schedule: LrSchedule = doc(
        "constant", "constant (after warmup) | cosine decay to 0 at the stage's end"
    )
    warmup_steps: int = doc(0, "linear warmup in optimizer steps (give this or warmup_ratio)")
    warmup_ratio: float = doc(0.0, "linear warmup as a fraction of the stage's steps (or warmup_steps)")

    def check_schedule(self, name: str) -> None:
        """One warmup, in steps or as a ratio (the builder is :func:`genhancer.runtime.optim.lr_schedule`)."""
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"{name}: warmup_steps must be >= 0 and warmup_ratio in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise UserError(f"{name}: give warmup_steps or warmup_ratio, not both")

    def check_batches(self, name: str) -> None:
        """Batch sizes that split evenly (the world size is checked once the processes exist)."""
        if self.global_batch_size < 1 or self.per_device_batch_size < 1:
            raise UserError(f"{name}: batch sizes must be >= 1")
        if self.global_batch_size % self.per_device_batch_size:
            raise UserError(
                f"{name}.global_batch_size {self.global_batch_size} must be a multiple of "
                f"{name}.per_device_batch_size {self.per_device_batch_size}"
            )


@dataclass
class TrainSection:
    """Run-wide training settings; a command adds its stage list and its own switches."""

    seed: int = doc(0, "seed for initialisation, data order, noise, timesteps and dropout")
    mixed_precision: MixedPrecision = doc("bf16", "no | bf16 | fp16 (CPU runs fall back to no)")
    max_skip_fraction: float = doc(0.5, "stop when more than this fraction of images were unreadable")
    nonfinite: NonFinite = doc(
        "stop",
        "non-finite loss/gradient: stop (clear error at the next log/checkpoint step, nothing after it "
        "saved; no per-step host sync) | skip (drop the update, count it; one host sync per step; not "
        "under DeepSpeed)",
    )


@dataclass
class CheckpointSection:
    every: int = doc(1000, "save every N optimizer steps (and always at the end of a stage)")
    keep_last: int = doc(2, "complete checkpoints to keep")


@dataclass
class LoggingSection:
    every: int = doc(10, "log metrics every N optimizer steps (no host sync in between)")
    tensorboard: bool = doc(False, "also write TensorBoard events to DIR/tensorboard")
    progress: bool = doc(True, "tqdm progress bar")


def check_common(checkpoint: CheckpointSection, logging: LoggingSection) -> None:
    """The intervals and retention every command needs to be positive."""
    if checkpoint.every < 1 or logging.every < 1 or checkpoint.keep_last < 1:
        raise UserError("checkpoint.every, checkpoint.keep_last and logging.every must be >= 1")
