"""The memory plan: model-state arithmetic by hand, activation bytes against what autograd keeps,
the largest micro-batch, the cache, and both commands' ``--describe`` printing it."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest
import torch
from torch import nn

from genhancer.runtime import memory
from genhancer.runtime.errors import UserError
from genhancer.runtime.memory import GIB, Activations, Part, Setup, model_states, plan, saved_bytes


def test_model_states_follow_the_zero_accounting_by_hand():
    parts = [Part("t", 1000, 1000), Part("frozen", 500, 0, "bfloat16")]
    # no DeepSpeed, one GPU: fp32 weights 4 B, fp32 grads 4 B, AdamW moments 8 B; frozen bf16 2 B
    assert model_states(parts, Setup()) == {"weights": 5000.0, "gradients": 4000.0, "optimizer": 8000.0}
    # DDP on 2 GPUs adds the gradient bucket copy
    assert model_states(parts, Setup(world_size=2))["gradients"] == 8000.0
    # SGD with momentum: one 4-byte buffer
    assert model_states(parts, Setup(optimizer="sgd"))["optimizer"] == 4000.0
    # ZeRO (bf16): 2 B weights, 2 B grads, 12 B optimiser (master + 2 moments), split by stage
    z1 = model_states(parts, Setup(world_size=4, zero_stage=1))
    assert z1 == {"weights": 3000.0, "gradients": 2000.0, "optimizer": 3000.0}
    z2 = model_states(parts, Setup(world_size=4, zero_stage=2))
    assert z2 == {"weights": 3000.0, "gradients": 500.0, "optimizer": 3000.0}
    z3 = model_states(parts, Setup(world_size=4, zero_stage=3))
    assert z3 == {"weights": 750.0, "gradients": 500.0, "optimizer": 3000.0}
    z3off = model_states(
        parts, Setup(world_size=4, zero_stage=3, offload_optimizer=True, offload_params=True)
    )
    assert z3off == {"weights": 0.0, "gradients": 500.0, "optimizer": 0.0}


def test_plan_totals_and_the_largest_micro_batch():
    parts = [Part("t", GIB // 16, GIB // 16)]  # 16 B per trainable param -> 1 GiB of states
    acts = Activations(per_sample=0.5 * GIB, fixed=0.25 * GIB)
    row = plan(parts, acts, 4, Setup(gpu_memory_gib=10.0, overhead_gib=1.0))
    assert row["total_gib"] == pytest.approx(1.0 + 0.25 + 2.0 + 1.0, abs=0.01)
    # room = 10 - 1 (states) - 0.25 (fixed) - 1 (overhead) = 7.75 GiB -> 15 samples of 0.5 GiB
    assert row["max_micro_batch"] == 15 and row["fits"]
    assert plan(parts, acts, 16, Setup(gpu_memory_gib=10.0, overhead_gib=1.0))["fits"] is False


def test_saved_bytes_counts_what_autograd_keeps():
    """relu keeps its output (2x3 fp32 = 24 B); a linear keeps its input (2x4 fp32 = 32 B) only
    when its weight needs a gradient, and the weight itself is never counted."""
    lin = nn.Linear(4, 3, bias=False)
    x = torch.randn(2, 4, requires_grad=True)
    with saved_bytes(lin.parameters()) as trains:
        torch.relu(lin(x)).sum()
    assert trains.total == 24 + 32
    lin.requires_grad_(False)
    with saved_bytes(lin.parameters()) as frozen:
        torch.relu(lin(x)).sum()
    assert frozen.total == 24
    # attribution to the running module, and a storage saved twice counts once
    seq = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with saved_bytes(seq.parameters(), {"tanh": seq[1]}) as tagged:
        y = seq(x)
        (y * y).sum()  # mul saves y twice: one storage
    assert tagged.by_tag["tanh"] == 2 * 4 * 4  # tanh keeps its output
    assert tagged.by_tag["other"] == 2 * 4 * 4  # the linear's input x; y is the same storage as tanh's
    assert tagged.total == sum(tagged.by_tag.values())


def test_measurements_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GENHANCER_MEMORY_CACHE", str(tmp_path))
    calls = []

    def measure():
        calls.append(1)
        return {"per_sample": 3.0}

    key = {"slice": "x", "width": 8}
    first = memory.cached_measurement(key, measure)
    second = memory.cached_measurement(key, measure)
    assert calls == [1] and first["cached"] is False and second == {"per_sample": 3.0, "cached": True}
    memory.cached_measurement({"slice": "x", "width": 9}, measure)
    assert len(calls) == 2


def test_setup_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    s = memory.setup_from(argparse.Namespace(gpu_memory=24.0))
    assert (s.world_size, s.zero_stage, s.offload_optimizer, s.offload_params, s.gpu_memory_gib) == (
        8,
        3,
        True,
        True,
        24.0,
    )
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    s = memory.setup_from(argparse.Namespace(gpu_memory=None))
    assert (s.zero_stage, s.offload_optimizer, s.gpu_memory_gib) == (2, False, None)
    with pytest.raises(UserError, match="--gpu-memory must be > 0"):
        memory.setup_from(argparse.Namespace(gpu_memory=0.0))


def _describe(main, argv) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue())


def test_enhance_describe_prints_a_memory_plan_per_stage(tmp_path, monkeypatch):
    from enhance.cli import main

    monkeypatch.setenv("GENHANCER_MEMORY_CACHE", str(tmp_path))
    plan_ = _describe(main, ["--preset", "tiny", "--describe", "--gpu-memory", "4"])["memory_plan"]
    for stage in ("stage1", "stage2"):
        row = plan_[stage]
        assert row["activations_per_sample_gib"] > 0 and row["max_micro_batch"] >= 1
        assert row["total_gib"] == pytest.approx(
            row["weights_gib"]
            + row["gradients_gib"]
            + row["optimizer_gib"]
            + row["activations_gib"]
            + row["overhead_gib"],
            abs=0.02,
        )
    # stage 2 adds the tower's LoRA activations to the denoiser's
    assert plan_["stage2"]["activations_per_sample_by_part_gib"]["tower_layers"] > 0
    assert "tower_layers" not in plan_["stage1"]["activations_per_sample_by_part_gib"]
    assert len(list(tmp_path.glob("*.json"))) == 3  # FLUX trainable + frozen, tower: measured once


def test_llava_describe_prints_a_memory_plan_with_zero3(tmp_path, monkeypatch):
    from llava_integration.cli import main

    monkeypatch.setenv("GENHANCER_MEMORY_CACHE", str(tmp_path))
    one = _describe(main, ["--preset", "tiny", "--describe"])["memory_plan"]
    # the setup in effect comes from what accelerate launch exports (or the user sets by hand)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    eight = _describe(main, ["--preset", "tiny", "--describe"])["memory_plan"]
    assert eight["setup"].startswith("8 GPU(s), ZeRO-3")
    ft1, ft8 = one["finetune"], eight["finetune"]
    assert ft1["trainable"] == "full" and ft1["activations_per_sample_gib"] > 0
    assert ft8["optimizer_gib"] < ft1["optimizer_gib"] / 4  # 12 B / 8 GPUs vs 8 B on one
    # every row also lists the usual other setups: the one-GPU one is the plan itself, ZeRO-3 on
    # 8 GPUs splits the states (less), offload takes the optimiser states off the GPU (less again)
    alt = {r["setup"]: r for r in ft1["other_setups"]}
    assert alt["1 GPU(s), no ZeRO, fp32"]["total_gib"] == ft1["total_gib"] and len(alt) == 4
    zero3, offload = alt["8 GPU(s), ZeRO-3, fp32"], alt["8 GPU(s), ZeRO-3, fp32, offload optimizer+params"]
    assert offload["total_gib"] <= zero3["total_gib"] <= ft1["total_gib"]
    assert offload["optimizer_gib"] == offload["weights_gib"] == 0.0


@pytest.mark.parametrize("method", ["diva", "dcr", "naive-contrastive"])
def test_frozen_sd_methods_plan_the_unet_and_the_tower(method, tmp_path, monkeypatch):
    from enhance.cli import main

    monkeypatch.setenv("GENHANCER_MEMORY_CACHE", str(tmp_path))
    out = _describe(main, ["--method", method, "--preset", "tiny", "--describe", "--gpu-memory", "4"])
    stages = {k: v for k, v in out["memory_plan"].items() if k.startswith("stage")}
    assert stages and all(v["activations_per_sample_by_part_gib"]["unet_calls"] > 0 for v in stages.values())
    # the tower keeps activations only in the stage that trains it
    assert "tower_layers" in stages["stage2"]["activations_per_sample_by_part_gib"]
    if method == "dcr":  # B^2 + B UNet calls per micro-batch: per image B + 1
        row = stages["stage2"]
        assert (
            "B^2 + B" in row["activations_note"]
            and f"x {row['micro_batch'] + 1} calls" in row["activations_source"]
        )


def test_the_discrete_denoiser_is_planned_from_a_measured_perceiver_block(tmp_path, monkeypatch):
    """``tiny-discrete``: one encoder and one decoder block measured at the real width, scaled by
    depth (twice the encoder blocks: twice their bytes), the VQ tokenizer named as not counted."""
    from enhance.cli import main

    monkeypatch.setenv("GENHANCER_MEMORY_CACHE", str(tmp_path))
    rows = {}
    for layers in (2, 4):
        argv = ["--preset", "tiny-discrete", "--set", f"method.denoiser.num_layers={layers}", "--describe"]
        rows[layers] = _describe(main, [*argv, "--gpu-memory", "4"])["memory_plan"]["stage1"]
    parts = {n: r["activations_per_sample_by_part_gib"] for n, r in rows.items()}
    assert parts[2]["denoiser_encoder_blocks"] > 0 and parts[2]["denoiser_decoder_blocks"] > 0
    assert parts[4]["denoiser_encoder_blocks"] == pytest.approx(
        2 * parts[2]["denoiser_encoder_blocks"], rel=0.05
    )
    assert parts[4]["denoiser_decoder_blocks"] == parts[2]["denoiser_decoder_blocks"]
    assert rows[2]["max_micro_batch"] >= 1 and "VQ tokenizer" in rows[2]["not_counted"]
