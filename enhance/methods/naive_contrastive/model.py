"""The naive baseline's model: diffusion MSE plus InfoNCE on the tower's global features."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from enhance.methods.naive_contrastive.config import NaiveContrastiveSection
from enhance.methods.sd_models import SDMethodModel


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (positives on the diagonal)."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


class NaiveContrastiveModel(SDMethodModel):
    """DCR's naive baseline: w_rec * diffusion MSE + w_con * InfoNCE on the tower's global features
    (anchor vs its augmented view, the batch's other images as negatives)."""

    def __init__(self, *, section: NaiveContrastiveSection, **parts):
        super().__init__(sd=section.sd, **parts)
        self.naive, self.aug = section, section.augment

    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        z = self.latents(batch, generator)
        t, noise, z_t = self.draw(z, generator)
        g = self.backbone(batch["pixel_values"]).global_token
        g_plus = self.backbone(self.augmented_pixels(batch, generator, self.aug)).global_token
        context = self.token_condition(g)
        mse = F.mse_loss(self.denoiser(z_t, t, context), self.denoiser.target(z, noise, t).float())
        nce = info_nce(g, g_plus, self.naive.temperature)
        w = self.naive
        loss = w.reconstruction_weight * mse + w.contrastive_weight * nce
        return {
            "loss": loss,
            "mse": mse.detach(),
            "nce": nce.detach(),
            "loss_terms": {"mse": w.reconstruction_weight * mse, "nce": w.contrastive_weight * nce},
        }
