"""The resume plan: what each stage of a run does, given the checkpoint being resumed.

Pure functions of the stage list, the latest checkpoint's metadata and each stage's step
count, so the rule every command follows is written and tested once. A stage is *finished*
only when its final checkpoint was written (``final``) and that checkpoint reaches the stage's
configured steps; a stage whose steps were raised since resumes from it. :func:`stream_start`
maps a stored data position onto the processes of the resumed run (elastic resume).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from genhancer.runtime.checkpoint import CheckpointMeta
from genhancer.runtime.errors import UserError


class Action(enum.Enum):
    SKIP = "skip"  # a later stage's checkpoint is resumed: it holds everything this stage made
    LOAD_WEIGHTS = "load_weights"  # finished in the checkpoint: load its weights, do not train
    RESTORE = "restore"  # the checkpoint is mid-stage: restore weights, optimizer, data and step
    FRESH = "fresh"  # start at step 0


@dataclass(frozen=True)
class StageRef:
    """A stage as the plan sees it: its name, its index in the command's order, its steps."""

    name: str
    index: int
    steps: int


@dataclass(frozen=True)
class StagePlan:
    stage: StageRef
    action: Action
    # FRESH only: first load the weights of the checkpoint's (earlier) stage, which this run
    # does not otherwise visit (``--stage 2 --resume`` after a stage-1 run).
    load_earlier: bool = False


def is_finished(meta: CheckpointMeta, stage: StageRef) -> bool:
    """The checkpoint holds the end of ``stage``: its final checkpoint, at or past its steps."""
    return meta.stage_index == stage.index and meta.final and meta.step >= stage.steps


def prerequisite_met(meta: CheckpointMeta | None, first_index: int) -> bool:
    """A run that starts at stage ``first_index`` has the stage before it finished (or a later
    checkpoint) in its folder. The first stage of a command needs nothing."""
    if first_index <= 1:
        return True
    if meta is None:
        return False
    return meta.stage_index >= first_index or (meta.stage_index == first_index - 1 and meta.final)


def plan_stage(stage: StageRef, meta: CheckpointMeta | None, run_indices: Sequence[int]) -> StagePlan:
    """What ``stage`` does when the run visits ``run_indices`` (in order) and resumes ``meta``."""
    if meta is None or stage.index > meta.stage_index:
        earlier = (
            meta is not None
            and meta.stage_index not in run_indices
            and stage.index == min(i for i in run_indices if i > meta.stage_index)
        )
        return StagePlan(stage, Action.FRESH, load_earlier=earlier)
    if stage.index < meta.stage_index:
        return StagePlan(stage, Action.SKIP)
    if is_finished(meta, stage):
        return StagePlan(stage, Action.LOAD_WEIGHTS)
    return StagePlan(stage, Action.RESTORE)


def plan_resume(stages: Sequence[StageRef], meta: CheckpointMeta | None) -> list[StagePlan]:
    """The plan of every stage of a run (see :func:`plan_stage`)."""
    indices = [s.index for s in stages]
    return [plan_stage(s, meta, indices) for s in stages]


# --- the data position across world sizes ----------------------------------------------------


def stream_start(
    positions: Sequence[int],
    written_world: int,
    rank: int,
    world: int,
    elastic: bool,
    block: int,
    what: str = "the checkpoint",
) -> int:
    """Where this rank's stream resumes, from the per-rank positions a checkpoint stored.

    Without ``elastic`` each rank continues its own stream, so the world size must not change.
    With ``elastic`` the streams share one order cut into micro-batches of ``block`` samples,
    global micro-batch ``g`` going to rank ``g % world`` (``LlavaStream``, and ``ImageStream`` with
    ``rank_blocks``), and a position counts one rank's samples. At an optimizer-step boundary every
    rank has consumed the same number of micro-batches, so the ranks together consumed exactly the
    first ``position * written_world`` samples; on ``world`` ranks that prefix is ``position *
    written_world / world`` samples per rank (a whole number of micro-batches whenever the global
    batch splits over ``world``, which :func:`~genhancer.runtime.trainer.grad_accum_steps` checks)."""
    positions = list(positions) or [0] * written_world
    if not elastic:
        if written_world != world:
            raise UserError(
                f"{what} was written by {written_world} processes, this run has {world}; this data "
                "stream resumes only on the same number of processes"
            )
        return int(positions[rank]) if rank < len(positions) else 0
    if len(set(positions)) != 1:
        raise UserError(f"{what}: ranks stopped at different data positions {positions}; cannot remap them")
    consumed = int(positions[0]) * written_world  # samples, all ranks together
    if consumed % (block * world):
        raise UserError(
            f"{what}: {consumed} samples consumed do not split into micro-batches of {block} over "
            f"{world} processes; resume on a process count that divides the global batch"
        )
    return consumed // world
