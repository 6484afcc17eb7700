"""The resume plan: what each stage of a run does, given the checkpoint being resumed.

Pure functions of the stage list, the latest checkpoint's metadata and each stage's step
count, so the rule every command follows is written and tested once. A stage is *finished*
only when its final checkpoint was written (``final``) and that checkpoint reaches the stage's
configured steps; a stage whose steps were raised since resumes from it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from genhancer.runtime.checkpoint import CheckpointMeta


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
