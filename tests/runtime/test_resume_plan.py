"""The resume plan (pure), the typed checkpoint metadata, the non-finite policies and the shared
config sections of ``genhancer.runtime``."""

from __future__ import annotations

import json
import types

import pytest
import torch

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.errors import UserError
from genhancer.runtime.resume import Action, StageRef, plan_resume, prerequisite_met

S1, S2 = StageRef("stage1", 1, 10), StageRef("stage2", 2, 5)


def _meta(stage: StageRef, step: int, final: bool) -> ckpt.CheckpointMeta:
    return ckpt.CheckpointMeta(stage=stage.name, stage_index=stage.index, step=step, final=final)


def _actions(stages, meta) -> list[tuple[Action, bool]]:
    return [(p.action, p.load_earlier) for p in plan_resume(stages, meta)]


def test_a_fresh_run_starts_every_stage_fresh():
    assert _actions([S1, S2], None) == [(Action.FRESH, False), (Action.FRESH, False)]


def test_a_stage_is_finished_only_when_its_final_checkpoint_was_written():
    # The final checkpoint of stage 1: load its weights, start stage 2.
    assert _actions([S1, S2], _meta(S1, 10, final=True)) == [
        (Action.LOAD_WEIGHTS, False),
        (Action.FRESH, False),
    ]
    # At (or past) the step count but not final: the stage was never closed, restore it.
    assert _actions([S1, S2], _meta(S1, 12, final=False))[0] == (Action.RESTORE, False)
    # Final, but the steps were raised since: train on from it.
    assert _actions([S1, S2], _meta(S1, 8, final=True))[0] == (Action.RESTORE, False)


def test_mid_stage_checkpoints_restore_and_earlier_stages_are_skipped():
    assert _actions([S1, S2], _meta(S1, 3, final=False)) == [(Action.RESTORE, False), (Action.FRESH, False)]
    assert _actions([S1, S2], _meta(S2, 2, final=False)) == [(Action.SKIP, False), (Action.RESTORE, False)]
    assert _actions([S1, S2], _meta(S2, 5, final=True)) == [
        (Action.SKIP, False),
        (Action.LOAD_WEIGHTS, False),
    ]


def test_a_later_stage_run_alone_loads_the_earlier_stage_product():
    """``--stage 2 --resume`` after a stage-1 run: stage 2 starts from stage 1's weights."""
    assert _actions([S2], _meta(S1, 10, final=True)) == [(Action.FRESH, True)]
    assert _actions([S2], _meta(S2, 1, final=False)) == [(Action.RESTORE, False)]


def test_prerequisite():
    assert prerequisite_met(None, 1)
    assert not prerequisite_met(None, 2)
    assert not prerequisite_met(_meta(S1, 3, final=False), 2)
    assert prerequisite_met(_meta(S1, 10, final=True), 2)
    assert prerequisite_met(_meta(S2, 1, final=False), 2)


def test_checkpoint_meta_round_trips_and_keeps_the_json_format(tmp_path):
    meta = ckpt.CheckpointMeta(
        stage="pretrain",
        stage_index=1,
        step=4,
        final=True,
        positions=[8, 9],
        skipped=1,
        world_size=2,
        scheduler={"last_epoch": 4},
        config_hash="abc",
        extra={"data": {"rows": 3}},
    )
    data = meta.to_json()
    assert data["order"] == [1, 4] and data["data"] == {"rows": 3} and data["final"] is True
    assert ckpt.CheckpointMeta.from_json(json.loads(json.dumps(data))) == meta


def test_an_old_state_json_still_loads(tmp_path):
    """Written before ``final``, ``positions``, ``skipped`` and ``world_size`` existed."""
    root = tmp_path / "checkpoints"
    ckpt.begin(root, "stage1_step0000002")
    old = {"stage": "stage1", "stage_index": 1, "step": 2, "order": [1, 2], "scheduler": {"last_epoch": 2}}
    path = ckpt.commit(root, "stage1_step0000002", old)
    meta = ckpt.read_meta(path)
    assert (meta.step, meta.final, meta.positions, meta.skipped, meta.world_size) == (2, False, [], 0, 1)
    assert meta.extra == {}


def _accel():
    return types.SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, reduction: t)


def test_stop_policy_needs_no_sync_per_step_and_names_the_first_bad_step():
    from genhancer.runtime.nonfinite import StopPolicy
    from genhancer.runtime.trainer import LoopSpec

    spec = LoopSpec("stage1", 1, 5, 1, 1.0, 0, 1, 1, 1, "h")
    policy = StopPolicy(_accel(), spec)
    assert policy.keep_update(torch.tensor(1.0), 1)
    policy.check(1)
    assert policy.keep_update(torch.tensor(float("nan")), 2)  # kept: the check comes at the log step
    assert policy.keep_update(torch.tensor(float("inf")), 3)
    with pytest.raises(UserError, match="at step 2; stopped at step 3"):
        policy.check(3)


def test_skip_policy_drops_and_counts_and_refuses_deepspeed():
    from genhancer.runtime.nonfinite import SkipPolicy
    from genhancer.runtime.trainer import LoopSpec

    policy = SkipPolicy(_accel(), LoopSpec("s", 1, 5, 1, 1.0, 0, 1, 1, 1, "h", nonfinite="skip"))
    assert policy.keep_update(torch.tensor(1.0), 1)
    assert not policy.keep_update(torch.tensor(float("nan")), 2)
    assert policy.nonfinite_steps == 1
    policy.check_engine(deepspeed=False)
    with pytest.raises(UserError, match="DeepSpeed"):
        policy.check_engine(deepspeed=True)


@pytest.mark.parametrize("command", ["enhance", "llava"])
def test_enums_are_checked_by_name_and_nonfinite_is_shared(command):
    if command == "enhance":
        from enhance.config import load_config
    else:
        from llava_integration.config import load_config
    cfg = load_config("tiny", overrides=["train.nonfinite=skip", "train.mixed_precision=no"])
    assert (cfg.train.nonfinite, cfg.train.mixed_precision) == ("skip", "no")  # `no` kept as text
    with pytest.raises(UserError, match="'train.nonfinite'.*'ignore' is not one of"):
        load_config("tiny", overrides=["train.nonfinite=ignore"])
    with pytest.raises(UserError, match="'checkpoint.keep_last'|checkpoint.keep_last"):
        load_config("tiny", overrides=["checkpoint.keep_last=0"])


def test_literal_enums_reject_a_value_of_another_type():
    from typing import Literal

    from genhancer.runtime.configtools import _coerce

    assert _coerce(2, Literal[1, 2], "k") == 2
    with pytest.raises(UserError, match="config key 'k'"):
        _coerce(True, Literal[1, 2], "k")  # True == 1, but it is not a stage number


def test_llava_train_hands_its_nonfinite_policy_to_the_loop():
    from genhancer.runtime.nonfinite import NONFINITE_POLICIES, SkipPolicy
    from genhancer.runtime.trainer import LoopSpec
    from llava_integration.config import load_config

    cfg = load_config("tiny", overrides=["train.nonfinite=skip"])
    spec = LoopSpec.for_stage(cfg, "pretrain", 1, 4, 1, 1.0, "h")
    assert spec.nonfinite == "skip" and NONFINITE_POLICIES[spec.nonfinite] is SkipPolicy


def test_resume_accepts_a_key_added_since_at_its_default(tmp_path):
    """A llava-train run started before ``train.nonfinite`` existed resumes; a changed value does not."""
    from genhancer.runtime import configtools
    from genhancer.runtime.driver import check_run_dir
    from llava_integration.config import RESUME_ALLOWED_CHANGES, load_config

    cfg = load_config("tiny")
    old = configtools.to_dict(cfg)
    del old["train"]["nonfinite"]
    (tmp_path / "config.yaml").write_text(__import__("yaml").safe_dump(old))
    root = tmp_path / "checkpoints"
    ckpt.begin(root, "pretrain_step0000001")
    meta = ckpt.CheckpointMeta(stage="pretrain", stage_index=1, step=1)
    ckpt.commit(root, "pretrain_step0000001", meta.to_json())
    args = (RESUME_ALLOWED_CHANGES, "pretrain", ["finetune"])
    assert check_run_dir(tmp_path, cfg, True, *args).name == "pretrain_step0000001"
    with pytest.raises(UserError, match="train.nonfinite"):
        check_run_dir(tmp_path, load_config("tiny", overrides=["train.nonfinite=skip"]), True, *args)
