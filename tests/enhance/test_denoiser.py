"""Continuous denoiser: 2x2 packing against a hand loop, FLUX position ids, the tiny forward pass,
conditioning, and the paper-size parameter count on the meta device (Table 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from enhance.config import load_config
from enhance.denoisers.continuous import (
    ContinuousDenoiser,
    build_continuous_denoiser,
    flux_kwargs,
    image_position_ids,
    pack_latents,
    unpack_latents,
)
from enhance.methods.genhancer.model import build_genhancer
from genhancer.runtime.errors import UserError

LATENT_C = 16


def _hand_pack(z: torch.Tensor) -> torch.Tensor:
    """Token (i, j) of the packed grid, row-major; features channel-major over its 2x2 patch."""
    b, c, h, w = z.shape
    out = torch.empty(b, (h // 2) * (w // 2), 4 * c, dtype=z.dtype)
    for n in range(b):
        for i in range(h // 2):
            for j in range(w // 2):
                feats = [
                    z[n, ch, 2 * i + di, 2 * j + dj] for ch in range(c) for di in (0, 1) for dj in (0, 1)
                ]
                out[n, i * (w // 2) + j] = torch.stack(feats)
    return out


def test_pack_latents_matches_a_hand_loop():
    z = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(z)
    assert packed.shape == (2, 2 * 3, 12)
    assert torch.equal(packed, _hand_pack(z))


def test_unpack_inverts_pack():
    z = torch.randn(2, LATENT_C, 8, 6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(unpack_latents(pack_latents(z), 8, 6), z)
    tokens = torch.randn(2, 12, 4 * LATENT_C)
    assert torch.equal(pack_latents(unpack_latents(tokens, 8, 6)), tokens)


@pytest.mark.parametrize("shape", [(1, 4, 3, 4), (1, 4, 4, 5), (1, 4, 7, 7)])
def test_odd_grids_are_rejected(shape):
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.zeros(shape))


def test_image_position_ids():
    ids = image_position_ids(4, 6)
    assert ids.shape == (6, 3) and ids.dtype == torch.float32
    expected = [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert ids.tolist() == expected
    # token k of pack_latents covers rows 2*row..2*row+1 and cols 2*col..2*col+1 of the latent
    z = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    top_left = pack_latents(z)[0, :, 0]
    assert torch.equal(top_left, (ids[:, 1] * 2 * 6 + ids[:, 2] * 2))


# --- the module ---------------------------------------------------------------------------------


@pytest.fixture()
def denoiser(tiny_cfg) -> ContinuousDenoiser:
    torch.manual_seed(0)
    return build_continuous_denoiser(tiny_cfg.method.denoiser, LATENT_C).eval()


def _inputs(cfg, batch=2, grid=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, LATENT_C, grid, grid, generator=gen),
        torch.rand(batch, generator=gen),
        torch.randn(batch, cfg.method.denoiser.pooled_projection_dim, generator=gen),
        torch.randn(batch, 1, cfg.method.denoiser.joint_attention_dim, generator=gen),
    )


def test_tiny_denoiser_is_the_configured_flux(denoiser, tiny_cfg):
    t = denoiser.transformer
    assert type(t).__name__ == "FluxTransformer2DModel"
    assert (len(t.transformer_blocks), len(t.single_transformer_blocks)) == (1, 1)
    assert t.config.in_channels == 4 * LATENT_C and t.out_channels == 4 * LATENT_C
    assert t.inner_dim == 2 * 16
    assert tuple(t.config.axes_dims_rope) == (4, 6, 6) and sum(t.config.axes_dims_rope) == 16
    assert denoiser.guidance == tiny_cfg.method.denoiser.guidance == 4.0


@pytest.mark.parametrize("grid", [8, 4, 2])
def test_forward_shape(denoiser, tiny_cfg, grid):
    z, t, pooled, context = _inputs(tiny_cfg, grid=grid)
    with torch.no_grad():
        out = denoiser(z, t, pooled, context)
    assert out.shape == z.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_rotary_axes_must_sum_to_the_head_dim(tiny_cfg):
    """Rotary axes must sum to the head dim: validate() catches what FLUX would only hit at the first forward."""
    with pytest.raises(UserError, match="must sum to"):
        load_config(
            "tiny",
            overrides=["method.denoiser.attention_head_dim=16", "method.denoiser.axes_dims_rope=[4, 6, 8]"],
        )
    cfg = tiny_cfg.method.denoiser
    cfg.axes_dims_rope = [4, 6, 8]  # bypassing validation: the forward pass breaks
    bad = build_continuous_denoiser(cfg, LATENT_C)
    with pytest.raises(RuntimeError):
        bad(*_inputs(tiny_cfg))


def test_conditioning_and_time_change_the_output(denoiser, tiny_cfg):
    z, t, pooled, context = _inputs(tiny_cfg)
    with torch.no_grad():
        base = denoiser(z, t, pooled, context)
        assert torch.equal(base, denoiser(z, t, pooled, context))  # deterministic in eval
        for changed in (
            denoiser(z, t, pooled + 1.0, context),
            denoiser(z, t, pooled, context + 1.0),
            denoiser(z, t * 0.5, pooled, context),
        ):
            assert (changed - base).abs().max() > 1e-4
        # each sample only depends on its own condition
        other = pooled.clone()
        other[1] += 1.0
        out = denoiser(z, t, other, context)
        assert torch.allclose(out[0], base[0], atol=1e-6) and not torch.allclose(out[1], base[1])


def test_every_denoiser_parameter_gets_a_gradient(denoiser, tiny_cfg):
    denoiser.train()
    z, t, pooled, context = _inputs(tiny_cfg)
    denoiser(z, t, pooled, context).square().mean().backward()
    missing = [n for n, p in denoiser.named_parameters() if p.grad is None]
    assert missing == []


class _Spy(nn.Module):
    """Stands in for FluxTransformer2DModel and records what the wrapper passes it."""

    def __init__(self, guidance_embeds=True):
        super().__init__()
        self.config = type("C", (), {"guidance_embeds": guidance_embeds})()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = []

    @property
    def dtype(self):
        return self.w.dtype

    def forward(self, **kw):
        self.calls.append(kw)
        return (kw["hidden_states"] * 2,)


def test_wrapper_passes_flux_ids_time_and_guidance():
    spy = _Spy()
    den = ContinuousDenoiser(spy, guidance=4.0)
    z = torch.randn(3, LATENT_C, 4, 6)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = den(z, t, torch.zeros(3, 5), torch.zeros(3, 1, 7))
    assert torch.equal(out, z * 2)  # output unpacked back to the latent grid
    kw = spy.calls[0]
    assert torch.equal(kw["hidden_states"], pack_latents(z))
    assert torch.equal(kw["img_ids"], image_position_ids(4, 6))  # (0, row, col), no batch dim
    assert torch.equal(kw["txt_ids"], torch.zeros(1, 3))  # the one context token at (0, 0, 0)
    assert torch.equal(kw["timestep"], t)  # in [0, 1]: FLUX multiplies by 1000 itself
    assert torch.equal(kw["guidance"], torch.full((3,), 4.0))
    ContinuousDenoiser(spy2 := _Spy(guidance_embeds=False))(z, t, torch.zeros(3, 5), torch.zeros(3, 1, 7))
    assert spy2.calls[0]["guidance"] is None


def test_paper_denoiser_size_on_meta():
    """Paper Table 7: ~1.31 B parameters, built on the meta device (nothing allocated)."""
    from enhance.cli import describe

    cfg = load_config("openai-clip-l14-224")
    kw = flux_kwargs(cfg.method.denoiser, cfg.method.vae.latent_channels)
    assert kw["in_channels"] == 64 and kw["num_layers"] == 2 and kw["num_single_layers"] == 4
    assert kw["num_attention_heads"] * kw["attention_head_dim"] == 3072
    assert (kw["pooled_projection_dim"], kw["joint_attention_dim"]) == (768, 4096)
    n = describe(cfg)["parameters"]["denoiser"]
    assert 1.30e9 < n < 1.32e9, n


def test_describe_count_equals_the_built_tiny_denoiser(denoiser, tiny_cfg):
    from enhance.cli import describe

    assert describe(tiny_cfg)["parameters"]["denoiser"] == sum(p.numel() for p in denoiser.parameters())


def test_unknown_denoiser_kind_lists_the_choices(tiny_cfg):
    tiny_cfg.method.denoiser.kind = "gan"
    with pytest.raises(UserError, match="continuous"):
        build_genhancer(tiny_cfg, backbone=None)
