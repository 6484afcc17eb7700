"""DCR's model: the contrastive loss on the frozen UNet's predictions under every image's condition.
The loss is a function of tensors (:func:`dcr_loss`), so the parity tests compare it with the
official loss body on the same inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from enhance.methods.dcr.config import DCRSection, dcr_negatives, dcr_unet_calls
from enhance.methods.sd_models import SDMethodModel


def dcr_loss(
    anchor: torch.Tensor,
    negatives: torch.Tensor,
    positive_pred: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """DCR's InfoNCE over predicted noise, per anchor, averaged.

    ``anchor`` [B, ...]: the prediction on noisy latent i under its own condition; ``negatives``
    [B, K, ...]: the same latent under K other images' conditions; ``positive_pred``: under the
    augmented view's condition; ``target``: the ground-truth target. Cosine similarities over
    ``temperature``; the two positives share one denominator (both positives + every negative),
    and the loss is the mean of their two terms.
    """
    a = F.normalize(anchor.flatten(1).float(), dim=1)
    n = F.normalize(negatives.flatten(2).float(), dim=2)
    p = F.normalize(positive_pred.flatten(1).float(), dim=1)
    g = F.normalize(target.flatten(1).float(), dim=1)
    pos_pred = (a * p).sum(1) / temperature
    pos_gt = (a * g).sum(1) / temperature
    neg = torch.einsum("bd,bkd->bk", a, n) / temperature
    log_denom = torch.logsumexp(torch.cat([pos_pred[:, None], pos_gt[:, None], neg], dim=1), dim=1)
    return (log_denom - 0.5 * (pos_pred + pos_gt)).mean()


def negative_index(b: int, k: int, generator: torch.Generator | None, exact: bool) -> torch.Tensor:
    """[B, K] condition indices j != i per anchor i: all others in order (exact, K = B-1) or K
    drawn without replacement from the step's generator (sampled)."""
    if exact:
        full = torch.arange(b).repeat(b, 1)
        return full[~torch.eye(b, dtype=torch.bool)].view(b, b - 1)
    rows = []
    for i in range(b):
        others = torch.tensor([j for j in range(b) if j != i])
        perm = torch.randperm(b - 1, generator=generator, device=generator.device).cpu()
        rows.append(others[perm[:k]])
    return torch.stack(rows)


class DCRModel(SDMethodModel):
    """DCR: contrastive loss on the UNet's predictions under every image's condition."""

    def __init__(self, *, section: DCRSection, **parts):
        super().__init__(sd=section.sd, **parts)
        self.dcr = section

    def unet_calls(self, b: int) -> int:
        return dcr_unet_calls(b, self.dcr)

    def predict_pairs(self, z_t, t, context, latent_idx, cond_idx) -> torch.Tensor:
        """UNet(z_t[latent_idx], t[latent_idx], context[cond_idx]), in chunks of ``dcr.unet_chunk``."""
        n = latent_idx.numel()
        chunk = self.dcr.unet_chunk or n
        outs = [
            self.denoiser(
                z_t[latent_idx[s : s + chunk]], t[latent_idx[s : s + chunk]], context[cond_idx[s : s + chunk]]
            )
            for s in range(0, n, chunk)
        ]
        return torch.cat(outs)

    def training_forward(
        self, batch: dict, generator: torch.Generator, negatives_generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``negatives_generator`` (default: ``generator``) draws the sampled negatives alone, so a
        measurement can vary them with every other draw held fixed."""
        z = self.latents(batch, generator)
        t, noise, z_t = self.draw(z, generator)
        context = self.global_condition(batch["pixel_values"])
        context_plus = self.global_condition(self.augmented_pixels(batch, generator, self.dcr.augment))
        neg = negatives_generator or generator
        return {"loss": self.objective(z, noise, t, z_t, context, context_plus, neg)}

    def objective(self, z, noise, t, z_t, context, context_plus, generator) -> torch.Tensor:
        """The DCR loss of one micro-batch from its latents, draws and the two conditions."""
        b = z.shape[0]
        k = dcr_negatives(b, self.dcr)
        neg_idx = negative_index(b, k, generator, self.dcr.negatives == "exact").to(z.device)
        rows = torch.arange(b, device=z.device)
        latent_idx = torch.cat([rows, rows.repeat_interleave(k)])
        cond_idx = torch.cat([rows, neg_idx.reshape(-1)])
        pred = self.predict_pairs(z_t, t, context, latent_idx, cond_idx)
        anchor, negatives = pred[:b], pred[b:].view(b, k, *pred.shape[1:])
        positive = self.denoiser(z_t, t, context_plus)
        target = self.denoiser.target(z, noise, t)
        return dcr_loss(anchor, negatives, positive, target, self.dcr.temperature)
