"""GenHancer as one module: tower v_theta, projector h_omega, denoiser g_phi and the frozen VAE.

``training_forward`` is the flow-matching objective of Alg. 1 (the same for both stages; the
stages differ only in which parameters train, see :mod:`enhance.stages`).
"""

from __future__ import annotations

import torch
from torch import nn

from enhance import flow
from enhance.backbones import VisionBackbone
from enhance.projector import ConditionProjector, select_local_tokens
from enhance.vae import LatentCodec


class GenHancerModel(nn.Module):
    def __init__(
        self,
        backbone: VisionBackbone,
        projector: ConditionProjector,
        denoiser: nn.Module,
        codec: LatentCodec,
        local_token_ratio: float = 0.0,
        timestep_sampler: str = "logit_normal",
        timestep_scale: float = 1.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.denoiser = denoiser
        self.codec = codec
        self.local_token_ratio = local_token_ratio
        self.timestep_sampler = timestep_sampler
        self.timestep_scale = timestep_scale

    def condition(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_omega(v_theta(x)): (pooled, context) for the denoiser (Alg. 1, step 5)."""
        out = self.backbone(pixel_values)
        local = None
        if self.local_token_ratio > 0:
            local = select_local_tokens(out.local_tokens, self.local_token_ratio)
        return self.projector(out.global_token, local)

    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Flow-matching loss on one micro-batch; all randomness comes from ``generator``."""
        pixel_values = batch["pixel_values"]
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            z = self.codec.encode(batch["vae_pixels"].float(), generator=generator)  # Alg. 1, step 3
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        t = flow.sample_timesteps(
            z.shape[0], self.timestep_sampler, self.timestep_scale, generator=generator, device=z.device
        )
        z_t = flow.interpolate(z, noise, t)  # step 4
        pooled, context = self.condition(pixel_values)  # step 5
        prediction = self.denoiser(z_t, t, pooled, context)
        loss = flow.flow_loss(prediction, flow.flow_target(z, noise))  # step 7
        return {"loss": loss}

    @torch.no_grad()
    def reconstruct(
        self, pixel_values: torch.Tensor, generator: torch.Generator, steps: int = 20
    ) -> torch.Tensor:
        """Sample an image from the global token alone (what the token 'remembers'), in [-1, 1]."""
        pooled, context = self.condition(pixel_values)
        size = pixel_values.shape[-1] // self.codec.downsample
        shape = (pixel_values.shape[0], self.codec.latent_channels, size, size)
        noise = torch.randn(shape, generator=generator, device=pixel_values.device)
        z = flow.euler_sample(lambda x, t: self.denoiser(x, t, pooled, context).float(), noise, steps)
        return self.codec.decode(z)
