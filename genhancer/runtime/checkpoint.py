"""Atomic, safetensors-only training checkpoints (shared by ``enhance`` and ``llava-train``).

Layout of ``DIR/checkpoints/<name>/``::

    weights.safetensors     trainable weights (and anything else a resume needs)
    optimizer.safetensors   optimizer tensors, flattened as state.<param index>.<key>
    optimizer.json          optimizer param groups and non-tensor state
    rng_rank<r>.safetensors torch CPU (and CUDA) RNG state per rank
    state.json              step, stage, data positions, config hash ... written LAST

A checkpoint is written into ``.<name>.tmp`` and renamed into place once ``state.json`` exists,
so a crash mid-write leaves only a temp folder that :func:`list_checkpoints` ignores (and the
next save removes). Nothing is pickled, so loading never executes code. Under DeepSpeed the
folder also holds ``engine/`` (each rank's shard of the engine state, from ``save_state``).

:func:`save_training_state` and :func:`restore_training_state` write and read one from a running
stage (collective across ranks, the ZeRO-3 gather included); the rest is the file format.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genhancer.runtime.deepspeed_compat import is_deepspeed
from genhancer.runtime.errors import UserError

STATE_FILE = "state.json"


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state_dict["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["torch_cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_dir_for(root: Path, name: str) -> Path:
    return root / f".{name}.tmp"


def begin(root: Path, name: str) -> Path:
    """Create (fresh) the temp folder a checkpoint is written into."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(root, name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_payload(
    tmp: Path,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
    rank: int = 0,
) -> None:
    """Write the payload into ``tmp``; on an OS error (a full disk) remove ``tmp`` and raise a
    :class:`UserError` naming the failed checkpoint and the last complete one, which stays valid."""
    try:
        _write_payload(tmp, weights, optimizer_state, rank)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        latest = latest_checkpoint(tmp.parent)
        kept = (
            f"the last complete checkpoint {latest} is intact" if latest else "no earlier checkpoint exists"
        )
        raise UserError(
            f"cannot write checkpoint {tmp.name[1:-4]} in {tmp.parent}: {exc.strerror or exc}; "
            f"{kept}. Free space (or fix the folder) and run again with --resume"
        ) from exc


def _write_payload(tmp: Path, weights, optimizer_state, rank: int) -> None:
    if weights is not None:
        save_file(weights, tmp / "weights.safetensors")
    if optimizer_state is not None:
        tensors, meta = flatten_optimizer_state(optimizer_state)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
    save_file(rng_state(), tmp / f"rng_rank{rank}.safetensors")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so that readers see the old content or the new, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def commit(root: Path, name: str, state: dict) -> Path:
    """Write ``state.json`` last, then rename the temp folder into place."""
    tmp = temp_dir_for(root, name)
    with open(tmp / STATE_FILE, "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def is_complete(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (path / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (by the order key stored in state.json)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if is_complete(p):
            try:
                state = json.loads((p / STATE_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            found.append((tuple(state.get("order", [0])), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


@dataclass
class CheckpointMeta:
    """What ``state.json`` records about a checkpoint: where it sits in the run and how to resume.

    On disk it stays a flat JSON object (``order`` is derived; ``extra`` keys, such as the data
    report a stage logs, sit beside the typed ones). Fields missing from an older file take the
    defaults below, so old checkpoints still load."""

    stage: str
    stage_index: int  # orders checkpoints across stages
    step: int
    final: bool = False  # written at the end of its stage: the stage is finished
    positions: list[int] = field(default_factory=list)  # data position per rank
    skipped: int = 0  # unreadable images so far, over all ranks
    world_size: int = 1
    elastic: bool = False  # positions follow the elastic layout (they map onto another world size)
    scheduler: dict = field(default_factory=dict)
    config_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "stage_index": self.stage_index,
            "step": self.step,
            "final": self.final,
            "order": [self.stage_index, self.step],
            "positions": list(self.positions),
            "skipped": self.skipped,
            "world_size": self.world_size,
            "elastic": self.elastic,
            "scheduler": self.scheduler,
            "config_hash": self.config_hash,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        typed = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "order"}
        return cls(**typed, extra=extra)


def read_meta(path: Path) -> CheckpointMeta:
    """The typed ``state.json`` of a complete checkpoint."""
    return CheckpointMeta.from_json(read_state(path))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "weights.safetensors")


def load_optimizer(path: Path) -> dict | None:
    if not (path / "optimizer.safetensors").is_file():
        return None
    meta = json.loads((path / "optimizer.json").read_text())
    return unflatten_optimizer_state(load_file(path / "optimizer.safetensors"), meta)


def load_rng(path: Path, rank: int = 0) -> dict[str, torch.Tensor] | None:
    f = path / f"rng_rank{rank}.safetensors"
    return load_file(f) if f.is_file() else None


def prune(root: Path, keep_last: int, protect: set[str] = frozenset()) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last`` (never names in ``protect``)."""
    ckpts = [p for p in list_checkpoints(root) if p.name not in protect]
    doomed = ckpts[: max(0, len(ckpts) - keep_last)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    for tmp in root.glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    return doomed


# --- a training checkpoint: collective save and restore --------------------------------------


def checkpoint_name(stage: str, step: int) -> str:
    return f"{stage}_step{step:07d}"


def save_training_state(
    accelerator,
    model,
    optimizer,
    meta: CheckpointMeta,
    root: Path,
    weights: Callable[[], dict[str, torch.Tensor]],
    keep_last: int,
    protect: set[str],
) -> Path | None:
    """Write ``meta``'s checkpoint (every rank calls this): a temp folder made by the main process,
    the payload, ``state.json`` last, the rename, then pruning to ``keep_last`` (never a name in
    ``protect``; a final checkpoint joins it). Under DeepSpeed every rank writes its engine shard
    (``accelerator.save_state`` is collective), and a stage's final checkpoint also holds the whole
    trainable weights, gathered from the ZeRO-3 partitions, so a later stage or a resume past this
    one loads them without an engine. Returns the checkpoint's path on the main process."""
    name = checkpoint_name(meta.stage, meta.step)
    tmp = temp_dir_for(root, name)
    if accelerator.is_main_process:
        begin(root, name)
    accelerator.wait_for_everyone()
    if is_deepspeed(accelerator):
        accelerator.save_state(str(tmp / "engine"))
        if meta.final:
            import deepspeed

            # ZeRO-3 partitions the parameters: gather them (collective; a no-op under ZeRO-1/2).
            with deepspeed.zero.GatheredParameters([p for p in model.parameters() if hasattr(p, "ds_id")]):
                if accelerator.is_main_process:
                    write_payload(tmp, weights(), None, rank=0)
    elif accelerator.is_main_process:
        write_payload(tmp, weights(), optimizer.state_dict(), rank=0)
    if not accelerator.is_main_process and not is_deepspeed(accelerator):
        write_payload(tmp, None, None, rank=accelerator.process_index)
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        path = commit(root, name, meta.to_json())
        if meta.final:
            protect.add(name)
        prune(root, keep_last, protect=protect)
    accelerator.wait_for_everyone()
    return path


def restore_training_state(
    accelerator,
    model,
    optimizer,
    scheduler,
    path: Path,
    apply_weights: Callable[[dict[str, torch.Tensor]], None],
    elastic: bool = False,
) -> CheckpointMeta:
    """Load a checkpoint written by :func:`save_training_state` into the prepared objects and return
    its metadata. A checkpoint written by another number of processes loads when the stage's stream
    is elastic (the data position maps, see :func:`~genhancer.runtime.resume.stream_start`; the
    optimizer state is whole on every rank) and the engine is not DeepSpeed (whose optimizer state
    is partitioned per process)."""
    meta = read_meta(path)
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
        apply_weights(load_weights(path))
        opt_state = load_optimizer(path)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(meta.scheduler)
    rng = load_rng(path, accelerator.process_index)
    if rng is not None:
        restore_rng(rng)
    return meta
