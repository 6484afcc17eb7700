"""bench/dcr_negatives_gradient.py on the tiny DCR fixture: its loss is the model's own training
loss, its draws are shared by every negatives option (a repeat is bit-identical), sampled negatives
with K = B-1 give the exact gradient, and fewer give a different but aligned one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dcr_negatives_gradient.py"
B = 4


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dcr_negatives_gradient", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _batch(seed: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(B, 3, size, size, generator=g) * 2 - 1
    return {"pixel_values": pixels.clone(), "vae_pixels": pixels}


@pytest.fixture()
def stage2(tiny_method_config):
    """(model in train mode at the start of stage 2, its trainable parameters, two batches)."""
    from enhance.stages import configure_stage
    from enhance.train import build_model

    cfg = tiny_method_config("dcr")
    model = build_model(cfg)
    params = configure_stage(model, 2, cfg)
    model.train()
    size = model.backbone.image_size
    return model, params, [_batch(1, size), _batch(2, size)]


def test_the_bench_loss_is_the_training_loss_under_exact(stage2):
    """The bench re-draws the negatives from their own generator; exact draws none, so its loss
    must be ``training_forward``'s on the same seed, bit for bit."""
    bench = _load()
    model, _, batches = stage2
    torch.manual_seed(7)
    ours = bench.stage2_loss(model, batches[0], 7, neg_seed=123)
    torch.manual_seed(7)
    theirs = model.training_forward(batches[0], torch.Generator().manual_seed(7))["loss"]
    assert torch.equal(ours, theirs)


def test_sampled_with_all_negatives_is_exact_and_fewer_stay_aligned(stage2):
    bench = _load()
    model, params, batches = stage2
    m = bench.measure(model, params, batches, ks=[1, B - 1], draws=2, seed=0)
    assert m["repeat_max_abs_diff"] == 0.0  # same seed, same draws: the same gradient, bit for bit
    one, full = m["sampled"]
    assert (full["k"], full["unet_calls"], full["calls_vs_exact"]) == (B - 1, B * B + B, 1.0)
    assert min(full["raw_cos"]) > 1 - 1e-6
    assert max(abs(r - 1) for r in full["raw_norm_ratio"]) < 1e-4
    assert abs(full["loss"]["mean"] - m["exact"]["loss"]["mean"]) < 1e-5
    # K = 1: another loss (a smaller denominator) and another gradient, positively correlated
    assert one["unet_calls"] == B * 2 + B and one["loss"]["mean"] < m["exact"]["loss"]["mean"] - 0.1
    assert all(0 < c < 1 - 1e-5 for c in one["raw_cos"])
    assert model.dcr.negatives == "exact"  # the bench leaves the model's section as it found it
