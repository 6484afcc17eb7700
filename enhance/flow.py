"""Rectified-flow pieces: timestep sampling, interpolation, loss, Euler sampling.

Convention (FLUX's rectified flow): ``x_t = (1 - t) * x_data + t * noise`` and the denoiser predicts the
velocity ``noise - x_data``. The paper writes the same path with t flipped; the scaled
logit-normal density is symmetric, so the two agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_timesteps(
    batch_size: int,
    sampler: str = "logit_normal",
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``t = sigmoid(s * N(0, 1))`` (paper Alg. 1, step 6) or ``U(0, 1)``, float32 of shape [B]."""
    if sampler == "logit_normal":
        eps = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float32)
        return torch.sigmoid(scale * eps)
    if sampler == "uniform":
        return torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32)
    raise ValueError(f"unknown timestep sampler '{sampler}' (logit_normal | uniform)")


def interpolate(x_data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x_data.ndim - 1))).to(x_data.dtype)
    return (1.0 - t) * x_data + t * noise


def flow_target(x_data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x_data


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error computed in float32 whatever the autocast dtype."""
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def euler_sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    steps: int = 20,
) -> torch.Tensor:
    """Integrate dx/dt = v from t=1 (noise) to t=0 (data) with ``steps`` Euler steps."""
    x = noise
    ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    for i in range(steps):
        t = ts[i].expand(x.shape[0])
        v = velocity(x, t)
        x = x + (ts[i + 1] - ts[i]) * v.to(x.dtype)
    return x
