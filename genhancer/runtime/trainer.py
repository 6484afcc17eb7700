"""The one training loop (accumulate, clip, step, log, checkpoint, preview).

Stages plug in through :class:`LoopTask`: a module with ``training_forward(batch, generator)``
and the weights a checkpoint must hold. Randomness is a pure function of
``(seed, stage, step, micro-step, rank)`` and the data stream resumes from a stored position,
so a resumed run restores a step instead of replaying history.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.errors import UserError
from genhancer.runtime.preempt import Preempted, PreemptionWatch
from genhancer.runtime.resume import stream_start
from genhancer.runtime.sections import NonFinite
from genhancer.runtime.seeding import derive_seed


class LoopTask(Protocol):
    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]: ...


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


def is_deepspeed(accelerator) -> bool:
    """The engine is DeepSpeed: it steps, clips and checkpoints itself (see Loop, save, restore)."""
    return accelerator.distributed_type.value == "DEEPSPEED"


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


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step) and optional TensorBoard, main process only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError as exc:
                raise UserError(
                    "logging.tensorboard=true needs `pip install genhancer[tensorboard]`"
                ) from exc

    def rewind(self, keep: Callable[[dict], bool]) -> None:
        """On resume, drop records the checkpoint does not cover (a crash between logging a step and
        committing its checkpoint would otherwise log it twice) and any half-written last line."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if keep(record):
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(f"{record.get('stage', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def checkpoint_name(spec: LoopSpec, step: int) -> str:
    return f"{spec.name}_step{step:07d}"


# --- non-finite policies ----------------------------------------------------------------------


class NonFinitePolicy:
    """What a non-finite gradient norm does (``train.nonfinite``). A new mode is a subclass, listed
    in :data:`NONFINITE_POLICIES` and in ``sections.NonFinite``; the loop itself does not change."""

    def __init__(self, accelerator, spec: LoopSpec):
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

    def __init__(self, accelerator, spec: LoopSpec):
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


# --- the loop ---------------------------------------------------------------------------------


class LogWindow:
    """Sums since the last logged step, kept on the device (no host sync until the log)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.loss_count = 0
        self.images = 0
        self.extra_sums: dict[str, torch.Tensor] = {}
        self.t0 = time.perf_counter()

    def add_extras(self, out: dict[str, torch.Tensor]) -> None:
        """Extra scalars a task reports beside the loss (e.g. masked_acc)."""
        for key, value in out.items():
            if key not in ("loss", "loss_terms"):
                self.extra_sums[key] = self.extra_sums.get(key, 0.0) + value.detach().float()


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
        self.conflict: dict[str, float] = {}  # gradient_conflict of the step being logged
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
                name = checkpoint_name(spec, state.step)
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
            if micro == 0 and weight and self.spec.grad_conflict and self._logs_next_step():
                self.conflict = self.gradient_conflict(batch, micro)
            out = self.forward_backward(batch, weight, micro)
            if not weight:
                continue
            step_loss += out["loss"].detach().float()
            count += 1
            self.window.add_extras(out)
            self.window.images += n_samples
        return step_loss, count

    def _logs_next_step(self) -> bool:
        step = self.state.step + 1
        return step % self.spec.log_every == 0 or step == self.spec.steps

    def gradient_conflict(self, batch: dict, micro: int) -> dict[str, float]:
        """Cosine between the gradients of each pair of the task's ``loss_terms`` on the trainable
        weights, on this rank's first micro-batch of a logged step. A separate forward with the same
        seed, under forked RNG and through the unwrapped module (no DDP hooks), so the step itself
        trains exactly as without the diagnostic. Not under DeepSpeed (partitioned weights)."""
        if self.deepspeed:
            return {}
        seed = self.micro_seed(micro)
        module = self.accelerator.unwrap_model(self.model)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            gen = torch.Generator(device=self.device).manual_seed(seed)
            with self.accelerator.autocast():
                out = module(batch, gen)
            terms = out.get("loss_terms") or {}
            names = sorted(terms)
            grads = {}
            for i, name in enumerate(names):
                if not terms[name].requires_grad:  # a term that reaches no trainable weight
                    g = [None] * len(self.trainable)
                else:
                    g = torch.autograd.grad(
                        terms[name], self.trainable, retain_graph=i < len(names) - 1, allow_unused=True
                    )
                grads[name] = torch.cat(
                    [
                        (x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                        for x, p in zip(g, self.trainable)
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
            **self.conflict,
        }
        self.conflict = {}
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
        save(
            accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            self.spec,
            state,
            self.ckpt_root,
            self.checkpoint_weights,
            final,
            self.protect,
        )
        if self.on_checkpoint is not None and accelerator.is_main_process:
            self.on_checkpoint(state.step)


def save(
    accelerator,
    model,
    optimizer,
    scheduler,
    spec: LoopSpec,
    state: LoopState,
    root: Path,
    checkpoint_weights,
    final: bool,
    protect: set[str],
) -> Path | None:
    """Atomic checkpoint: temp folder on the main process, payload, state.json last, rename."""
    name = checkpoint_name(spec, state.step)
    tmp = ckpt.temp_dir_for(root, name)
    if accelerator.is_main_process:
        ckpt.begin(root, name)
    accelerator.wait_for_everyone()
    if is_deepspeed(accelerator):
        accelerator.save_state(str(tmp / "engine"))  # collective: every rank writes its shard
        # The weights alone too: a later stage, or a resume past this one, loads them without an engine.
        if final:
            import deepspeed

            # ZeRO-3 partitions the parameters: gather them (collective; a no-op under ZeRO-1/2).
            with deepspeed.zero.GatheredParameters([p for p in model.parameters() if hasattr(p, "ds_id")]):
                if accelerator.is_main_process:
                    ckpt.write_payload(tmp, checkpoint_weights(), None, rank=0)
    elif accelerator.is_main_process:
        ckpt.write_payload(tmp, checkpoint_weights(), optimizer.state_dict(), rank=0)
    if not accelerator.is_main_process and not is_deepspeed(accelerator):
        ckpt.write_payload(tmp, None, None, rank=accelerator.process_index)
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        meta = ckpt.CheckpointMeta(
            stage=spec.name,
            stage_index=spec.index,
            step=state.step,
            final=final,
            positions=list(state.positions),
            skipped=state.skipped,
            world_size=accelerator.num_processes,
            elastic=spec.elastic,
            scheduler=scheduler.state_dict(),
            config_hash=spec.config_hash,
            extra=dict(spec.extra_state),
        )
        path = ckpt.commit(root, name, meta.to_json())
        if final:
            protect.add(name)
        ckpt.prune(root, spec.keep_last, protect=protect)
    accelerator.wait_for_everyone()
    return path


def offloads_optimizer(accelerator) -> bool:
    """DeepSpeed keeps the optimizer state in CPU memory (``offload_optimizer_device: cpu``)."""
    if not is_deepspeed(accelerator):
        return False
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def grad_accum_steps(name: str, global_batch: int, per_device: int, world: int) -> int:
    """Micro-batches per optimizer step, or a clear error when the global batch does not split."""
    per_step = per_device * world
    if global_batch % per_step:
        raise UserError(
            f"{name}.global_batch_size {global_batch} is not a multiple of per-device batch "
            f"{per_device} x {world} processes"
        )
    return global_batch // per_step


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
    """AdamW (fused on CUDA), or SGD with momentum when ``stage_cfg.optimizer`` says so, + LambdaLR
    over ``params``, prepared by ``accelerator``, and the loop state: fresh, or restored from
    ``resume_from`` (on another number of processes too when the stage's stream is ``elastic``).
    Returns ``(prepared, optimizer, scheduler, start)``. ``stage_cfg`` supplies ``lr``, ``betas``
    (or ``momentum``) and ``weight_decay``."""
    if getattr(stage_cfg, "optimizer", "adamw") == "sgd":  # DIVA's official optimiser
        optimizer = torch.optim.SGD(
            params, lr=stage_cfg.lr, momentum=stage_cfg.momentum, weight_decay=stage_cfg.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(
            params,
            lr=stage_cfg.lr,
            betas=tuple(stage_cfg.betas),
            weight_decay=stage_cfg.weight_decay,
            fused=accelerator.device.type == "cuda" and not offloads_optimizer(accelerator),
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_fn)
    if is_deepspeed(accelerator):
        from genhancer.runtime.deepspeed_compat import allow_scalar_parameter_broadcast

        allow_scalar_parameter_broadcast()  # CLIP's 0-dim logit_scale (see the module)
        # No dataloader goes through prepare (each rank streams its own data), so DeepSpeed cannot
        # infer its batch sizes: give them per stage. The loop accumulates (stageN.global_batch_size)
        # and tells the engine where a step ends, so the engine's own accumulation is 1.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["gradient_accumulation_steps"] = 1
        ds["train_micro_batch_size_per_gpu"] = stage_cfg.per_device_batch_size
        ds["train_batch_size"] = stage_cfg.per_device_batch_size * accelerator.num_processes
        ds["gradient_clipping"] = stage_cfg.grad_clip  # the engine clips; clip_grad_norm_ reads the norm
        if offloads_optimizer(accelerator):
            # ZeRO-Offload steps our AdamW on the CPU copies of the partitions (DeepSpeed refuses a
            # client optimizer there unless told; its own CPU Adam needs a compiled extension)
            ds["zero_force_ds_cpu_optimizer"] = False
    prepared, optimizer = accelerator.prepare(module, optimizer)
    start = LoopState(positions=[0] * accelerator.num_processes)
    if resume_from is not None:
        start = restore(accelerator, prepared, optimizer, scheduler, resume_from, load_weights, elastic)
    return prepared, optimizer, scheduler, start


def restore(
    accelerator,
    model,
    optimizer,
    scheduler,
    path: Path,
    load_weights: Callable[[dict[str, torch.Tensor]], None],
    elastic: bool = False,
) -> LoopState:
    """Load a checkpoint written by :func:`save` into the prepared objects. A checkpoint written by
    another number of processes loads when the stage's stream is elastic (the data position maps,
    see :func:`~genhancer.runtime.resume.stream_start`; the optimizer state is whole on every rank)
    and the engine is not DeepSpeed (whose optimizer state is partitioned per process)."""
    meta = ckpt.read_meta(path)
    world = accelerator.num_processes
    if meta.world_size != world:
        if not (elastic and meta.elastic):
            raise UserError(
                f"checkpoint {path} was written by {meta.world_size} processes, this run has {world}; "
                "this stage's data stream resumes only on the same number of processes"
            )
        if is_deepspeed(accelerator):
            raise UserError(
                f"checkpoint {path} was written by {meta.world_size} processes, this run has {world}; "
                "DeepSpeed partitions the optimizer state per process: resume on "
                f"{meta.world_size} processes"
            )
    if is_deepspeed(accelerator):
        accelerator.load_state(str(path / "engine"))
    else:
        load_weights(ckpt.load_weights(path))
        opt_state = ckpt.load_optimizer(path)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(meta.scheduler)
    rng = ckpt.load_rng(path, accelerator.process_index)
    if rng is not None:
        ckpt.restore_rng(rng)
    return LoopState(
        step=meta.step, positions=list(meta.positions), skipped=meta.skipped, world=meta.world_size
    )
