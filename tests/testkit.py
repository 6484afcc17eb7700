"""Helpers test files import by this unique name (``tests/`` is on ``sys.path`` because the root
``conftest.py`` lives there). A bare ``from conftest import ...`` is ambiguous: several folders have
a ``conftest.py`` and whichever was imported first wins, depending on collection order."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def load_test_module(relative: str, name: str):
    """Import a test helper file by path under a unique module name (loaded once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def root_conftest():
    """``tests/conftest.py`` (the tiny factories) as a module."""
    return load_test_module("conftest.py", "_genhancer_tests_root_conftest")


def subprocess_env() -> dict[str, str]:
    """One CPU thread (bit-identical numerics across runs), offline hub."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def free_port() -> str:
    """A loopback TCP port that was free a moment ago (for torchrun's --master_port): fixed ports
    collide when two suites share a machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(procs: int) -> list[str]:
    """The command prefix that starts ``procs`` CPU processes under torchrun on a free port; a
    script path or ``-m MODULE`` follows it."""
    port = free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_port",
        port,
    ]


def module_launcher(procs: int) -> list[str]:
    """The command prefix that runs ``-m MODULE`` on ``procs`` CPU processes: the interpreter
    itself for one, :func:`torchrun` for more."""
    if procs == 1:
        return [sys.executable, "-m"]
    return [*torchrun(procs), "-m"]


def set_flags(items: Iterable[str]) -> list[str]:
    """``KEY=VALUE`` overrides as command-line flags: ``--set KEY=VALUE`` each."""
    return [x for item in items for x in ("--set", item)]


def tiny_enhance_flags(dirs, *extra: str) -> list[str]:
    """``enhance --preset tiny`` command-line flags pointed at the session's tiny models
    (``tmp_model_dirs``), 64-image toy world, then ``extra`` ``KEY=VALUE`` overrides."""
    root = root_conftest()
    sets = [
        f"backbone.name_or_path={dirs.clip}",
        f"backbone.image_size={root.TINY_IMAGE_SIZE}",
        f"method.vae.name_or_path={dirs.vae}",
        f"method.vae.latent_channels={root.TINY_LATENT_CHANNELS}",
        *root.TINY_DENOISER_OVERRIDES,
        "data.toyworld_size=64",
        f"cache_dir={dirs.cache}",
        *extra,
    ]
    return ["--preset", "tiny", *set_flags(sets)]


#: The files of one complete training checkpoint written by a single process.
CHECKPOINT_FILES = [
    "optimizer.json",
    "optimizer.safetensors",
    "rng_rank0.safetensors",
    "state.json",
    "weights.safetensors",
]
#: ``enhance`` overrides of the stage-1 resume tests, which compare runs step by step: every step
#: logged, every checkpoint kept, no previews or progress bar, full precision.
STEPWISE_SETS = [
    "checkpoint.keep_last=10",
    "logging.every=1",
    "logging.progress=false",
    "logging.preview_count=0",
    "train.mixed_precision='no'",
]
#: The exported tower's weights in a run folder (what a resumed run must reproduce).
TOWER_WEIGHTS = Path("export/vision_tower/model.safetensors")


def stage1_command(dirs, out: Path, procs: int, sets: list[str], resume: bool = False) -> list[str]:
    """``enhance --preset tiny --stage 1`` on ``procs`` processes into ``out``, with the ``sets``
    overrides (see :func:`tiny_enhance_flags`), resuming with ``resume``."""
    flags = [*tiny_enhance_flags(dirs, *sets), "--stage", "1", "--output-dir", str(out)]
    return [*module_launcher(procs), "enhance", *flags, *(["--resume"] if resume else [])]


def tiny_llava_sizes(samples: int = 8, batch: int = 2, per_device: int | None = None) -> list[str]:
    """``llava-train`` ``KEY=VALUE`` overrides: ``samples`` toy rows per stage, 2 eval rows, max
    length 96, a global batch of ``batch`` in both stages, ``per_device`` a forward (default:
    ``batch``, one micro-batch a step)."""
    micro = batch if per_device is None else per_device
    return [
        f"data.toy_pretrain_size={samples}",
        f"data.toy_finetune_size={samples}",
        "data.toy_eval_size=2",
        "data.max_length=96",
        f"pretrain.global_batch_size={batch}",
        f"pretrain.per_device_batch_size={micro}",
        f"finetune.global_batch_size={batch}",
        f"finetune.per_device_batch_size={micro}",
    ]


def tiny_llava_sets(llm, samples: int = 8, batch: int = 2, *extra: str) -> list[str]:
    """``llava-train --preset tiny`` ``KEY=VALUE`` overrides for a config-built LLM: ``samples`` toy
    rows per stage, batch ``batch`` (one micro-batch a step), no progress bar or toy eval."""
    return [
        f"model.llm={llm}",
        *tiny_llava_sizes(samples, batch),
        "logging.progress=false",
        "train.eval_toy=false",
        *extra,
    ]


def two_rank_llava_sets(llm, *extra: str) -> list[str]:
    """``llava-train`` ``KEY=VALUE`` overrides of the two-rank DeepSpeed runs: 16 toy rows and 2
    steps per stage at a global batch of 8 (2 ranks x 2 x accumulation 2), a checkpoint and a log
    line every step (all checkpoints kept), then ``extra``."""
    return [
        f"model.llm={llm}",
        "train.eval_toy=false",
        *tiny_llava_sizes(16, 8, per_device=2),
        "pretrain.steps=2",
        "finetune.steps=2",
        "checkpoint.every=1",
        "checkpoint.keep_last=10",
        "logging.every=1",
        "logging.progress=false",
        *extra,
    ]


def fit_fixed_batch(model, params, pixels, seed: int, steps: int) -> tuple[float, float]:
    """``model``'s training loss on ``pixels`` before and after ``steps`` AdamW steps (lr 3e-3 on
    ``params``), each on the same batch with the same noise (``torch.Generator().manual_seed(seed)``)."""
    import torch

    opt = torch.optim.AdamW(params, lr=3e-3)

    def loss() -> torch.Tensor:
        return model.training_forward(pixels, torch.Generator().manual_seed(seed))["loss"]

    with torch.no_grad():
        before = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = loss().item()
    return before, after
