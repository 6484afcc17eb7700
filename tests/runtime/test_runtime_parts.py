"""The runtime's components on fake modules: LR schedule and optimiser builder, metrics writer and
log window, the gradient-conflict hook, and a checkpoint's collective save and restore."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
from testkit import CHECKPOINT_FILES
from torch import nn

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.errors import UserError
from genhancer.runtime.optim import build_optimizer, grad_accum_steps, lr_schedule

# --- LR schedule and optimiser


def test_lr_schedule_by_hand():
    constant = lr_schedule("constant", 10, warmup_steps=4)
    assert [constant(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_schedule("constant", 10)(0) == 1.0
    cosine = lr_schedule("cosine", 10, warmup_ratio=0.2)  # ceil(0.2 * 10) = 2 warmup steps
    assert [cosine(s) for s in (0, 1)] == [0.5, 1.0]
    assert cosine(2) == 1.0  # progress 0
    assert cosine(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert cosine(10) == pytest.approx(0.0, abs=1e-12)
    # LLaVA's 3 %: ceil(0.03 * 100) = 3 steps
    assert lr_schedule("cosine", 100, warmup_ratio=0.03)(2) == 1.0
    assert lr_schedule("cosine", 100, warmup_ratio=0.03)(1) == pytest.approx(2 / 3)


def test_lr_schedule_refuses_two_warmups_and_unknown_kinds():
    with pytest.raises(UserError, match="not both"):
        lr_schedule("cosine", 10, warmup_steps=2, warmup_ratio=0.1)
    with pytest.raises(UserError, match="unknown LR schedule 'linear'"):
        lr_schedule("linear", 10)


def test_grad_accum_steps():
    assert grad_accum_steps("stage1", 256, 16, 8) == 2
    assert grad_accum_steps("stage1", 16, 4, 1) == 4
    with pytest.raises(
        UserError, match="stage1.global_batch_size 16 is not a multiple of per-device batch 4 x 3"
    ):
        grad_accum_steps("stage1", 16, 4, 3)


def test_build_optimizer_adamw_and_sgd():
    accelerator = types.SimpleNamespace(
        device=torch.device("cpu"), distributed_type=types.SimpleNamespace(value="NO")
    )
    params = [nn.Parameter(torch.zeros(2))]
    adam = build_optimizer(
        accelerator, params, types.SimpleNamespace(lr=0.1, betas=[0.8, 0.9], weight_decay=0.01)
    )
    assert isinstance(adam, torch.optim.AdamW)
    assert adam.param_groups[0]["betas"] == (0.8, 0.9) and adam.param_groups[0]["weight_decay"] == 0.01
    sgd = build_optimizer(
        accelerator, params, types.SimpleNamespace(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    )
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


# --- metrics


def test_metrics_writer_rewinds_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    from genhancer.runtime.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path, enabled=True)
    for step in (1, 2, 3):
        writer.write({"stage": "stage1", "step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"stage": "stage1", "st')  # a crash mid-line
    writer.rewind(lambda r: r["step"] <= 2)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    MetricsWriter(tmp_path / "other", enabled=False).write({"step": 1})  # not the main process
    assert not (tmp_path / "other").exists()


def test_log_window_sums_extras_and_resets():
    from genhancer.runtime.metrics import LogWindow

    window = LogWindow(torch.device("cpu"))
    window.add_extras({"loss": torch.tensor(9.0), "acc": torch.tensor(0.5), "loss_terms": {}})
    window.add_extras({"acc": torch.tensor(0.25)})
    assert set(window.extra_sums) == {"acc"} and float(window.extra_sums["acc"]) == 0.75
    window.loss_sum += 3.0
    window.reset()
    assert float(window.loss_sum) == 0.0 and window.extra_sums == {} and window.images == 0


# --- the gradient-conflict hook


class _TwoTerms(nn.Module):
    """loss_terms a = w.x and b = -2 w.x: gradients x and -2x (cosine -1, norms |x| and 2|x|)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, batch, generator):
        x = batch["x"] + 0 * torch.rand(3, generator=generator)  # draws from the generator
        a, b = self.w @ x, -2 * (self.w @ x)
        return {"loss": a + b, "loss_terms": {"a": a, "b": b}}


def test_gradient_conflict_probe_by_hand_and_leaves_training_alone():
    from genhancer.runtime.hooks import GradientConflictProbe, hooks_for

    module = _TwoTerms()
    loop = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(
            unwrap_model=lambda m: m, autocast=lambda: torch.autocast("cpu", enabled=False)
        ),
        model=module,
        device=torch.device("cpu"),
        trainable=[module.w],
        deepspeed=False,
        micro_seed=lambda micro: 7,
        logs_next_step=lambda: True,
    )
    x = torch.tensor([3.0, 0.0, 4.0])
    rng = torch.get_rng_state()
    probe = GradientConflictProbe()
    probe.on_micro_batch(loop, {"x": x}, micro=0, weight=1.0)
    assert torch.equal(torch.get_rng_state(), rng) and module.w.grad is None  # training untouched
    record = probe.record()
    assert record["grad_cos_a_b"] == pytest.approx(-1.0)
    assert (record["grad_norm_a"], record["grad_norm_b"]) == pytest.approx((5.0, 10.0))
    assert probe.record() == {}  # forgotten once logged
    probe.on_micro_batch(loop, {"x": x}, micro=1, weight=1.0)  # only the first micro-batch
    probe.on_micro_batch(loop, {"x": x}, micro=0, weight=0.0)  # not a zero-weight replay
    assert probe.record() == {}
    assert [type(h) for h in hooks_for(types.SimpleNamespace(grad_conflict=True))] == [GradientConflictProbe]
    assert hooks_for(types.SimpleNamespace(grad_conflict=False)) == []


# --- checkpoint save / restore


def _prepared(lr: float = 0.1):
    from accelerate import Accelerator

    from genhancer.runtime.optim import prepare

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    accelerator = Accelerator(cpu=True)
    section = types.SimpleNamespace(
        lr=lr, betas=[0.9, 0.999], weight_decay=0.0, per_device_batch_size=2, grad_clip=1.0
    )
    prepared, optimizer, scheduler = prepare(
        accelerator, model, list(model.parameters()), section, lambda s: 1.0
    )
    return accelerator, model, prepared, optimizer, scheduler


def _meta(scheduler, step: int, world: int = 1, elastic: bool = False, final: bool = False):
    return ckpt.CheckpointMeta(
        stage="stage1",
        stage_index=1,
        step=step,
        final=final,
        positions=[8] * world,
        world_size=world,
        elastic=elastic,
        scheduler=scheduler.state_dict(),
    )


def test_save_and_restore_training_state_round_trip(tmp_path):
    accelerator, model, prepared, optimizer, scheduler = _prepared()
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    weights = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731
    saved = weights()
    protect: set[str] = set()
    path = ckpt.save_training_state(
        accelerator, prepared, optimizer, _meta(scheduler, 1, final=True), tmp_path, weights, 1, protect
    )
    assert path == tmp_path / "stage1_step0000001" and protect == {"stage1_step0000001"}
    assert sorted(p.name for p in path.iterdir()) == CHECKPOINT_FILES
    exp_avg = optimizer.state[model.weight]["exp_avg"].clone()

    _, model2, prepared2, optimizer2, scheduler2 = _prepared(lr=0.1)
    with torch.no_grad():
        model2.weight.add_(1.0)  # perturbed: the restore must overwrite it
    meta = ckpt.restore_training_state(
        accelerator, prepared2, optimizer2, scheduler2, path, lambda w: model2.load_state_dict(w)
    )
    assert (meta.step, meta.positions, meta.final) == (1, [8], True)
    assert all(torch.equal(v, saved[k]) for k, v in model2.state_dict().items())
    assert torch.equal(optimizer2.state[model2.weight]["exp_avg"], exp_avg)
    assert scheduler2.last_epoch == 1


def test_restore_refuses_another_world_size_unless_elastic(tmp_path):
    accelerator, model, prepared, optimizer, scheduler = _prepared()
    weights = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731
    root = tmp_path / "ck"
    for step, elastic in ((1, False), (2, True)):
        # written as if by 2 processes (the positions and world size a 2-rank run records)
        ckpt.save_training_state(
            accelerator, prepared, optimizer, _meta(scheduler, step, 2, elastic), root, weights, 5, set()
        )
    load = lambda w: model.load_state_dict(w)  # noqa: E731
    with pytest.raises(UserError, match="written by 2 processes, this run has 1"):
        ckpt.restore_training_state(
            accelerator, prepared, optimizer, scheduler, root / "stage1_step0000001", load
        )
    with pytest.raises(UserError, match="written by 2 processes"):  # elastic stream, inelastic checkpoint
        ckpt.restore_training_state(
            accelerator, prepared, optimizer, scheduler, root / "stage1_step0000001", load, elastic=True
        )
    meta = ckpt.restore_training_state(
        accelerator, prepared, optimizer, scheduler, root / "stage1_step0000002", load, elastic=True
    )
    assert (meta.world_size, meta.positions) == (2, [8, 8])
