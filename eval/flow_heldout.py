"""The paired held-out flow-matching loss: how well a denoiser reconstructs unseen images.

Two users need the same number: the study's sensitivity (one stage 1 per condition, compared on the
same draws) and the leaderboard's generation quality (one trained run against another). Both take
held-out images' VAE posteriors, draw (latent sample, noise, t) once from a seed, and average the
per-item loss over images x draws, overall and per band of t. :class:`FlowTask` is GenHancer's
stage 1 (projector + FLUX-style denoiser, rectified flow) built from ``enhance``'s parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from enhance import flow
from enhance.denoisers.continuous import build_continuous_denoiser
from enhance.projector import ConditionProjector
from genhancer.runtime.seeding import derive_seed

#: Bands of t (GenHancer: t in [0, 1]; SD: timestep / 1000) for the per-band losses.
T_BANDS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0001)


@torch.no_grad()
def posteriors(vae, unit: torch.Tensor, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, logvar) of every image in [-1, 1], float32."""
    means, logvars = [], []
    for i in range(0, len(unit), batch):
        dist = vae.encode(unit[i : i + batch] * 2 - 1).latent_dist
        means.append(dist.mean.float())
        logvars.append(dist.logvar.float())
    return torch.cat(means), torch.cat(logvars)


def sample_latent(mean, logvar, eps, sample: bool, shift: float, scale: float) -> torch.Tensor:
    """Normalised latents ``(z - shift) * scale`` with ``z = mean + std * eps`` (or the mean)."""
    z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps if sample else mean
    return (z - shift) * scale


class FlowTask:
    """GenHancer's stage 1: projector + FLUX-style denoiser, rectified flow (enhance's parts)."""

    def __init__(self, enhance_cfg, cond_dim: int, latent_channels: int, seed: int):
        m = enhance_cfg.method  # GenHancer's section: denoiser, projector, flow
        d = m.denoiser
        torch.manual_seed(seed)  # the denoiser first: its init is the same for every condition
        self.denoiser = build_continuous_denoiser(d, latent_channels)
        self.projector = ConditionProjector(
            global_dim=cond_dim,
            pooled_dim=d.pooled_projection_dim,
            context_dim=d.joint_attention_dim,
            hidden_act=m.projector.hidden_act,
        )
        self.sampler, self.scale = m.flow.timestep_sampler, m.flow.scale

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.denoiser.parameters(), *self.projector.parameters()]

    def draw_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return flow.sample_timesteps(n, self.sampler, self.scale, generator=gen)

    def t_unit(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def losses(
        self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """Per-item flow-matching MSE [B]."""
        pooled, context = self.projector(cond)
        pred = self.denoiser(flow.interpolate(z, noise, t), t, pooled, context)
        return (pred.float() - flow.flow_target(z, noise)).pow(2).flatten(1).mean(1)


def heldout_draws(mean: torch.Tensor, task, draws: int, seed: int = 9100) -> list[tuple]:
    """The held-out (eps, noise, t) draws for posterior means ``mean``: a pure function of ``seed``
    and the shape, the same for every condition and every run."""
    out = []
    for d in range(draws):
        gen = torch.Generator().manual_seed(derive_seed("sensitivity_heldout", seed, d))
        eps = torch.randn(mean.shape, generator=gen)
        noise = torch.randn(mean.shape, generator=gen)
        out.append((eps, noise, task.draw_t(mean.shape[0], gen)))
    return out


@torch.no_grad()
def heldout_loss(
    task, post: tuple[torch.Tensor, torch.Tensor], cond: torch.Tensor, draws: list[tuple], latent_kw: dict
) -> dict:
    """Mean per-item loss over held-out scenes (posterior ``(mean, logvar)``) x draws, overall and
    per band of t."""
    losses, ts = [], []
    mean, logvar = post
    for eps, noise, t in draws:
        for i in range(0, mean.shape[0], 128):
            s = slice(i, i + 128)
            z = sample_latent(mean[s], logvar[s], eps[s], **latent_kw)
            losses.append(task.losses(z, noise[s], t[s], cond[s]))
            ts.append(task.t_unit(t[s]))
    loss, t = torch.cat(losses), torch.cat(ts)
    bands = {}
    for lo, hi in zip(T_BANDS[:-1], T_BANDS[1:], strict=True):
        m = (t >= lo) & (t < hi)
        bands[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = float(loss[m].mean()) if m.any() else float("nan")
    return {"loss": float(loss.mean()), "by_t": bands, "t_share_high": float((t >= 0.75).float().mean())}


def to_unit(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """[N, 3, size, size] in [0, 1] (the toy world is already at the tower's resolution)."""
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
