"""Preemption: a scheduler's signal becomes a checkpoint at the next step boundary and exit code 75.

The loop runs in-process on one CPU process with a fake task (a linear layer on fixed batches);
the signal is sent to this process from inside the data stream, i.e. in the middle of a step.
The multi-process run, the requeue marker and the exact resume are in
``tests/e2e/test_preempt_resume.py`` (slow).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.preempt import (
    MARKER,
    REQUEUE_EXIT_CODE,
    Preempted,
    PreemptionWatch,
    clear_marker,
    write_marker,
)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_watch_turns_the_signal_into_a_request_and_restores_the_handlers(sig):
    before = signal.getsignal(sig)
    with PreemptionWatch() as watch:
        assert not watch.should_stop()
        os.kill(os.getpid(), sig)  # the handler runs before the next bytecode
        assert watch.received == sig and watch.signal_name == sig.name
        assert watch.should_stop()
        os.kill(os.getpid(), sig)  # a second signal (e.g. forwarded by a launcher) changes nothing
        assert watch.should_stop()
    assert signal.getsignal(sig) == before


def test_preempted_is_a_system_exit_with_the_requeue_code_and_the_marker_round_trips(tmp_path):
    stop = Preempted("stage1", 3, "stage1_step0000003", "SIGUSR1")
    assert isinstance(stop, SystemExit) and stop.code == REQUEUE_EXIT_CODE == 75
    assert "--resume" in str(stop) and "step 3" in str(stop)
    path = write_marker(tmp_path, stop)
    assert path == tmp_path / MARKER
    assert json.loads(path.read_text()) == {
        "exit_code": 75,
        "signal": "SIGUSR1",
        "stage": "stage1",
        "step": 3,
        "checkpoint": "stage1_step0000003",
    }
    clear_marker(tmp_path)
    assert not path.exists()
    clear_marker(tmp_path)  # nothing to clear: no error


class _Task(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch, generator):
        return {"loss": ((self.lin(batch["pixel_values"]) - 1.0) ** 2).mean()}


def _loop(tmp_path, signal_at_step: int | None, steps: int = 6):
    from accelerate import Accelerator

    from genhancer.runtime.metrics import MetricsWriter
    from genhancer.runtime.trainer import Loop, LoopSpec, start_stage

    torch.manual_seed(0)
    task = _Task()
    accelerator = Accelerator(cpu=True)
    cfg = type("C", (), {"lr": 0.1, "betas": [0.9, 0.999], "weight_decay": 0.0, "per_device_batch_size": 2})
    prepared, optimizer, scheduler, start = start_stage(
        accelerator, task, list(task.parameters()), cfg, lambda s: 1.0
    )
    spec = LoopSpec("stage1", 1, steps, 2, 1.0, 0, 1, 100, 10, "h", progress=False)

    def batches(start_position: int):
        position = start_position
        while True:
            position += 2
            step = position // 4  # 2 micro-batches of 2 per step: this is step ``step``'s second
            if signal_at_step is not None and step == signal_at_step and position % 4 == 0:
                os.kill(os.getpid(), signal.SIGUSR1)  # mid-step: its backward has not run yet
            g = torch.Generator().manual_seed(position)
            yield {"pixel_values": torch.randn(2, 3, generator=g), "position": position, "skipped": 0}

    metrics = MetricsWriter(tmp_path, True)
    loop = Loop(
        accelerator,
        prepared,
        optimizer,
        scheduler,
        batches,
        spec,
        tmp_path,
        metrics,
        lambda: {k: v.detach().clone() for k, v in task.state_dict().items()},
        start,
    )
    return loop, task


def test_loop_checkpoints_at_the_next_step_boundary_and_raises(tmp_path):
    with PreemptionWatch() as watch:
        loop, task = _loop(tmp_path, signal_at_step=3)
        loop.preempt = watch
        with pytest.raises(Preempted) as err:
            loop.run()
    assert (err.value.step, err.value.checkpoint, err.value.code) == (3, "stage1_step0000003", 75)
    # checkpoint.every=100: the only checkpoint is the one the signal asked for, after step 3
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["stage1_step0000003"]
    meta = ckpt.read_meta(tmp_path / "checkpoints" / "stage1_step0000003")
    assert (meta.step, meta.final, meta.positions) == (3, False, [12])
    saved = ckpt.load_weights(tmp_path / "checkpoints" / "stage1_step0000003")
    assert torch.equal(saved["lin.weight"], task.lin.weight.detach())
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # logged up to the stop, nothing after


def test_the_loop_runs_to_the_end_without_a_signal(tmp_path):
    with PreemptionWatch() as watch:
        loop, _ = _loop(tmp_path, signal_at_step=None, steps=3)
        loop.preempt = watch
        assert loop.run().step == 3
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["stage1_step0000003"]
