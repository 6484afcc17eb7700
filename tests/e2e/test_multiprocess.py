"""Two CPU processes (gloo) run the tiny enhance preset.

Launched with ``torchrun --nproc_per_node 2``: accelerate 1.15's ``launch --cpu --num_processes 2``
starts a single process. ``Accelerator`` reads the torchrun environment either way.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from testkit import tiny_enhance_flags, torchrun

pytestmark = pytest.mark.slow

COMMON = [
    "--set",
    "stage1.steps=4",
    "--set",
    "stage2.steps=2",
    "--set",
    "stage1.global_batch_size=8",
    "--set",
    "stage2.global_batch_size=8",
    "--set",
    "checkpoint.every=2",
    "--set",
    "logging.every=1",
    "--set",
    "logging.progress=false",
    "--set",
    "logging.preview_count=2",
]


def _metrics(path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_two_cpu_processes_match_one(tmp_path, tmp_model_dirs):
    base = [*tiny_enhance_flags(tmp_model_dirs), *COMMON]
    two = tmp_path / "two"
    subprocess.run(
        [
            *torchrun(2),
            "-m",
            "enhance",
            *base,
            "--set",
            "stage1.per_device_batch_size=4",
            "--set",
            "stage2.per_device_batch_size=4",
            "--output-dir",
            str(two),
        ],
        check=True,
        timeout=900,
    )
    one = tmp_path / "one"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "enhance",
            *base,
            "--set",
            "stage1.per_device_batch_size=8",
            "--set",
            "stage2.per_device_batch_size=8",
            "--output-dir",
            str(one),
        ],
        check=True,
        timeout=900,
    )
    m2, m1 = _metrics(two), _metrics(one)
    # Logs are written by the main process only: one record per step, not one per rank.
    assert [(r["stage"], r["step"]) for r in m2] == [(r["stage"], r["step"]) for r in m1]
    # Both see the same images each step (ranks split the same global batch); noise and timesteps
    # are drawn per rank, so losses agree only statistically: within 15 % at every step.
    for a, b in zip(m1, m2):
        assert abs(a["loss"] - b["loss"]) <= 0.15 * a["loss"], (a, b)
    from transformers import AutoModel

    AutoModel.from_pretrained(two / "export" / "hf")
    state = json.loads((two / "checkpoints" / "stage2_step0000002" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["positions"]) == 2
    assert sorted(p.name for p in (two / "checkpoints" / "stage2_step0000002").glob("rng_rank*")) == [
        "rng_rank0.safetensors",
        "rng_rank1.safetensors",
    ]


_SYNC_SCRIPT = """
import sys
from pathlib import Path

import torch

sys.path.insert(0, {tests!r})
from conftest import TinyModelDirs, build_tiny_enhance_config

import enhance.train as train
import genhancer.runtime.driver as driver
import genhancer.runtime.trainer as trainer

root = Path({root!r})
dirs = TinyModelDirs(root=root, clip=Path({clip!r}), siglip=Path({clip!r}), open_clip_json=root / "x.json",
                     vae=Path({vae!r}), cache=root / "cache")
cfg = build_tiny_enhance_config(dirs, ["train.stages=[1]", "stage1.steps=3", "stage1.global_batch_size=8",
                                       "stage1.per_device_batch_size=4", "logging.preview_count=0"])
class Spy(trainer.Loop):
    def run(self):
        state = super().run()
        inner = getattr(self.model, "module", self.model)
        weights = {{k: v.detach().clone() for k, v in inner.projector.state_dict().items()}}
        torch.save(weights, root / f"rank{{self.accelerator.process_index}}.pt")
        return state


driver.Loop = Spy
train.run(cfg, root / "run")
"""


def test_ranks_hold_identical_weights_after_training(tmp_path, tmp_model_dirs):
    """DDP syncs gradients only when the trainer calls the wrapper's forward; a direct call to the
    inner module's method trains each rank on its own gradients and the ranks drift apart."""
    import torch

    script = tmp_path / "sync.py"
    tests_dir = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    script.write_text(
        _SYNC_SCRIPT.format(
            tests=tests_dir, root=str(tmp_path), clip=str(tmp_model_dirs.clip), vae=str(tmp_model_dirs.vae)
        )
    )
    subprocess.run(
        [*torchrun(2), str(script)],
        check=True,
        timeout=900,
    )
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_rank_whose_micro_batch_is_all_unreadable_keeps_step_with_the_others(tmp_path, tmp_model_dirs):
    """Rank 1's second micro-batch holds only broken files: it must still join that step's
    gradient all-reduce (a zero-weight pass), or the ranks fall out of step and hang."""
    import numpy as np
    from PIL import Image
    from testkit import subprocess_env

    from enhance.data.loading import build_source
    from genhancer.runtime.seeding import derive_seed

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    source = build_source("imagefolder", str(images))
    (segment,) = source.segments(0, derive_seed("data", 0, 1), 1, 2, True)  # train.seed 0, stage 1
    rank1 = [ref.uid for ref in segment.items(0)]
    for uid in rank1[2:4]:  # positions 3 and 4 of rank 1: its whole second micro-batch of 2
        (images / uid).write_bytes(b"broken")
    flags = tiny_enhance_flags(
        tmp_model_dirs,
        "data.source=imagefolder",
        f"data.path={images}",
        "data.num_workers=0",
        "train.stages=[1]",
        "stage1.steps=3",
        "stage1.global_batch_size=4",
        "stage1.per_device_batch_size=2",
        "logging.every=1",
        "logging.preview_count=0",
        "logging.progress=false",
        "checkpoint.every=100",
    )
    subprocess.run(
        [
            *torchrun(2),
            "-m",
            "enhance",
            *flags,
            "--output-dir",
            str(tmp_path / "run"),
        ],
        check=True,
        timeout=300,  # the bug was a hang
        env=subprocess_env(),
    )
    records = _metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["skipped_images"] == 2 and all(np.isfinite(r["loss"]) for r in records)
