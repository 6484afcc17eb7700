"""Two CPU processes (gloo) run ``llava-train`` on the tiny tower and LM: same losses, same weights
as one process with the same global batch.

Launched with ``torchrun --nproc_per_node 2`` (see ``test_multiprocess.py``: accelerate 1.15's
``launch --cpu --num_processes 2`` starts a single process).

The reference is one process with the same global batch (4) *and the same micro-batches*:
per-device 2 with gradient accumulation 2, against 2 ranks of per-device 2. The LM loss of a
micro-batch is the mean over its answer tokens, so one process with per-device 4 would weight the
samples differently from the mean of two per-rank means that DDP (like LLaVA / the HF Trainer)
computes (measured with these sizes: 1.5e-3 relative on the first loss, before any update, and up
to 2 % relative norm on a final weight tensor), a property of the loss, not of the distributed run. ``data.group_by_modality_length`` is off because the grouped
order depends on per-device batch x processes (LLaVA's megabatch), which would give the
accumulating single process other micro-batches.

With identical micro-batches the arithmetic is the same operation for operation: the 1/2 of the
accumulation or of DDP's averaging is exact, and a sum of two terms does not depend on its order.
Measured on CPU with one thread: losses, gradient norms and weights bit-identical. The tolerances
below (1e-6 relative on losses, 1e-5 on weights) leave room for another build to reassociate a
reduction; a wrong data split or a missing gradient sync shows up at 1e-3 and more.

``train.seed=5`` with half the finetune samples text-only puts an all-text step (no rank calls the
projector) and a step where one rank holds text only in the run: DDP failed on both before
``llava-train`` turned on ``find_unused_parameters`` (a collective mismatch, then "Expected to have
finished reduction in the prior iteration"). The test checks that the data still covers them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit import load_test_module, subprocess_env, torchrun

from genhancer.runtime import checkpoint as ckpt

pytestmark = pytest.mark.slow

SEED = 5
PRETRAIN_STEPS, FINETUNE_STEPS = 3, 4
PER_DEVICE, GLOBAL = 2, 4


def _args(parts: dict[str, Path]) -> list[str]:
    sets = [
        f"model.llm={parts['llm']}",
        f"train.seed={SEED}",
        "train.eval_toy=false",
        "data.toy_pretrain_size=16",
        "data.toy_finetune_size=16",
        "data.toy_eval_size=2",
        "data.toy_text_only_fraction=0.5",
        "data.max_length=96",
        "data.group_by_modality_length=false",
        f"pretrain.steps={PRETRAIN_STEPS}",
        f"finetune.steps={FINETUNE_STEPS}",
        f"pretrain.global_batch_size={GLOBAL}",
        f"finetune.global_batch_size={GLOBAL}",
        f"pretrain.per_device_batch_size={PER_DEVICE}",
        f"finetune.per_device_batch_size={PER_DEVICE}",
        "checkpoint.every=2",
        "checkpoint.keep_last=20",
        "logging.every=1",
        "logging.progress=false",
    ]
    out = ["--preset", "tiny", "--vision-tower", str(parts["tower"])]
    for item in sets:
        out += ["--set", item]
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _rank_modalities(run: Path) -> list[list[str]]:
    """Per finetune step, per rank: "image" when the rank's micro-batch holds an image, else "text"."""
    from genhancer.runtime.seeding import derive_seed
    from llava_integration.data import SampleOrder, load_records

    records = load_records(run / "data" / "finetune.json")
    order = SampleOrder(records, derive_seed("data", SEED, "finetune"), PER_DEVICE * 2, False)
    steps = []
    for s in range(FINETUNE_STEPS):
        ranks = []
        for r in range(2):
            g = s * 2 + r  # micro-batch g of rank r (LlavaStream: g = m * world + rank)
            idx = [order[k] for k in range(g * PER_DEVICE, (g + 1) * PER_DEVICE)]
            ranks.append("image" if any(records[i].image for i in idx) else "text")
        steps.append(ranks)
    return steps


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(a)


def test_llava_train_two_cpu_processes_match_one(tmp_path):
    parts_mod = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    parts = {"tower": parts_mod.make_tower(tmp_path / "tower"), "llm": parts_mod.make_llm(tmp_path / "llm")}
    args = _args(parts)
    env = subprocess_env()
    two, one = tmp_path / "two", tmp_path / "one"
    subprocess.run(
        [*torchrun(2), "-m", "llava_integration", *args, "--output-dir", str(two)],
        check=True,
        timeout=600,
        env=env,
    )
    subprocess.run(
        [sys.executable, "-m", "llava_integration", *args, "--output-dir", str(one)],
        check=True,
        timeout=600,
        env=env,
    )

    layout = _rank_modalities(two)
    assert ["text", "text"] in layout and any(sorted(s) == ["image", "text"] for s in layout), layout

    # Logs are written by the main process only: one record per step, not one per rank.
    m2, m1 = _metrics(two), _metrics(one)
    expected = [("pretrain", s) for s in range(1, PRETRAIN_STEPS + 1)]
    expected += [("finetune", s) for s in range(1, FINETUNE_STEPS + 1)]
    assert [(r["stage"], r["step"]) for r in m2] == expected
    assert [(r["stage"], r["step"]) for r in m1] == expected
    for a, b in zip(m1, m2):
        assert _close(a["loss"], b["loss"], 1e-6), (a, b)
        assert _close(a["grad_norm"], b["grad_norm"], 1e-5), (a, b)
        assert a["lr"] == b["lr"]
    # The per-rank data counters add up to the single process's.
    r2, r1 = (json.loads((d / "report.json").read_text()) for d in (two, one))
    assert r2["stages"] == r1["stages"]

    last = f"finetune_step{FINETUNE_STEPS:07d}"
    for a, b in [
        (load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")),
        (ckpt.load_weights(one / "checkpoints" / last), ckpt.load_weights(two / "checkpoints" / last)),
    ]:
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7, msg=k)

    # Every rank's data position and RNG state are in the checkpoint; the single run holds one.
    state = ckpt.read_state(two / "checkpoints" / last)
    assert state["world_size"] == 2 and state["positions"] == [FINETUNE_STEPS * PER_DEVICE] * 2
    assert ckpt.read_state(one / "checkpoints" / last)["positions"] == [FINETUNE_STEPS * GLOBAL]
    assert sorted(p.name for p in (two / "checkpoints" / last).glob("rng_rank*")) == [
        "rng_rank0.safetensors",
        "rng_rank1.safetensors",
    ]

    from PIL import Image

    from llava_integration.inference import LlavaRunner

    runner = LlavaRunner.load(two / "final", device="cpu")
    (answer,) = runner.generate([Image.new("RGB", (32, 32), "red")], "What color is it?", max_new_tokens=3)
    assert isinstance(answer, str)
