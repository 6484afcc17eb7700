"""The discrete denoiser (Alg. 2): masking, loss, conditioning, training and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from testkit import fit_fixed_batch

from enhance.denoisers.discrete import PerceiverDenoiser, masked_cross_entropy, sample_mask
from genhancer.runtime.errors import UserError

GRID = 8  # 32 px tower / VQ downsampling 4
CODES = 32


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory) -> Path:
    """A random tiny VQModel (3 blocks -> downsample 4, 32 codes) saved as ``DIR/vqvae``."""
    from diffusers import VQModel

    from genhancer.toyworld.models import TINY_VQ_RECIPE, tiny_vq_config

    root = tmp_path_factory.mktemp("vq")
    recipe = {**TINY_VQ_RECIPE, "block_out_channels": [8, 8, 8], "codebook_size": CODES, "image_size": 32}
    torch.manual_seed(0)
    VQModel(**tiny_vq_config(recipe)).save_pretrained(root / "vqvae", safe_serialization=True)
    return root


@pytest.fixture()
def discrete_config(tiny_enhance_config, vq_dir):
    def make(*overrides: str):
        return tiny_enhance_config(
            "method.denoiser.kind=discrete",
            f"method.denoiser.tokenizer={vq_dir}",
            "method.denoiser.num_layers=2",
            "method.denoiser.perceiver_hidden=32",
            "method.denoiser.perceiver_heads=2",
            *overrides,
        )

    return make


def _perceiver(**kw) -> PerceiverDenoiser:
    torch.manual_seed(0)
    return PerceiverDenoiser(
        codebook_size=CODES, grid_size=GRID, hidden_size=32, num_layers=2, num_heads=2, **kw
    )


def test_mask_ratio_falls_in_range():
    gen = torch.Generator().manual_seed(0)
    length = 196
    masked = sample_mask(4000, length, (0.5, 0.9), gen)
    frac = masked.float().mean(dim=1)
    assert frac.min() >= 0.5 - 0.5 / length and frac.max() <= 0.9 + 0.5 / length
    # drawn per sample, covering the range rather than sitting at one value
    assert frac.std() > 0.1 and frac.min() < 0.52 and frac.max() > 0.88
    # positions are spread over the grid, not a fixed block
    assert masked.float().mean(dim=0).std() < 0.03


def test_mask_never_hides_everything_or_nothing():
    gen = torch.Generator().manual_seed(1)
    masked = sample_mask(500, 4, (0.01, 0.99), gen)
    counts = masked.sum(dim=1)
    assert counts.min() >= 1 and counts.max() <= 3


def test_loss_reads_masked_positions_only():
    codes = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    masked = torch.tensor([[True, False, True, False], [False, False, False, True]])
    logits = torch.randn(2, 4, 5)
    # by hand: mean over the three masked positions of -log softmax(logit)[code]
    picks = [(0, 0), (0, 2), (1, 3)]
    expected = torch.stack([-F.log_softmax(logits[b, i], -1)[codes[b, i]] for b, i in picks]).mean()
    assert torch.allclose(masked_cross_entropy(logits, codes, masked), expected)
    scrambled = logits.clone()
    scrambled[~masked] = torch.randn_like(scrambled[~masked]) * 100  # unmasked logits are irrelevant
    assert torch.allclose(masked_cross_entropy(scrambled, codes, masked), expected)


def _perceiver_and_inputs():
    """An eval-mode :func:`_perceiver` and seeded codes, mask and global token for 2 images."""
    model = _perceiver().eval()
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, CODES, (2, GRID * GRID), generator=gen)
    masked = sample_mask(2, GRID * GRID, (0.5, 0.9), gen)
    cond = torch.randn(2, 1, 32, generator=gen)
    return model, codes, masked, cond


def test_global_token_reaches_the_logits():
    model, codes, masked, cond = _perceiver_and_inputs()
    a = model(codes, masked, cond)
    b = model(codes, masked, cond + 1.0)
    assert a.shape == (2, GRID * GRID, CODES)
    assert not torch.allclose(a[masked], b[masked])


def test_masked_codes_do_not_leak():
    model, codes, masked, cond = _perceiver_and_inputs()
    other = torch.where(masked, (codes + 7) % CODES, codes)  # change only what is hidden
    assert torch.equal(model(codes, masked, cond), model(other, masked, cond))


def test_discrete_run_keeps_tower_frozen_in_stage1_and_logs_accuracy(
    tmp_path, discrete_config, tmp_model_dirs
):
    from enhance.train import run

    run(discrete_config("train.stages=[1]", "stage1.steps=3"), tmp_path)
    base = {
        k: v for k, v in load_file(tmp_model_dirs.clip / "model.safetensors").items() if "vision_model" in k
    }
    exported = load_file(tmp_path / "export" / "hf" / "model.safetensors")
    assert all(torch.equal(base[k], exported[k]) for k in base)
    import json

    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["masked_acc"] <= 1.0 for r in records)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "denoiser",
        "genhancer_export.json",
        "hf",
        "vision_tower",
    ]
    assert list((tmp_path / "previews").glob("*.png"))


def test_discrete_stage2_moves_the_tower(tmp_path, discrete_config, tmp_model_dirs):
    from enhance.train import run

    run(discrete_config("stage2.lr=1e-2"), tmp_path)
    base = load_file(tmp_model_dirs.clip / "model.safetensors")
    exported = load_file(tmp_path / "export" / "hf" / "model.safetensors")
    assert any(not torch.equal(base[k], exported[k]) for k in base if "vision_model.encoder" in k)


def test_discrete_loss_falls_on_a_fixed_batch(discrete_config, tiny_pixels):
    from enhance.stages import configure_stage
    from enhance.train import build_model

    cfg = discrete_config()
    model = build_model(cfg)
    before, after = fit_fixed_batch(model, configure_stage(model, 1, cfg), tiny_pixels, seed=3, steps=30)
    assert after < 0.5 * before


@pytest.mark.parametrize(
    ("override", "numbers"),
    [("method.denoiser.codebook_size=64", ("32", "64")), ("method.denoiser.token_grid=16", ("8x8", "16"))],
)
def test_tokenizer_mismatch_names_both_numbers(discrete_config, override, numbers):
    from enhance.train import build_model

    with pytest.raises(UserError) as err:
        build_model(discrete_config(override))
    for n in numbers:
        assert n in str(err.value)


def test_discrete_without_tokenizer_is_a_user_error(tiny_enhance_config):
    from enhance.train import build_model

    with pytest.raises(UserError, match="denoiser.tokenizer"):
        build_model(
            tiny_enhance_config(
                "method.denoiser.kind=discrete",
                "method.denoiser.perceiver_hidden=32",
                "method.denoiser.perceiver_heads=2",
            )
        )
