"""perf.* switches: each still trains and gives the loss of the run without it (tiny, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from enhance.train import run

BASE = (
    "train.stages=[1,2]",
    "stage1.steps=2",
    "stage2.steps=2",
    "logging.every=1",
    "logging.preview_count=0",
    "checkpoint.every=100",
    "stage1.per_device_batch_size=4",
    "stage1.global_batch_size=4",
    "stage2.per_device_batch_size=4",
    "stage2.global_batch_size=4",
    "data.toyworld_size=16",
)


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tmp_model_dirs):
    from testkit import root_conftest

    build_tiny_enhance_config = root_conftest().build_tiny_enhance_config

    out = tmp_path_factory.mktemp("perf_base")
    run(build_tiny_enhance_config(tmp_model_dirs, list(BASE)), out)
    return _losses(out)


@pytest.mark.parametrize(
    ("flags", "rtol"),
    [
        (("perf.gradient_checkpointing=true",), 1e-5),
        (("perf.vae_dtype=bfloat16",), 0.05),  # bf16 latents: same curve within bf16 rounding
        (("perf.compile=true", "perf.compile_backend=aot_eager"), 1e-4),  # dynamo+autograd, no C++
    ],
    ids=["gradient_checkpointing", "vae_bf16", "compile"],
)
def test_flag_trains_with_the_same_loss(flags, rtol, baseline, tmp_path, tiny_enhance_config):
    cfg = tiny_enhance_config(*BASE, *flags)
    result = run(cfg, tmp_path)
    losses = _losses(tmp_path)
    assert len(losses) == len(baseline) == 4  # 2 steps of stage 1, 2 of stage 2
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses == pytest.approx(baseline, rel=rtol)
    assert result["export"] and (tmp_path / "export").is_dir()


def test_gradient_checkpointing_reaches_tower_and_denoiser(tiny_enhance_config):
    from enhance.model import enable_gradient_checkpointing
    from enhance.train import build_model

    model = build_model(tiny_enhance_config())
    assert enable_gradient_checkpointing(model) == ["tower", "denoiser"]
    assert model.denoiser.transformer.gradient_checkpointing


def test_vae_dtype_auto_is_float32_on_cpu(tiny_enhance_config):
    from enhance.model import resolve_vae_dtype, set_vae_dtype
    from enhance.train import build_model

    assert resolve_vae_dtype("auto", "cuda") is torch.bfloat16
    model = build_model(tiny_enhance_config())
    set_vae_dtype(model, "auto", "cpu")
    assert model.codec.vae.dtype is torch.float32
    set_vae_dtype(model, "bfloat16", "cpu")
    assert model.codec.vae.dtype is torch.bfloat16
    z = model.codec.encode(torch.zeros(1, 3, 64, 64))
    assert z.dtype is torch.float32


@pytest.mark.parametrize("sample", [True, False])
def test_cached_posterior_gives_the_on_the_fly_loss(sample, tiny_enhance_config):
    """Latent-cache building block: a batch carrying the stored VAE posterior trains to the same
    loss as encoding its pixels on the fly (same generator, same noise draws)."""
    from enhance.model import encode_posterior
    from enhance.train import build_model

    model = build_model(tiny_enhance_config())
    model.codec.sample_posterior = sample
    g = torch.Generator().manual_seed(0)
    size = model.backbone.image_size
    batch = {
        "pixel_values": torch.randn(3, 3, size, size, generator=g),
        "vae_pixels": torch.rand(3, 3, size, size, generator=g) * 2 - 1,
    }
    mean, logvar = encode_posterior(model.codec, batch["vae_pixels"])
    cached = {"pixel_values": batch["pixel_values"], "latent_mean": mean, "latent_logvar": logvar}
    on_the_fly = model.training_forward(batch, torch.Generator().manual_seed(7))["loss"]
    from_cache = model.training_forward(cached, torch.Generator().manual_seed(7))["loss"]
    assert from_cache.item() == pytest.approx(on_the_fly.item(), rel=1e-6)
