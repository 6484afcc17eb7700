"""DeepSpeed on two CPU processes (gloo): ``enhance`` with ZeRO-2, ``llava-train`` with ZeRO-3.

``make test-slow`` (and so CI) installs DeepSpeed from ``requirements/lock-deepspeed-*.txt`` with
the CPU-only build (``DS_BUILD_OPS=0``, ``make deepspeed``) and sets ``GENHANCER_REQUIRE_DEEPSPEED=1``,
under which a missing ``deepspeed`` fails these tests instead of skipping them. Each run is compared with the same two-process run under DDP,
which trains on the same micro-batches with the same per-rank noise, so losses agree to float
precision; a resume from a checkpoint written under DeepSpeed must give the same final weights.

``train.run`` creates ``Accelerator(cpu=True)`` without CUDA, and accelerate enables DeepSpeed
only when ``cpu`` is false; with ``cpu=False`` it needs an explicit backend (gloo) or every rank
believes it is rank 0 of 1. ``_LAUNCHER`` passes both inside the test processes. (DeepSpeed's
broadcast of 0-dim parameters, which fails on GPUs too, is handled by the package:
``genhancer.runtime.deepspeed_compat``.)

The ZeRO settings are those of the shipped configs, given the way ``accelerate launch`` passes a
config file on (environment variables); ``accelerate launch`` itself is not used because 1.15's
``launch --cpu --num_processes 2`` starts a single process (see ``test_multiprocess.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit import load_test_module, root_conftest, set_flags, subprocess_env, torchrun, two_rank_llava_sets

pytestmark = pytest.mark.slow

try:
    import deepspeed  # noqa: F401
except ImportError as exc:
    if os.environ.get("GENHANCER_REQUIRE_DEEPSPEED") == "1":
        raise RuntimeError(f"GENHANCER_REQUIRE_DEEPSPEED=1 but deepspeed does not import: {exc}") from exc
    pytest.skip(f"deepspeed does not import ({exc}); `make deepspeed` installs it", allow_module_level=True)

_LAUNCHER = """
import runpy
import sys

import accelerate
from accelerate.utils import InitProcessGroupKwargs

real_init = accelerate.Accelerator.__init__


def init(self, *args, **kwargs):
    kwargs["cpu"] = False
    kwargs["kwargs_handlers"] = [*(kwargs.get("kwargs_handlers") or []), InitProcessGroupKwargs(backend="gloo")]
    real_init(self, *args, **kwargs)


accelerate.Accelerator.__init__ = init
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _env(zero_stage: int | None) -> dict[str, str]:
    env = subprocess_env()
    env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    if zero_stage is not None:
        env.update(
            ACCELERATE_USE_DEEPSPEED="true",
            ACCELERATE_DEEPSPEED_ZERO_STAGE=str(zero_stage),
            ACCELERATE_GRADIENT_ACCUMULATION_STEPS="1",
            ACCELERATE_GRADIENT_CLIPPING="1.0",
            ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE="none",
            ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE="none",
            ACCELERATE_DEEPSPEED_ZERO3_INIT="false",
            ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL="true",
        )
    return env


def _run(tmp_path: Path, module: str, args: list[str], out: Path, zero_stage: int | None, resume=False):
    launcher = tmp_path / "ds_launch.py"
    launcher.write_text(_LAUNCHER)
    target = [str(launcher), module] if zero_stage is not None else ["-m", module]
    cmd = [*torchrun(2), *target, *args, "--output-dir", str(out), *(["--resume"] if resume else [])]
    subprocess.run(cmd, check=True, timeout=600, env=_env(zero_stage))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_metrics(a: Path, b: Path, rel: float) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [(r["stage"], r["step"]) for r in ma] == [(r["stage"], r["step"]) for r in mb]
    for x, y in zip(ma, mb):
        assert abs(x["loss"] - y["loss"]) <= rel * abs(x["loss"]), (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) <= 1e-5 * max(abs(x["grad_norm"]), 1e-6), (x, y)
        assert x["lr"] == y["lr"]


def _same_weights(a: Path, b: Path, exact: bool) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys() and all(v.numel() for v in wb.values())
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


def _resume_copy(run: Path, dst: Path, drop: list[str], outputs: list[str]) -> Path:
    """``run`` as a crash would leave it: without the checkpoints in ``drop`` and the ``outputs``."""
    shutil.copytree(run, dst)
    for name in [*drop, *outputs]:
        shutil.rmtree(dst / name, ignore_errors=True)
    return dst


def _deepspeed_and_ddp(tmp_path: Path, module: str, args: list[str], zero_stage: int) -> tuple[Path, Path]:
    """``args`` run under DeepSpeed ZeRO-``zero_stage`` (``ds``) and under DDP (``ddp``); the
    metrics of the two runs agree within 1e-5."""
    ds, ddp = tmp_path / "ds", tmp_path / "ddp"
    _run(tmp_path, module, args, ds, zero_stage=zero_stage)
    _run(tmp_path, module, args, ddp, zero_stage=None)
    _same_metrics(ddp, ds, rel=1e-5)
    return ds, ddp


def test_enhance_zero2(tmp_path, tmp_model_dirs):
    c = root_conftest()
    sets = [
        f"backbone.name_or_path={tmp_model_dirs.clip}",
        f"backbone.image_size={c.TINY_IMAGE_SIZE}",
        f"method.vae.name_or_path={tmp_model_dirs.vae}",
        f"cache_dir={tmp_model_dirs.cache}",
        *c.TINY_DENOISER_OVERRIDES,
        "data.toyworld_size=64",
        "stage1.steps=3",
        "stage2.steps=2",
        "stage1.global_batch_size=16",  # 2 ranks x 4 x accumulation 2
        "stage2.global_batch_size=16",
        "stage1.per_device_batch_size=4",
        "stage2.per_device_batch_size=4",
        "checkpoint.every=1",
        "checkpoint.keep_last=10",
        "logging.every=1",
        "logging.progress=false",
        "logging.preview_count=0",
    ]
    args = ["--preset", "tiny", *set_flags(sets)]
    ds, ddp = _deepspeed_and_ddp(tmp_path, "enhance", args, zero_stage=2)
    vision = Path("export/vision_tower/model.safetensors")
    _same_weights(ddp / vision, ds / vision, exact=False)

    # Every rank wrote its engine shard; the final checkpoint of a stage holds the weights too.
    ck = ds / "checkpoints"
    assert sorted(p.name for p in (ck / "stage1_step0000002" / "engine").rglob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert (ck / "stage1_step0000003" / "weights.safetensors").is_file()

    # Resume from the end of stage 1 (weights only) and from inside stage 2 (engine state).
    later = ["checkpoints/stage2_step0000001", "checkpoints/stage2_step0000002"]
    for name, drop in [("after_stage1", later), ("in_stage2", later[1:])]:
        run = _resume_copy(ds, tmp_path / name, drop, ["export"])
        _run(tmp_path, "enhance", args, run, zero_stage=2, resume=True)
        _same_metrics(ds, run, rel=0.0)
        _same_weights(ds / vision, run / vision, exact=True)


def test_llava_train_zero3(tmp_path):
    parts_mod = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    tower, llm = parts_mod.make_tower(tmp_path / "tower"), parts_mod.make_llm(tmp_path / "llm")
    sets = two_rank_llava_sets(llm)  # finetune step 2 holds a text-only micro-batch on rank 1 only
    args = ["--preset", "tiny", "--vision-tower", str(tower), *set_flags(sets)]
    ds, ddp = _deepspeed_and_ddp(tmp_path, "llava_integration", args, zero_stage=3)
    final = Path("final/model.safetensors")
    # Gathered from the ZeRO-3 partitions: every tensor whole, the same as under DDP.
    _same_weights(ddp / final, ds / final, exact=False)
    _same_weights(ddp / "pretrain/projector.safetensors", ds / "pretrain/projector.safetensors", exact=False)
    from transformers import LlavaForConditionalGeneration

    LlavaForConditionalGeneration.from_pretrained(ds / "final")

    # Resume after pretrain (weights only) and inside finetune (engine state).
    later = ["checkpoints/finetune_step0000001", "checkpoints/finetune_step0000002"]
    for name, drop in [("after_pretrain", later), ("in_finetune", later[1:])]:
        run = _resume_copy(ds, tmp_path / name, drop, ["final", "report.json"])
        _run(tmp_path, "llava_integration", args, run, zero_stage=3, resume=True)
        _same_metrics(ds, run, rel=0.0)
        _same_weights(ds / final, run / final, exact=True)
