"""GenHancer as one module: tower v_theta, projector h_omega, denoiser g_phi and the frozen VAE.

``training_forward`` is the flow-matching objective of Alg. 1 (the same for both stages; the
stages differ only in which parameters train, see :mod:`enhance.stages`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.profiler import record_function

from enhance import flow
from enhance.backbones import VisionBackbone
from enhance.denoisers.discrete import masked_accuracy, masked_cross_entropy, sample_mask
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

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """What DDP/DeepSpeed wrappers call: their gradient-sync hooks need the call to go through
        the wrapper's ``forward``, so the trainer calls ``model(batch, generator)``."""
        return self.training_forward(batch, generator)

    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Flow-matching loss on one micro-batch; all randomness comes from ``generator``."""
        pixel_values = batch["pixel_values"]
        with record_function("vae_encode"), torch.autocast(pixel_values.device.type, enabled=False):
            if "latent_mean" in batch:  # pre-encoded posterior (latent cache): no VAE forward
                z = sample_posterior(self.codec, batch["latent_mean"], batch["latent_logvar"], generator)
            else:
                z = self.codec.encode(batch["vae_pixels"].float(), generator=generator)  # Alg. 1, step 3
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        t = flow.sample_timesteps(
            z.shape[0], self.timestep_sampler, self.timestep_scale, generator=generator, device=z.device
        )
        z_t = flow.interpolate(z, noise, t)  # step 4
        with record_function("tower_projector"):
            pooled, context = self.condition(pixel_values)  # step 5
        with record_function("denoiser"):
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


# --- latent cache building blocks ----------------------------------------------


@torch.no_grad()
def encode_posterior(codec: LatentCodec, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, logvar) of ``pixels`` in [-1, 1], float32: what a latent cache stores."""
    dist = codec.vae.encode(pixels.to(codec.vae.dtype)).latent_dist
    return dist.mean.float(), dist.logvar.float()


def sample_posterior(
    codec: LatentCodec, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Normalised latents from a stored posterior, drawing the same noise as ``codec.encode``
    (diffusers ``DiagonalGaussianDistribution.sample``), so a cached run matches on-the-fly."""
    mean = mean.float()
    if codec.sample_posterior:
        std = torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        latent = mean + std * eps
    else:
        latent = mean
    return (latent - codec.shift_factor) * codec.scaling_factor


# --- speed switches (enhance.config.PerfConfig) ------------------------------------------------

log = logging.getLogger("enhance")


def resolve_vae_dtype(name: str, device_type: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def cast_vae(codec, name: str, device_type: str) -> None:
    """Cast a frozen VAE to ``perf.vae_dtype`` (continuous codec only; a VQ tokenizer stays float32)."""
    dtype = resolve_vae_dtype(name, device_type)
    if isinstance(codec, LatentCodec) and codec.vae.dtype != dtype:  # no-op casts warn
        codec.vae.to(dtype)


def set_vae_dtype(model: GenHancerModel, name: str, device_type: str) -> None:
    """:func:`cast_vae` on the model's codec."""
    cast_vae(model.codec, name, device_type)


def enable_gradient_checkpointing(model: GenHancerModel) -> list[str]:
    """Turn on activation checkpointing in the tower and the denoiser where the module supports it
    (transformers ``gradient_checkpointing_enable``, open_clip ``set_grad_checkpointing``, diffusers
    ``enable_gradient_checkpointing``). Returns the parts it was enabled for."""
    done = []
    tower = getattr(model.backbone, "model", None)
    if hasattr(tower, "gradient_checkpointing_enable"):
        tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        done.append("tower")
    elif hasattr(tower, "set_grad_checkpointing"):
        tower.set_grad_checkpointing(True)
        done.append("tower")
    inner = getattr(model.denoiser, "transformer", model.denoiser)  # ContinuousDenoiser wraps Flux
    if hasattr(inner, "enable_gradient_checkpointing"):
        inner.enable_gradient_checkpointing()
        done.append("denoiser")
    missing = {"tower", "denoiser"} - set(done)
    if missing:
        log.warning(
            "perf.gradient_checkpointing: not supported by the %s, left off there", ", ".join(missing)
        )
    return done


def compile_modules(model: GenHancerModel, backend: str = "inductor") -> None:
    """``torch.compile`` the denoiser and the vision tower in place (``nn.Module.compile``), so
    parameter names, checkpoints and exports are unchanged. Call after LoRA is added."""
    model.denoiser.compile(backend=backend)
    model.backbone.vision_module.compile(backend=backend)


class DiscreteGenHancerModel(GenHancerModel):
    """Alg. 2: the same tower and projector, a VQ tokenizer and a Perceiver predicting masked codes.

    ``codec`` is a :class:`~enhance.vq.VQCodec`; ``denoiser`` a
    :class:`~enhance.denoisers.discrete.PerceiverDenoiser`.
    """

    def __init__(self, *args, mask_ratio: tuple[float, float] = (0.5, 0.9), **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_ratio = tuple(mask_ratio)

    def logits(self, pixel_values: torch.Tensor, codes: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        _, context = self.condition(pixel_values)
        return self.denoiser(codes, masked, context)

    def training_forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:

        pixel_values = batch["pixel_values"]
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            codes = self.codec.encode(batch["vae_pixels"].float())  # Alg. 2, step 3
        masked = sample_mask(
            codes.shape[0], codes.shape[1], self.mask_ratio, generator, codes.device
        )  # step 4
        logits = self.logits(pixel_values, codes, masked)  # step 5
        loss = masked_cross_entropy(logits, codes, masked)  # step 6
        return {"loss": loss, "masked_acc": masked_accuracy(logits.detach(), codes, masked)}

    @torch.no_grad()
    def reconstruct(
        self,
        pixel_values: torch.Tensor,
        generator: torch.Generator,
        steps: int = 20,
        vae_pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode the predicted codes at masked positions (the unmasked ones kept); without
        ``vae_pixels`` every position is masked, i.e. the image from the global token alone."""
        return self.reconstruct_views(pixel_values, generator, vae_pixels)[1]

    @torch.no_grad()
    def reconstruct_views(
        self, pixel_values: torch.Tensor, generator: torch.Generator, vae_pixels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, prediction) as images in [-1, 1], for the preview grid."""

        b = pixel_values.shape[0]
        g = self.codec.grid_size(pixel_values.shape[-1])
        if vae_pixels is None:
            codes = torch.zeros(b, g * g, dtype=torch.long, device=pixel_values.device)
            masked = torch.ones_like(codes, dtype=torch.bool)
        else:
            codes = self.codec.encode(vae_pixels.float())
            masked = sample_mask(b, codes.shape[1], self.mask_ratio, generator, codes.device)
        predicted = self.logits(pixel_values, codes, masked).argmax(-1)
        filled = torch.where(masked, predicted, codes)
        shown = self.codec.decode(codes) if vae_pixels is not None else torch.zeros_like(pixel_values)
        if vae_pixels is not None:  # grey out masked cells
            f = pixel_values.shape[-1] // g
            cell = masked.view(b, 1, g, g).repeat_interleave(f, 2).repeat_interleave(f, 3)
            shown = torch.where(cell, torch.zeros_like(shown), shown)
        return shown, self.codec.decode(filled)
