"""Rectified flow: timestep samplers (against diffusers and the closed form), path, loss, Euler."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from enhance import flow

N = 200_000
QUANTILES = torch.tensor([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])


def _draw(sampler: str, scale: float = 1.0, seed: int = 0, n: int = N) -> torch.Tensor:
    return flow.sample_timesteps(n, sampler, scale, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_logit_normal_matches_diffusers_and_closed_form(scale):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    ours = _draw("logit_normal", scale, seed=1)
    ref = compute_density_for_timestep_sampling(
        "logit_normal",
        N,
        logit_mean=0.0,
        logit_std=scale,
        generator=torch.Generator().manual_seed(2),  # independent draws: compare distributions
    )
    q_ours = torch.quantile(ours[:100_000].double(), QUANTILES.double())  # quantile() caps input size
    q_ref = torch.quantile(ref[:100_000].double(), QUANTILES.double())
    assert torch.allclose(q_ours, q_ref, atol=0.01), (q_ours, q_ref)
    # closed form: the q-quantile of sigmoid(s * N(0, 1)) is sigmoid(s * Phi^-1(q))
    exact = torch.tensor([1 / (1 + math.exp(-scale * NormalDist().inv_cdf(float(q)))) for q in QUANTILES])
    assert torch.allclose(q_ours.float(), exact, atol=0.01), (q_ours, exact)


def test_logit_normal_lies_strictly_inside_unit_interval():
    t = _draw("logit_normal", 1.0)
    assert t.shape == (N,) and t.dtype == torch.float32
    assert 0.0 < t.min().item() and t.max().item() < 1.0
    assert abs(t.mean().item() - 0.5) < 0.005  # symmetric density (flow.py docstring)


def test_scale_changes_the_spread():
    stds = [_draw("logit_normal", s).std().item() for s in (0.5, 1.0, 2.0)]
    assert stds[0] < stds[1] < stds[2]
    # s = 1: std of sigmoid(N(0, 1)) ~= 0.2083 (numerical integral)
    assert abs(stds[1] - 0.2083) < 0.003


def test_uniform_sampler_range_and_distribution():
    t = _draw("uniform")
    assert 0.0 <= t.min().item() and t.max().item() < 1.0
    q = torch.quantile(t[:100_000].double(), QUANTILES.double()).float()
    assert torch.allclose(q, QUANTILES, atol=0.01)


def test_sampling_is_a_function_of_the_generator():
    a, b = _draw("logit_normal", seed=5, n=8), _draw("logit_normal", seed=5, n=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, _draw("logit_normal", seed=6, n=8))


def test_unknown_sampler():
    with pytest.raises(ValueError, match="cosine"):
        flow.sample_timesteps(2, "cosine")


def test_interpolate_endpoints_and_midpoints():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, 2, generator=gen)
    n = torch.randn(3, 4, 2, 2, generator=gen)
    assert torch.equal(flow.interpolate(x, n, torch.zeros(3)), x)  # t = 0: data
    assert torch.equal(flow.interpolate(x, n, torch.ones(3)), n)  # t = 1: noise
    t = torch.tensor([0.0, 0.25, 1.0])  # one t per sample, broadcast over C, H, W
    out = flow.interpolate(x, n, t)
    assert torch.allclose(out[1], 0.75 * x[1] + 0.25 * n[1])
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], n[2])
    # the path's time derivative is the regression target noise - data
    assert torch.allclose(
        flow.interpolate(x, n, torch.full((3,), 0.6)) - flow.interpolate(x, n, torch.full((3,), 0.4)),
        0.2 * flow.flow_target(x, n),
        atol=1e-6,
    )


def test_interpolate_keeps_the_data_dtype():
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    assert flow.interpolate(x, torch.ones(2, 3, dtype=torch.bfloat16), torch.tensor([0.5, 0.5])).dtype == (
        torch.bfloat16
    )


def test_flow_loss_is_float32_mse():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.bfloat16)
    loss = flow.flow_loss(pred, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((1 + 4 + 4 + 9) / 4)


@pytest.mark.parametrize("steps", [1, 3, 20])
def test_euler_with_the_exact_velocity_recovers_the_data(steps):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 3, generator=gen)
    noise = torch.randn(2, 4, 3, 3, generator=gen)
    out = flow.euler_sample(lambda x, t: noise - x0, noise, steps=steps)  # straight path: constant v
    assert torch.allclose(out, x0, atol=1e-5)


def test_euler_time_grid_and_step_size():
    """Integrates from t=1 down to t=0: calls v at 1, 3/4, 1/2, 1/4 with batch-shaped t, and on
    dx/dt = x takes steps x <- x * (1 - 1/N), so x(0) = x(1) * (3/4)^4 for N = 4."""
    seen = []

    def v(x, t):
        seen.append(t.clone())
        return x

    out = flow.euler_sample(v, torch.ones(2, 1), steps=4)
    assert [s.shape for s in seen] == [(2,)] * 4
    assert torch.allclose(torch.stack([s[0] for s in seen]), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    assert torch.allclose(out, torch.full((2, 1), 0.75**4))
