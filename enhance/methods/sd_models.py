"""DIVA, DCR and the naive contrastive baseline on one frozen Stable Diffusion.

Each is a module with the interface the stage driver and loop already use (``training_forward``,
``reconstruct``, the parts ``backbone`` / ``projector`` / ``denoiser`` / ``codec``); the loop does
not know which method it runs. The losses are module-level functions of tensors, so the parity
tests compare them with the official loss bodies on the same inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from enhance.methods import dcr_negatives, dcr_unet_calls
from enhance.methods.augment import augment_view, normalise
from enhance.projector import _head

# --- projectors ---------------------------------------------------------------------------------


class TokenProjector(ModelMixin, ConfigMixin):
    """CLIP feature(s) -> SD condition width, added to a fixed text embedding.

    ``mlp=True`` (DCR, naive): ``LayerNorm -> Linear -> GELU -> Linear`` on the global token, one
    vector added to every text position. ``mlp=False`` (DIVA): one ``Linear`` per token.
    """

    @register_to_config
    def __init__(self, in_dim: int, out_dim: int, mlp: bool = True):
        super().__init__()
        self.net = _head(in_dim, out_dim, "gelu") if mlp else nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


# --- losses -------------------------------------------------------------------------------------


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


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (positives on the diagonal)."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


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


# --- the models ---------------------------------------------------------------------------------


class SDMethodModel(nn.Module):
    """Tower, projector, frozen SD UNet (``denoiser``) and VAE (``codec``), and the fixed text
    embedding the condition is added to (``text_context`` [L, H], not a parameter)."""

    #: What a checkpoint holds besides LoRA and trained tower weights: the frozen UNet reloads.
    checkpoint_prefixes: tuple[str, ...] = ("projector.",)

    def __init__(self, backbone, projector, denoiser, codec, text_context: torch.Tensor, cfg):
        super().__init__()
        self.backbone, self.projector, self.denoiser, self.codec = backbone, projector, denoiser, codec
        self.register_buffer("text_context", text_context, persistent=False)
        self.sd_cfg = cfg.sd
        self.local_token_ratio = 0.0

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.training_forward(batch, generator)

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        with torch.autocast(batch["vae_pixels"].device.type, enabled=False):
            return self.codec.encode(batch["vae_pixels"].float(), generator=generator)

    def draw(self, z: torch.Tensor, generator: torch.Generator):
        """(t, noise, z_t) with t ~ randint(0, T) and Gaussian noise, both from ``generator``."""
        t = torch.randint(
            0, self.sd_cfg.num_train_timesteps, (z.shape[0],), generator=generator, device=z.device
        )
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return t, noise, self.denoiser.add_noise(z, noise, t)

    def global_condition(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """DCR / naive: the condition of the tower's global token (:meth:`token_condition`)."""
        return self.token_condition(self.backbone(pixel_values).global_token)

    def token_condition(self, g: torch.Tensor) -> torch.Tensor:
        """projector(global token) added to every text position: [B, L, H]."""
        return self.projector(g)[:, None, :] + self.text_context[None].to(g.dtype)

    def augmented_pixels(self, batch: dict, generator: torch.Generator, aug_cfg) -> torch.Tensor:
        unit = (batch["vae_pixels"].float() + 1) / 2
        view = augment_view(
            unit, generator, aug_cfg.jitter, aug_cfg.flip_p, aug_cfg.crop_scale, aug_cfg.crop_ratio
        )
        b = self.backbone
        return normalise(view, b.image_mean, b.image_std).to(batch["pixel_values"].dtype)

    def condition(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.global_condition(pixel_values)

    @torch.no_grad()
    def reconstruct(
        self, pixel_values: torch.Tensor, generator: torch.Generator, steps: int = 20
    ) -> torch.Tensor:
        """DDIM sample from the image's condition alone, decoded to [-1, 1]."""
        context = self.condition(pixel_values, generator)
        size = pixel_values.shape[-1] // self.codec.downsample
        shape = (pixel_values.shape[0], self.codec.latent_channels, size, size)
        z = self.denoiser.sample(context, shape, generator, steps or self.sd_cfg.reconstruct_steps)
        return self.codec.decode(z)


class DCRModel(SDMethodModel):
    """DCR: contrastive loss on the UNet's predictions under every image's condition."""

    def __init__(self, *args, dcr_cfg, **kwargs):
        super().__init__(*args, **kwargs)
        self.dcr = dcr_cfg

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

    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        z = self.latents(batch, generator)
        t, noise, z_t = self.draw(z, generator)
        context = self.global_condition(batch["pixel_values"])
        context_plus = self.global_condition(self.augmented_pixels(batch, generator, self.dcr))
        return {"loss": self.objective(z, noise, t, z_t, context, context_plus, generator)}

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


class NaiveContrastiveModel(SDMethodModel):
    """DCR's naive baseline: w_rec * diffusion MSE + w_con * InfoNCE on the tower's global features
    (anchor vs its augmented view, the batch's other images as negatives)."""

    def __init__(self, *args, naive_cfg, aug_cfg, **kwargs):
        super().__init__(*args, **kwargs)
        self.naive, self.aug = naive_cfg, aug_cfg

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


class DivaModel(SDMethodModel):
    """DIVA: the tower's tokens through a linear projector, added to SD's prompt embedding; the
    diffusion MSE against the noise, ``diva.draws`` draws per image with gradients summed."""

    def __init__(self, *args, diva_cfg, **kwargs):
        super().__init__(*args, **kwargs)
        self.diva = diva_cfg

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
