"""LoRA under DeepSpeed ZeRO-3 with CPU offload, and under ZeRO-2: ``llava-train`` on two CPU
processes (gloo).

The settings are those of ``llava_integration/accelerate/ds_zero3_offload.yaml`` (ZeRO-3, optimizer
state and parameters offloaded to the CPU), passed the way ``accelerate launch`` passes a config
file on (environment variables), with the launcher of ``test_deepspeed_cpu.py``. Checks:

* the losses equal those of the same run under DDP (same micro-batches and draws) within 1e-5;
* ``DIR/final`` loads in transformers as a plain ``LlavaForConditionalGeneration`` whose every
  adapted LM linear equals the base model's weight + ``B @ A * alpha / r`` of the LoRA weights in
  the finetune's final checkpoint (gathered from the partitions), and whose frozen weights equal
  the base model's; the DDP run's peft-merged model agrees to 1e-5;
* a resume inside finetune (engine state: partitioned, offloaded optimizer) gives the same
  metrics and the same ``DIR/final``, bit for bit;
* under ZeRO-2 the same losses (1e-5) and the same merge check.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit import load_test_module, set_flags, torchrun, two_rank_llava_sets

pytestmark = pytest.mark.slow

ds_cpu = load_test_module("e2e/test_deepspeed_cpu.py", "_genhancer_tests_deepspeed_cpu")

R, ALPHA = 4, 8
ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _env(zero_stage: int | None) -> dict[str, str]:
    """DDP (None), ZeRO-2, or ZeRO-3 with the optimizer and parameters offloaded to the CPU."""
    env = ds_cpu._env(zero_stage)
    if zero_stage == 3:
        env.update(
            ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE="cpu",
            ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE="cpu",
        )
    return env


def _run(tmp_path: Path, args: list[str], out: Path, zero_stage: int | None, resume: bool = False) -> None:
    launcher = tmp_path / "ds_launch.py"
    launcher.write_text(ds_cpu._LAUNCHER)
    target = [str(launcher), "llava_integration"] if zero_stage else ["-m", "llava_integration"]
    cmd = [*torchrun(2), *target, *args, "--output-dir", str(out), *(["--resume"] if resume else [])]
    subprocess.run(cmd, check=True, timeout=600, env=_env(zero_stage))


def _check_merged(run: Path, llm: Path) -> None:
    """``run/final`` is a plain LLaVA whose adapted LM linears are base + B @ A * alpha / r of the
    finetune's final checkpoint, and whose other weights are the base model's."""
    from transformers import LlavaForConditionalGeneration

    final = load_file(run / "final" / "model.safetensors")
    assert not [k for k in final if "lora_" in k or "base_layer" in k]
    LlavaForConditionalGeneration.from_pretrained(run / "final")
    base = load_file(llm / "model.safetensors")
    lora = load_file(run / "checkpoints" / "finetune_step0000002" / "weights.safetensors")
    prefix = "llava.model.language_model.base_model.model."
    merged = 0
    for key, w in base.items():  # the saved file keeps LLaVA's original key layout
        out = final[f"language_model.{key}"]
        layer = key.removeprefix("model.").removesuffix(".weight")
        if layer.split(".")[-1] in ADAPTED:
            a = lora[f"{prefix}{layer}.lora_A.default.weight"]
            b = lora[f"{prefix}{layer}.lora_B.default.weight"]
            assert b.abs().max() > 0  # trained: B starts at zero
            assert torch.equal(out, w + (b @ a) * (ALPHA / R)), key
            assert not torch.equal(out, w), key
            merged += 1
        else:  # embeddings, norms, lm_head: frozen (the image token's row is added by the build)
            assert torch.equal(out[: w.shape[0]], w), key
    assert merged == 2 * len(ADAPTED)  # two layers of the tiny Llama
    projector = {k.removeprefix("llava.model."): v for k, v in lora.items() if "multi_modal_projector" in k}
    assert len(projector) == 4 and all(torch.equal(final[k], v) for k, v in projector.items())


def test_llava_lora_under_zero3_offload_and_zero2(tmp_path):
    parts = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    tower, llm = parts.make_tower(tmp_path / "tower"), parts.make_llm(tmp_path / "llm")
    sets = two_rank_llava_sets(
        llm, "finetune.trainable=lora", f"finetune.lora_r={R}", f"finetune.lora_alpha={ALPHA}"
    )
    args = ["--preset", "tiny", "--vision-tower", str(tower), *set_flags(sets)]
    ds, ddp = tmp_path / "ds", tmp_path / "ddp"
    _run(tmp_path, args, ds, zero_stage=3)
    _run(tmp_path, args, ddp, zero_stage=None)
    ds_cpu._same_metrics(ddp, ds, rel=1e-5)
    _check_merged(ds, llm)
    ds_cpu._same_weights(ddp / "final" / "model.safetensors", ds / "final" / "model.safetensors", exact=False)

    # resume inside finetune from the engine state (partitioned, offloaded)
    run = ds_cpu._resume_copy(
        ds, tmp_path / "resumed", ["checkpoints/finetune_step0000002"], ["final", "report.json"]
    )
    _run(tmp_path, args, run, zero_stage=3, resume=True)
    ds_cpu._same_metrics(ds, run, rel=0.0)
    ds_cpu._same_weights(ds / "final" / "model.safetensors", run / "final" / "model.safetensors", exact=True)

    # ZeRO-2 (parameters whole on every rank, the weights gathered the same way at stage ends)
    zero2 = tmp_path / "zero2"
    _run(tmp_path, args, zero2, zero_stage=2)
    ds_cpu._same_metrics(ddp, zero2, rel=1e-5)
    _check_merged(zero2, llm)
