"""Per-GPU memory plan of a training stage: model states by arithmetic, activations by measurement.

Model states follow the accounting of the ZeRO paper (Rajbhandari et al., 2020) for mixed
precision with Adam: per trainable parameter 2 bytes of bf16 weights, 2 of bf16 gradients and 12
of optimiser state (fp32 master copy and two moments), split over the GPUs by the ZeRO stage
(1: optimiser states, 2: + gradients, 3: + weights), the optimiser states moved to the host with
offload. Without DeepSpeed (accelerate's mixed precision) the trainable weights stay fp32 (4 bytes),
gradients are fp32 (4) and AdamW keeps two fp32 moments (8); DDP adds a gradient bucket per
trainable parameter (4) when there is more than one process. Frozen weights cost their storage
dtype.

Activations are what autograd keeps between forward and backward. They are not estimated from
shapes but measured: :func:`saved_bytes` runs a forward at real width under
``torch.autograd.graph.saved_tensors_hooks`` and sums the bytes of the distinct storages autograd
saves (parameters excluded), attributed to the module that was running. A command measures a slice
(one or two blocks of its real tower / denoiser / LM) at two micro-batches, so the per-sample slope
and the fixed part (e.g. autocast's weight copies) come out separately, and scales the slice by
depth. Measurements are cached on disk (:func:`cached_measurement`), keyed by everything they
depend on, so ``--describe`` stays quick after the first call.

Sizes are in GiB (2**30 bytes), as ``torch.cuda.max_memory_allocated`` and nvidia-smi report them
and as the paper's "13.07G" is most plausibly read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genhancer.runtime.errors import UserError

GIB = 2**30
#: CUDA context, cuBLAS/cuDNN workspaces and allocator slack not seen by the accounting above.
DEFAULT_OVERHEAD_GIB = 1.5
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2, "no": 4}


@dataclass
class Part:
    """A model part: ``params`` in total, ``trainable`` of them train (LoRA: the adapter weights),
    frozen weights stored at ``frozen_dtype``."""

    name: str
    params: int
    trainable: int = 0
    frozen_dtype: str = "float32"


@dataclass
class Activations:
    """Bytes autograd keeps for one micro-batch: ``fixed + per_sample * batch``, and where the
    numbers come from."""

    per_sample: float
    fixed: float = 0.0
    source: str = ""
    parts: dict[str, float] = field(default_factory=dict)  # per-sample bytes by part, for the table

    def at(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch


@dataclass
class Setup:
    """How the stage runs: processes, ZeRO stage and offload, precision, optimiser, the card."""

    world_size: int = 1
    zero_stage: int = 0  # 0: no DeepSpeed
    offload_optimizer: bool = False
    offload_params: bool = False
    mixed_precision: str = "bf16"
    optimizer: str = "adamw"
    gpu_memory_gib: float | None = None
    overhead_gib: float = DEFAULT_OVERHEAD_GIB

    def label(self) -> str:
        if self.zero_stage:
            mode = f"ZeRO-{self.zero_stage}"
        else:
            mode = "DDP" if self.world_size > 1 else "no ZeRO"
        offload = [
            x for x, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on
        ]
        precision = "fp32" if self.mixed_precision == "no" else self.mixed_precision
        extra = f", offload {'+'.join(offload)}" if offload else ""
        return f"{self.world_size} GPU(s), {mode}, {precision}{extra}"


def _optim_state_bytes(optimizer: str, deepspeed: bool) -> int:
    moments = 8 if optimizer == "adamw" else 4  # SGD with momentum: one buffer
    return moments + (4 if deepspeed else 0)  # DeepSpeed keeps the fp32 master copy with them


def model_states(parts: list[Part], setup: Setup) -> dict[str, float]:
    """Bytes per GPU of weights, gradients and optimiser states (see the module docstring)."""
    n = max(setup.world_size, 1)
    ds = setup.zero_stage > 0
    half = setup.mixed_precision in ("bf16", "fp16")
    trainable = sum(p.trainable for p in parts)
    frozen = sum((p.params - p.trainable) * DTYPE_BYTES[p.frozen_dtype] for p in parts)
    if ds:
        weight_b = 2 if half else 4
        grad_b = 2 if half else 4
        weights = trainable * weight_b + frozen
        grads = trainable * grad_b
        optim = trainable * _optim_state_bytes(setup.optimizer, half)
        if setup.zero_stage >= 1:
            optim /= n
        if setup.zero_stage >= 2:
            grads /= n
        if setup.zero_stage >= 3:
            weights /= n
        if setup.offload_optimizer:
            optim = 0.0
        if setup.offload_params and setup.zero_stage >= 3:
            weights = 0.0
    else:
        weights = trainable * 4 + frozen
        grads = trainable * 4 * (2 if n > 1 else 1)  # DDP's bucket copy
        optim = trainable * _optim_state_bytes(setup.optimizer, False)
    return {"weights": float(weights), "gradients": float(grads), "optimizer": float(optim)}


def plan(parts: list[Part], acts: Activations, micro_batch: int, setup: Setup) -> dict[str, Any]:
    """The per-GPU plan in GiB at ``micro_batch``, and the largest micro-batch that fits
    ``setup.gpu_memory_gib`` (None when no card size is given)."""
    states = model_states(parts, setup)
    fixed = sum(states.values()) + acts.fixed + setup.overhead_gib * GIB
    total = fixed + acts.per_sample * micro_batch
    out: dict[str, Any] = {
        "setup": setup.label(),
        "micro_batch": micro_batch,
        "weights_gib": round(states["weights"] / GIB, 3),
        "gradients_gib": round(states["gradients"] / GIB, 3),
        "optimizer_gib": round(states["optimizer"] / GIB, 3),
        "activations_gib": round(acts.at(micro_batch) / GIB, 2),
        "activations_fixed_gib": round(acts.fixed / GIB, 2),  # e.g. autocast's low-precision weight copies
        "overhead_gib": setup.overhead_gib,
        "total_gib": round(total / GIB, 2),
        "activations_per_sample_gib": round(acts.per_sample / GIB, 4),
        "activations_source": acts.source,
    }
    if acts.parts:
        out["activations_per_sample_by_part_gib"] = {k: round(v / GIB, 4) for k, v in acts.parts.items()}
    if setup.gpu_memory_gib is not None:
        room = setup.gpu_memory_gib * GIB - fixed
        out["gpu_memory_gib"] = setup.gpu_memory_gib
        out["fits"] = total <= setup.gpu_memory_gib * GIB
        out["max_micro_batch"] = max(int(room // acts.per_sample), 0) if acts.per_sample > 0 else None
    return out


# ------------------------------------------------------------------------------------ measuring


@dataclass
class SavedBytes:
    """What autograd kept during one forward: bytes by module tag, and the whole."""

    total: int = 0
    by_tag: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def saved_bytes(params: Iterator[Any] | list[Any] = (), tags: dict[str, Any] | None = None):
    """Sum the bytes of every distinct storage autograd saves for backward inside the block.

    ``params`` are left out (they live anyway); ``tags`` maps a label to a module whose forward
    attributes what is saved while it runs (innermost wins). A storage saved twice (a tensor and its
    view, or the same input saved by two ops) counts once.
    """
    import torch

    result = SavedBytes()
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: set[int] = set()
    stack: list[str] = []
    handles = []
    for tag, module in (tags or {}).items():
        handles.append(module.register_forward_pre_hook(lambda m, a, t=tag: stack.append(t) and None))
        handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in param_ptrs and ptr not in seen:
            seen.add(ptr)
            n = storage.nbytes()
            result.total += n
            tag = stack[-1] if stack else "other"
            result.by_tag[tag] = result.by_tag.get(tag, 0) + n
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield result
    finally:
        for h in handles:
            h.remove()


def slope_and_fixed(at1: float, at2: float) -> tuple[float, float]:
    """Per-sample bytes and the fixed part from measurements at micro-batches 1 and 2."""
    per_sample = max(at2 - at1, 0.0)
    return per_sample, max(at1 - per_sample, 0.0)


def cache_dir() -> Path:
    """Where measurements are kept (``GENHANCER_MEMORY_CACHE`` or ``~/.cache/genhancer/memory``)."""
    return Path(os.environ.get("GENHANCER_MEMORY_CACHE") or os.path.expanduser("~/.cache/genhancer/memory"))


def cached_measurement(key: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()`` once per ``key`` (torch version included by the caller), kept as JSON."""
    blob = json.dumps(key, sort_keys=True)
    path = cache_dir() / f"{key.get('slice', 'slice')}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["value"] | {"cached": True}
        except (json.JSONDecodeError, KeyError):
            pass
    value = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "value": value}, indent=1))
    tmp.replace(path)
    return value | {"cached": False}


def setup_from(args: Any, world_default: int = 1) -> Setup:
    """The :class:`Setup` in effect: ``--gpu-memory`` from the command line; processes, ZeRO stage
    and offload from what ``accelerate launch`` exports (``WORLD_SIZE``,
    ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, ``ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE``), which
    a user may also set by hand to plan another cluster."""
    env = os.environ
    gpu_memory = getattr(args, "gpu_memory", None)
    if gpu_memory is not None and gpu_memory <= 0:
        raise UserError(f"--gpu-memory must be > 0 (GiB), got {gpu_memory:g}")
    try:
        zero = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or 0)
        world = max(int(env.get("WORLD_SIZE") or world_default), 1)
    except ValueError as exc:
        raise UserError(f"WORLD_SIZE / ACCELERATE_DEEPSPEED_ZERO_STAGE must be integers: {exc}") from None
    offload = env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") not in ("", "none")
    return Setup(
        world_size=world,
        zero_stage=zero,
        offload_optimizer=offload,
        offload_params=offload and zero >= 3,
        gpu_memory_gib=gpu_memory,
    )


def add_memory_flags(parser: Any) -> None:
    """``--gpu-memory``, the one memory-plan flag both training commands take: the card the plan's
    largest micro-batch is for. Processes, ZeRO stage and offload come from the launcher."""
    parser.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="with --describe: the card's memory, for the largest micro-batch that fits",
    )


def alternatives(
    parts: list[Part], acts: Activations, micro_batch: int, setup: Setup
) -> list[dict[str, Any]]:
    """The same stage under the usual other setups (one GPU; ZeRO-2, ZeRO-3 and ZeRO-3 with CPU
    offload on the launcher's GPU count, or 8): total GiB at ``micro_batch`` and the largest that
    fits, so a plan for another cluster needs no relaunch."""
    world = setup.world_size if setup.world_size > 1 else 8
    rows = []
    for zero, offload, n in ((0, False, 1), (2, False, world), (3, False, world), (3, True, world)):
        alt = Setup(**{**asdict(setup), "world_size": n, "zero_stage": zero})
        alt.offload_optimizer = alt.offload_params = offload
        row = plan(parts, acts, micro_batch, alt)
        keep = ("setup", "weights_gib", "optimizer_gib", "total_gib", "fits", "max_micro_batch")
        rows.append({k: row[k] for k in keep if k in row})
    return rows


def setup_dict(setup: Setup) -> dict[str, Any]:
    return asdict(setup)
