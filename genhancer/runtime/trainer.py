"""The one training loop (accumulate, clip, step, log, checkpoint, stop on a scheduler's signal).

Stages plug in through :class:`LoopTask`: a module with ``training_forward(batch, generator)``
and the weights a checkpoint must hold. Randomness is a pure function of
``(seed, stage, step, micro-step, rank)`` (of the global micro-batch instead, when the stream has
the elastic layout) and the data stream resumes from a stored position, so a resumed run restores
a step instead of replaying history. The loop's components live beside it: the optimiser and LR
schedule (:mod:`~genhancer.runtime.optim`), metrics (:mod:`~genhancer.runtime.metrics`), the
non-finite policies (:mod:`~genhancer.runtime.nonfinite`), diagnostics as hooks
(:mod:`~genhancer.runtime.hooks`), checkpoint save/restore (:mod:`~genhancer.runtime.checkpoint`)
and preemption (:mod:`~genhancer.runtime.preempt`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime import optim
from genhancer.runtime.deepspeed_compat import is_deepspeed
from genhancer.runtime.errors import UserError
from genhancer.runtime.hooks import LoopHook, hooks_for
from genhancer.runtime.metrics import LogWindow, MetricsWriter
from genhancer.runtime.nonfinite import NONFINITE_POLICIES
from genhancer.runtime.preempt import Preempted, PreemptionWatch
from genhancer.runtime.resume import stream_start
from genhancer.runtime.sections import NonFinite
from genhancer.runtime.seeding import derive_seed


class LoopTask(Protocol):
    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]: ...


def batch_size(batch: dict) -> int:
    """Samples in a micro-batch: ``num_samples`` when the task counts them (text-only samples
    carry no image), else the number of images."""
    if "num_samples" in batch:
        return int(batch["num_samples"])
    return int(batch["pixel_values"].shape[0])


@dataclass
class LoopSpec:
    """How long and how one stage trains."""

    name: str  # "stage1", "stage2", "pretrain", ...
    index: int  # orders checkpoints across stages
    steps: int
    grad_accum: int
    grad_clip: float
    seed: int
    log_every: int
    checkpoint_every: int
    keep_last: int
    config_hash: str
    progress: bool = True
    max_skip_fraction: float = 0.5
    nonfinite: NonFinite = "stop"  # which NonFinitePolicy runs (see NONFINITE_POLICIES)
    grad_conflict: bool = False  # log the cosine between the gradients of the task's loss_terms
    extra_state: dict[str, Any] = field(default_factory=dict)  # in every record and checkpoint
    # The stream's layout maps positions across world sizes (see resume.stream_start); randomness
    # is then keyed by the global micro-batch, not by (micro-step, rank); micro_batch: its samples.
    elastic: bool = False
    micro_batch: int = 0

    @classmethod
    def for_stage(
        cls, cfg: Any, name: str, index: int, steps: int, grad_accum: int, grad_clip: float, config_hash: str
    ) -> LoopSpec:
        """The spec of one stage of a command whose config has the shared ``train``, ``logging``
        and ``checkpoint`` sections (:mod:`genhancer.runtime.sections`)."""
        return cls(
            name=name,
            index=index,
            steps=steps,
            grad_accum=grad_accum,
            grad_clip=grad_clip,
            seed=cfg.train.seed,
            log_every=cfg.logging.every,
            checkpoint_every=cfg.checkpoint.every,
            keep_last=cfg.checkpoint.keep_last,
            config_hash=config_hash,
            progress=cfg.logging.progress,
            max_skip_fraction=cfg.train.max_skip_fraction,
            nonfinite=cfg.train.nonfinite,
            grad_conflict=bool(getattr(cfg.logging, "grad_conflict", False)),
        )


@dataclass
class LoopState:
    step: int = 0
    positions: list[int] = field(default_factory=list)  # data position per rank
    skipped: int = 0
    seen: int = 0
    world: int = 0  # processes that wrote ``positions`` (0: this run's)


# --- the loop ---------------------------------------------------------------------------------


class Loop:
    """One stage's optimizer steps, made of parts: :meth:`next_micro_batch`, :meth:`forward_backward`,
    :meth:`accumulate`, :meth:`optimizer_step` (clipping and the non-finite policy), :meth:`log` and
    :meth:`checkpoint`. A variant overrides one part rather than copying the loop.

    ``batches(start_position)`` yields micro-batches for this rank; each item dict carries
    ``position`` (data position after it), ``skipped`` (unreadable images in it) and optionally
    ``num_samples`` (see :func:`batch_size`). ``on_checkpoint(step)`` runs after each checkpoint and
    ``on_step(step)`` after every optimizer step (and its checkpoint), both on the main process."""

    def __init__(
        self,
        accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        batches: Callable[[int], Iterator[dict]],
        spec: LoopSpec,
        run_dir: Path,
        metrics: MetricsWriter,
        checkpoint_weights: Callable[[], dict[str, torch.Tensor]],
        start: LoopState,
        on_checkpoint: Callable[[int], None] | None = None,
        protect: set[str] | None = None,
        on_step: Callable[[int], None] | None = None,
        preempt: PreemptionWatch | None = None,
        hooks: list[LoopHook] | None = None,
    ):
        self.accelerator, self.model, self.optimizer, self.scheduler = (
            accelerator,
            model,
            optimizer,
            scheduler,
        )
        self.spec, self.metrics, self.checkpoint_weights = spec, metrics, checkpoint_weights
        self.on_checkpoint, self.on_step = on_checkpoint, on_step
        self.preempt = preempt
        self.ckpt_root = run_dir / "checkpoints"
        self.protect = protect if protect is not None else set()
        self.rank = accelerator.process_index
        self.device = accelerator.device
        self.multi = accelerator.num_processes > 1
        self.deepspeed = is_deepspeed(accelerator)
        self.world = accelerator.num_processes
        self.state = LoopState(
            step=start.step, positions=list(start.positions), skipped=start.skipped, seen=start.seen
        )
        my_start = stream_start(
            start.positions,
            start.world or self.world,
            self.rank,
            self.world,
            spec.elastic,
            spec.micro_batch,
            what=f"{spec.name} checkpoint at step {start.step}",
        )
        self.stream = batches(my_start)
        self.last_position = my_start
        self.last_skipped = self.state.skipped if not self.multi else 0
        self.replay: dict | None = None  # last real micro-batch (multi-process only)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.policy = NONFINITE_POLICIES[spec.nonfinite](accelerator, spec)
        self.policy.check_engine(self.deepspeed)
        self.window = LogWindow(self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.hooks = hooks if hooks is not None else hooks_for(spec)  # diagnostics (see hooks.py)
        self.pbar = None

    def run(self) -> LoopState:
        """Train ``spec.steps`` optimizer steps from ``start`` and return the final state."""
        spec, state = self.spec, self.state
        if spec.progress and self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            self.pbar = tqdm(total=spec.steps, initial=state.step, desc=spec.name, dynamic_ncols=True)
        self.window.reset()
        self.model.train()
        while state.step < spec.steps:
            self.optimizer_step(*self.accumulate())
            state.step += 1
            if self.pbar is not None:
                self.pbar.update(1)
            end = state.step == spec.steps
            # a scheduler's signal (every rank agrees on the step): log, checkpoint, then stop
            stop = self.preempt is not None and self.preempt.should_stop()
            log_now = state.step % spec.log_every == 0 or end or stop
            save_now = state.step % spec.checkpoint_every == 0 or end or stop
            if log_now or save_now:
                self.policy.check(state.step)
            if log_now:
                self.log()
            if save_now:
                self.checkpoint(end)
            if self.on_step is not None and self.accelerator.is_main_process:
                self.on_step(state.step)
            if stop:
                if self.pbar is not None:
                    self.pbar.close()
                name = ckpt.checkpoint_name(spec.name, state.step)
                raise Preempted(spec.name, state.step, name, self.preempt.signal_name)
        if self.pbar is not None:
            self.pbar.close()
        return state

    def micro_seed(self, micro: int) -> int:
        """The seed of one micro-batch's draws: ``(seed, stage, step, micro-step, rank)``, or with an
        elastic stream ``(seed, stage, step, global micro-batch, 0)``, the same on any world size
        (and the same as ``(micro-step, 0)`` on one process)."""
        spec = self.spec
        if spec.elastic:
            return derive_seed(spec.seed, spec.index, self.state.step, micro * self.world + self.rank, 0)
        return derive_seed(spec.seed, spec.index, self.state.step, micro, self.rank)

    def next_micro_batch(self) -> tuple[dict, float, int] | None:
        """``(batch on the device, loss weight, samples)``, or None for a micro-batch to drop."""
        try:
            batch = next(self.stream)
        except StopIteration:
            raise UserError(
                f"{self.spec.name}: the data ran out at step {self.state.step}; check data.path"
            ) from None
        self.last_position = int(batch["position"])
        self.last_skipped += int(batch["skipped"])
        n_samples = batch_size(batch)
        weight = 1.0
        if n_samples == 0:  # every sample of this micro-batch was unreadable (counted above)
            if not self.multi or self.replay is None:
                return None
            # The other ranks run this micro-batch's collectives (DDP all-reduce, ZeRO gathers):
            # join them with a zero-weight pass over this rank's last real micro-batch.
            batch, weight = self.replay, 0.0
        batch = {
            k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
        }
        if weight and self.multi:
            self.replay = batch
        return batch, weight, n_samples

    def forward_backward(self, batch: dict, weight: float, micro: int) -> dict[str, torch.Tensor]:
        """One micro-batch's loss and its scaled backward; randomness is a pure function of
        ``(seed, stage, step, micro-step, rank)``."""
        spec, accelerator = self.spec, self.accelerator
        seed = self.micro_seed(micro)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        torch.manual_seed(seed)  # dropout (LoRA) draws from the global RNG
        # Gradients are all-reduced only on the last micro-batch of the accumulation.
        sync = micro == spec.grad_accum - 1
        if self.deepspeed:  # accelerator.backward steps the engine whenever sync_gradients is set
            accelerator.sync_gradients = sync
        no_sync = contextlib.nullcontext() if sync else accelerator.no_sync(self.model)
        with no_sync, accelerator.autocast():
            out = self.model(batch, gen)  # through the DDP/DeepSpeed wrapper: its hooks sync gradients
            accelerator.backward(out["loss"] * weight / spec.grad_accum)
        return out

    def accumulate(self) -> tuple[torch.Tensor, int]:
        """Gradients of one optimizer step; returns (summed loss, micro-batches that counted)."""
        step_loss = torch.zeros((), device=self.device)
        count = 0
        for micro in range(self.spec.grad_accum):
            got = self.next_micro_batch()
            if got is None:
                continue
            batch, weight, n_samples = got
            for hook in self.hooks:
                hook.on_micro_batch(self, batch, micro, weight)
            out = self.forward_backward(batch, weight, micro)
            if not weight:
                continue
            step_loss += out["loss"].detach().float()
            count += 1
            self.window.add_extras(out)
            self.window.images += n_samples
        return step_loss, count

    def logs_next_step(self) -> bool:
        """The step being accumulated will be logged."""
        step = self.state.step + 1
        return step % self.spec.log_every == 0 or step == self.spec.steps

    def optimizer_step(self, step_loss: torch.Tensor, count: int) -> None:
        """Clip, ask the non-finite policy, then step (or drop the update)."""
        # The norm is needed for clipping and for the finiteness check (inf: measure only).
        clip = self.spec.grad_clip if self.spec.grad_clip > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.trainable, clip)
        if grad_norm is None:  # DeepSpeed before its first engine step (every micro-batch so far was empty)
            grad_norm = torch.zeros((), device=self.device)
        if self.policy.keep_update(grad_norm, self.state.step + 1):
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.window.loss_sum += step_loss
            self.window.loss_count += count
        else:
            self.optimizer.zero_grad(set_to_none=True)
            grad_norm = torch.zeros((), device=self.device)
        self.grad_norm = grad_norm

    def log(self) -> None:
        """Reduce the window's sums over ranks (one sync per log), write the record, and stop when
        too many images were unreadable."""
        accelerator, spec, w, device = self.accelerator, self.spec, self.window, self.device
        stats = torch.stack(
            [
                w.loss_sum,
                torch.tensor(float(w.loss_count), device=device),
                torch.tensor(float(w.images), device=device),
                torch.tensor(float(self.last_skipped), device=device),
                torch.tensor(float(self.last_position), device=device),
                torch.as_tensor(self.grad_norm, device=device).float(),
            ]
        )
        total = accelerator.reduce(stats.clone(), reduction="sum")
        mean_loss = (total[0] / total[1].clamp_min(1)).item()
        if not math.isfinite(mean_loss):
            raise UserError(f"{spec.name}: loss became {mean_loss} at step {self.state.step}; lower the LR")
        elapsed = time.perf_counter() - w.t0
        skipped = int(total[3].item())
        consumed = int(total[4].item())
        record = {
            "stage": spec.name,
            "step": self.state.step,
            "loss": mean_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": total[2].item() / max(elapsed, 1e-9),
            "grad_norm": total[5].item() / accelerator.num_processes,
            "skipped_images": skipped,
            "nonfinite_steps": self.policy.nonfinite_steps,
            **spec.extra_state,
        }
        for hook in self.hooks:
            record.update(hook.record())
        for key, value in sorted(w.extra_sums.items()):
            summed = accelerator.reduce(value.clone(), reduction="sum")
            record[key] = (summed / total[1].clamp_min(1)).item()
        if accelerator.is_main_process:
            self.metrics.write(record)
        if self.pbar is not None:
            self.pbar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{record['images_per_s']:.1f}")
        if consumed > 0 and skipped / consumed > spec.max_skip_fraction:
            raise UserError(
                f"{spec.name}: {skipped} of {consumed} images were unreadable (> train.max_skip_fraction); "
                "check data.path"
            )
        w.reset()

    def checkpoint(self, final: bool) -> None:
        """Gather the data positions and skip counts of every rank, then :func:`save` (collective)."""
        accelerator, state, device = self.accelerator, self.state, self.device
        positions = accelerator.gather(torch.tensor([self.last_position], device=device)).tolist()
        state.positions = [int(p) for p in positions]
        state.skipped = int(accelerator.reduce(torch.tensor(self.last_skipped, device=device), "sum").item())
        spec = self.spec
        meta = ckpt.CheckpointMeta(
            stage=spec.name,
            stage_index=spec.index,
            step=state.step,
            final=final,
            positions=list(state.positions),
            skipped=state.skipped,
            world_size=accelerator.num_processes,
            elastic=spec.elastic,
            scheduler=self.scheduler.state_dict(),
            config_hash=spec.config_hash,
            extra=dict(spec.extra_state),
        )
        ckpt.save_training_state(
            accelerator,
            self.model,
            self.optimizer,
            meta,
            self.ckpt_root,
            self.checkpoint_weights,
            spec.keep_last,
            self.protect,
        )
        if self.on_checkpoint is not None and accelerator.is_main_process:
            self.on_checkpoint(state.step)


def start_stage(
    accelerator,
    module: torch.nn.Module,
    params,
    stage_cfg: Any,
    lr_fn: Callable[[int], float],
    resume_from: Path | None = None,
    load_weights: Callable[[dict[str, torch.Tensor]], None] | None = None,
    elastic: bool = False,
):
    """The stage's optimizer and schedule prepared with ``module`` (:func:`genhancer.runtime.optim.prepare`)
    and the loop state: fresh, or restored from ``resume_from`` (on another number of processes too
    when the stage's stream is ``elastic``). Returns ``(prepared, optimizer, scheduler, start)``."""
    prepared, optimizer, scheduler = optim.prepare(accelerator, module, params, stage_cfg, lr_fn)
    start = LoopState(positions=[0] * accelerator.num_processes)
    if resume_from is not None:
        meta = ckpt.restore_training_state(
            accelerator, prepared, optimizer, scheduler, resume_from, load_weights, elastic
        )
        start = LoopState(
            step=meta.step, positions=list(meta.positions), skipped=meta.skipped, world=meta.world_size
        )
    return prepared, optimizer, scheduler, start
