"""DIVA's model: the tower's tokens, through a linear projector, added to SD's prompt embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from enhance.methods.diva.config import DivaSection
from enhance.methods.sd_models import SDMethodModel


class DivaModel(SDMethodModel):
    """DIVA: the tower's tokens through a linear projector, added to SD's prompt embedding; the
    diffusion MSE against the noise, ``diva.draws`` draws per image with gradients summed."""

    def __init__(self, *, section: DivaSection, **parts):
        super().__init__(sd=section.sd, **parts)
        self.diva = section

    def tokens(self, pixel_values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        tokens = self.backbone.joint_tokens(pixel_values)  # [B, 1 + N, D]; [:, 0] is the global token
        d = self.diva
        if d.tokens == "all_local":
            return tokens
        if d.tokens == "pooled_avg":
            local = F.avg_pool1d(tokens[:, 1:].transpose(1, 2), d.avg_window, d.avg_window).transpose(1, 2)
            return torch.cat([tokens[:, :1], local], dim=1)
        b, n = tokens.shape[0], tokens.shape[1] - 1
        if generator is None:  # deterministic (reconstructions): evenly spaced patch tokens
            idx = torch.linspace(0, n - 1, d.num_tokens - 1, device=tokens.device).round().long()
            idx = idx.expand(b, -1)
        else:
            idx = torch.randint(0, n, (b, d.num_tokens - 1), generator=generator, device=tokens.device)
        local = tokens[:, 1:][torch.arange(b, device=tokens.device)[:, None], idx]
        return torch.cat([tokens[:, :1], local], dim=1)

    def condition(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        visual = self.projector(self.tokens(pixel_values, generator))
        text = self.text_context.to(visual.dtype)
        if self.diva.text == "mean":
            return visual + text.mean(0)[None, None]
        return visual + text[None]

    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        z = self.latents(batch, generator)
        loss = torch.zeros((), device=z.device)
        for _ in range(self.diva.draws):
            t, noise, z_t = self.draw(z, generator)
            context = self.condition(batch["pixel_values"], generator)
            pred = self.denoiser(z_t, t, context)
            loss = loss + F.mse_loss(pred, self.denoiser.target(z, noise, t).float())
        return {"loss": loss}
