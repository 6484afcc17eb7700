"""The one training loop (accumulate, clip, step, log, checkpoint, preview).

Stages plug in through :class:`LoopTask`: a module with ``training_forward(batch, generator)``
and the weights a checkpoint must hold. Randomness is a pure function of
``(seed, stage, step, micro-step, rank)`` and the data stream resumes from a stored position,
so a resumed run restores a step instead of replaying history (STYLE.md example 7).
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
    """The engine is DeepSpeed: it steps, clips and checkpoints itself (see run_loop, save, restore)."""
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
    nonfinite: str = "stop"  # stop | skip | ignore: what a non-finite gradient norm does (see run_loop)
    extra_state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_stage(
        cls, cfg: Any, name: str, index: int, steps: int, grad_accum: int, grad_clip: float, config_hash: str
    ) -> LoopSpec:
        """The spec of one stage of a command whose config has the shared ``train`` (seed,
        max_skip_fraction, optional nonfinite), ``logging`` and ``checkpoint`` sections."""
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
            nonfinite=getattr(cfg.train, "nonfinite", "stop"),
        )


@dataclass
class LoopState:
    step: int = 0
    positions: list[int] = field(default_factory=list)  # data position per rank
    skipped: int = 0
    seen: int = 0


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


def run_loop(
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
) -> LoopState:
    """Train ``spec.steps`` optimizer steps from ``start`` and return the final state.

    ``batches(start_position)`` yields micro-batches for this rank; each item dict carries
    ``position`` (data position after it), ``skipped`` (unreadable images in it) and optionally
    ``num_samples`` (see :func:`batch_size`). ``on_step(step)`` runs after every optimizer step
    (and its checkpoint), on the main process (e.g. per-step exports).
    """
    rank = accelerator.process_index
    device = accelerator.device
    state = LoopState(
        step=start.step, positions=list(start.positions), skipped=start.skipped, seen=start.seen
    )
    my_start = state.positions[rank] if len(state.positions) > rank else 0
    stream = batches(my_start)
    ckpt_root = run_dir / "checkpoints"
    protect = set(protect or ())
    trainable = [p for p in model.parameters() if p.requires_grad]
    deepspeed = is_deepspeed(accelerator)
    if deepspeed and spec.nonfinite == "skip":
        raise UserError(
            "train.nonfinite=skip cannot drop an update under DeepSpeed (the engine steps inside "
            "backward); use train.nonfinite=stop"
        )

    pbar = None
    if spec.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        pbar = tqdm(total=spec.steps, initial=state.step, desc=spec.name, dynamic_ncols=True)

    loss_sum = torch.zeros((), device=device)
    grad_norm = torch.zeros((), device=device)
    extra_sums: dict[str, torch.Tensor] = {}
    nonfinite_steps = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step (stop mode)
    loss_count = 0
    images_since = 0
    t_log = time.perf_counter()
    last_position = my_start
    last_skipped = state.skipped if accelerator.num_processes == 1 else 0
    replay: dict | None = None  # last real micro-batch (multi-process only, see below)
    model.train()

    while state.step < spec.steps:
        step_loss = torch.zeros((), device=device)
        step_count = 0
        for micro in range(spec.grad_accum):
            try:
                batch = next(stream)
            except StopIteration:
                raise UserError(
                    f"{spec.name}: the data ran out at step {state.step}; check data.path"
                ) from None
            last_position = int(batch["position"])
            last_skipped += int(batch["skipped"])
            n_samples = batch_size(batch)
            weight = 1.0
            if n_samples == 0:  # every sample of this micro-batch was unreadable (counted above)
                if accelerator.num_processes == 1 or replay is None:
                    continue
                # The other ranks run this micro-batch's collectives (DDP all-reduce, ZeRO gathers):
                # join them with a zero-weight pass over this rank's last real micro-batch.
                batch, weight = replay, 0.0
            seed = derive_seed(spec.seed, spec.index, state.step, micro, rank)
            gen = torch.Generator(device=device).manual_seed(seed)
            torch.manual_seed(seed)  # dropout (LoRA) draws from the global RNG
            batch = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            if weight and accelerator.num_processes > 1:
                replay = batch
            # Gradients are all-reduced only on the last micro-batch of the accumulation.
            sync = micro == spec.grad_accum - 1
            if deepspeed:  # accelerator.backward steps the engine whenever sync_gradients is set
                accelerator.sync_gradients = sync
            with contextlib.nullcontext() if sync else accelerator.no_sync(model), accelerator.autocast():
                out = model(batch, gen)  # through the DDP/DeepSpeed wrapper: its hooks sync gradients
                loss = out["loss"]
                accelerator.backward(loss * weight / spec.grad_accum)
            if not weight:
                continue
            step_loss += loss.detach().float()
            step_count += 1
            for key, value in out.items():  # extra scalars a task reports (e.g. masked_acc)
                if key != "loss":
                    extra_sums[key] = extra_sums.get(key, 0.0) + value.detach().float()
            images_since += n_samples
        # The norm is needed for clipping and for the finiteness check (inf: measure only).
        grad_norm = accelerator.clip_grad_norm_(
            trainable, spec.grad_clip if spec.grad_clip > 0 else float("inf")
        )
        if grad_norm is None:  # DeepSpeed before its first engine step (every micro-batch so far was empty)
            grad_norm = torch.zeros((), device=device)
        if spec.nonfinite == "stop":
            # No host sync here: remember the first bad step on the device and check it before
            # anything is logged or saved (below). The weights may go bad in memory meanwhile, but
            # they are never written: the run stops at that check.
            bad = ~torch.isfinite(torch.as_tensor(grad_norm, device=device)).reshape(())
            first_bad = torch.where(
                bad & (first_bad < 0), torch.full_like(first_bad, state.step + 1), first_bad
            )
        if spec.nonfinite == "skip" and not bool(torch.isfinite(grad_norm)):  # a sync per step, by choice
            nonfinite_steps += 1  # skip: drop this update, keep the data position moving
            optimizer.zero_grad(set_to_none=True)
            grad_norm = torch.zeros((), device=device)
        else:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += step_loss
            loss_count += step_count
        state.step += 1
        if pbar is not None:
            pbar.update(1)

        end = state.step == spec.steps
        logging_now = state.step % spec.log_every == 0 or end
        if spec.nonfinite == "stop" and (logging_now or state.step % spec.checkpoint_every == 0):
            step_bad = int(accelerator.reduce(first_bad.clone(), reduction="max").item())
            if step_bad > 0:
                raise UserError(
                    f"{spec.name}: non-finite loss or gradient at step {step_bad}; stopped at step "
                    f"{state.step} before anything after step {step_bad - 1} was logged or saved. Lower "
                    "the LR, or set train.nonfinite=skip to skip such batches"
                )
        if logging_now:
            stats = torch.stack(
                [
                    loss_sum,
                    torch.tensor(float(loss_count), device=device),
                    torch.tensor(float(images_since), device=device),
                    torch.tensor(float(last_skipped), device=device),
                    torch.tensor(float(last_position), device=device),
                    torch.as_tensor(grad_norm, device=device).float(),
                ]
            )
            total = accelerator.reduce(stats.clone(), reduction="sum")  # one sync per log, not per step
            mean_loss = (total[0] / total[1].clamp_min(1)).item()
            if not math.isfinite(mean_loss):
                raise UserError(f"{spec.name}: loss became {mean_loss} at step {state.step}; lower the LR")
            elapsed = time.perf_counter() - t_log
            skipped = int(total[3].item())
            consumed = int(total[4].item())
            record = {
                "stage": spec.name,
                "step": state.step,
                "loss": mean_loss,
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": total[2].item() / max(elapsed, 1e-9),
                "grad_norm": total[5].item() / accelerator.num_processes,
                "skipped_images": skipped,
                "nonfinite_steps": nonfinite_steps,
                **spec.extra_state,
            }
            for key, value in sorted(extra_sums.items()):
                summed = accelerator.reduce(value.clone(), reduction="sum")
                record[key] = (summed / total[1].clamp_min(1)).item()
            extra_sums = {}
            if accelerator.is_main_process:
                metrics.write(record)
            if pbar is not None:
                pbar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{record['images_per_s']:.1f}")
            if consumed > 0 and skipped / consumed > spec.max_skip_fraction:
                raise UserError(
                    f"{spec.name}: {skipped} of {consumed} images were unreadable (> train.max_skip_fraction); "
                    "check data.path"
                )
            loss_sum.zero_()
            loss_count = 0
            images_since = 0
            t_log = time.perf_counter()

        if state.step % spec.checkpoint_every == 0 or end:
            positions = accelerator.gather(torch.tensor([last_position], device=device)).tolist()
            state.positions = [int(p) for p in positions]
            state.skipped = int(accelerator.reduce(torch.tensor(last_skipped, device=device), "sum").item())
            save(
                accelerator,
                model,
                optimizer,
                scheduler,
                spec,
                state,
                ckpt_root,
                checkpoint_weights,
                end,
                protect,
            )
            if on_checkpoint is not None and accelerator.is_main_process:
                on_checkpoint(state.step)
        if on_step is not None and accelerator.is_main_process:
            on_step(state.step)
    if pbar is not None:
        pbar.close()
    return state


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
        meta = {
            "stage": spec.name,
            "stage_index": spec.index,
            "step": state.step,
            "final": final,
            "order": [spec.index, state.step],
            "positions": state.positions,
            "skipped": state.skipped,
            "world_size": accelerator.num_processes,
            "scheduler": scheduler.state_dict(),
            "config_hash": spec.config_hash,
            **spec.extra_state,
        }
        path = ckpt.commit(root, name, meta)
        if final:
            protect.add(name)
        ckpt.prune(root, spec.keep_last, protect=protect)
    accelerator.wait_for_everyone()
    return path


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
):
    """AdamW (fused on CUDA) + LambdaLR over ``params``, prepared by ``accelerator``, and the loop
    state: fresh, or restored from ``resume_from``. Returns ``(prepared, optimizer, scheduler, start)``.
    ``stage_cfg`` supplies ``lr``, ``betas`` and ``weight_decay``."""
    optimizer = torch.optim.AdamW(
        params,
        lr=stage_cfg.lr,
        betas=tuple(stage_cfg.betas),
        weight_decay=stage_cfg.weight_decay,
        fused=accelerator.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_fn)
    if is_deepspeed(accelerator):
        from genhancer.runtime.deepspeed_compat import allow_scalar_parameter_broadcast

        allow_scalar_parameter_broadcast()  # CLIP's 0-dim logit_scale (see the module)
        # No dataloader goes through prepare (each rank streams its own data), so DeepSpeed cannot
        # infer its batch sizes: give them per stage. run_loop accumulates (stageN.global_batch_size)
        # and tells the engine where a step ends, so the engine's own accumulation is 1.
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["gradient_accumulation_steps"] = 1
        ds["train_micro_batch_size_per_gpu"] = stage_cfg.per_device_batch_size
        ds["train_batch_size"] = stage_cfg.per_device_batch_size * accelerator.num_processes
        ds["gradient_clipping"] = stage_cfg.grad_clip  # the engine clips; clip_grad_norm_ reads the norm
    prepared, optimizer = accelerator.prepare(module, optimizer)
    start = LoopState(positions=[0] * accelerator.num_processes)
    if resume_from is not None:
        start = restore(accelerator, prepared, optimizer, scheduler, resume_from, load_weights)
    return prepared, optimizer, scheduler, start


def restore(
    accelerator,
    model,
    optimizer,
    scheduler,
    path: Path,
    load_weights: Callable[[dict[str, torch.Tensor]], None],
) -> LoopState:
    """Load a checkpoint written by :func:`save` into the prepared objects."""
    meta = ckpt.read_state(path)
    if meta.get("world_size", 1) != accelerator.num_processes:
        raise UserError(
            f"checkpoint {path} was written by {meta.get('world_size')} processes, this run has "
            f"{accelerator.num_processes}; resume with the same number of processes"
        )
    if is_deepspeed(accelerator):
        accelerator.load_state(str(path / "engine"))
    else:
        load_weights(ckpt.load_weights(path))
        opt_state = ckpt.load_optimizer(path)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(meta["scheduler"])
    rng = ckpt.load_rng(path, accelerator.process_index)
    if rng is not None:
        ckpt.restore_rng(rng)
    return LoopState(
        step=meta["step"], positions=list(meta.get("positions", [])), skipped=meta.get("skipped", 0)
    )


def check_run_dir(
    run_dir: Path,
    cfg: Any,
    resume: bool,
    allowed_changes: tuple[str, ...] | list[str],
    first_stage: str,
    freed_after_first_stage: tuple[str, ...] | list[str],
) -> Path | None:
    """Refuse to overwrite a run; on --resume return the latest complete checkpoint after checking
    that the config changed only in ``allowed_changes`` (plus ``freed_after_first_stage`` once
    ``first_stage`` has finished, since the next stage has not used its settings yet)."""
    from genhancer.runtime import configtools

    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    saved = run_dir / "config.yaml"
    if not resume:
        if latest is not None or saved.exists():
            raise UserError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir"
            )
        return None
    if latest is None:
        if saved.exists():
            return None  # started but never checkpointed: begin again with the same folder
        raise UserError(f"--resume: {run_dir} holds no run to resume (no config.yaml, no checkpoints)")
    if saved.exists():
        allowed = list(allowed_changes)
        meta = ckpt.read_state(latest)
        if meta.get("stage") == first_stage and meta.get("final"):
            allowed += list(freed_after_first_stage)
        changed = [
            k
            for k in configtools.diff_keys(configtools.load_yaml(saved), configtools.to_dict(cfg))
            if not any(k == a or k.startswith(a + ".") for a in allowed)
        ]
        if changed:
            raise UserError(
                f"--resume: the config differs from the run in {run_dir} at {', '.join(changed)}; "
                "resume with the original settings or start a new --output-dir"
            )
    return latest
