"""The frozen, pretrained Stable Diffusion the diva / dcr / naive-contrastive methods train through.

Loading reads the pipeline's JSON configs first (``unet/config.json``,
``scheduler/scheduler_config.json``) and refuses, before any weight is loaded, a UNet whose
cross-attention width is not ``sd.cross_attention_dim`` and a scheduler whose ``prediction_type``
disagrees with ``sd.target`` (SD 2.1 predicts v, SD 2.1-base predicts epsilon) unless the user
allows it. The noise schedule is the DDPM one both official codes build
(``DDPMScheduler(1000, 0.00085, 0.012, "scaled_linear")``); only its ``alphas_cumprod`` is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from enhance.methods.genhancer.config import VAEConfig
from enhance.methods.sections import SD_VAE_KEYS, SDSection
from enhance.vae import LatentCodec, build_codec
from genhancer.runtime.errors import UserError, loading
from genhancer.toyworld.models import resolve_tiny

KNOWN_PREDICTION_TYPES = ("epsilon", "v_prediction")


def _read_json(root: str, sub: str, name: str, revision: str = "") -> dict | None:
    """A pipeline JSON from a local dir, or from the hub cache/hub (None when it cannot be read)."""
    local = Path(root) / sub / name
    if local.is_file():
        return json.loads(local.read_text())
    if Path(root).exists():
        return None
    try:
        from huggingface_hub import hf_hub_download

        kwargs = {"revision": revision} if revision else {}
        return json.loads(Path(hf_hub_download(root, name, subfolder=sub, **kwargs)).read_text())
    except Exception:  # noqa: BLE001 - offline or missing: the weight loader reports it by name
        return None


def check_pipeline(sd: SDSection, path: str) -> None:
    """The checks that need only JSON: cross-attention width and prediction type (exit 2)."""
    unet = _read_json(path, "unet", "config.json", sd.revision)
    if unet is not None and int(unet.get("cross_attention_dim", -1)) != sd.cross_attention_dim:
        raise UserError(
            f"method.sd.cross_attention_dim={sd.cross_attention_dim} but the UNet at '{sd.path}' attends over "
            f"{unet.get('cross_attention_dim')}-d conditions; set method.sd.cross_attention_dim to match"
        )
    sched = _read_json(path, "scheduler", "scheduler_config.json", sd.revision)
    found = (sched or {}).get("prediction_type", "epsilon")
    if found not in KNOWN_PREDICTION_TYPES:
        raise UserError(
            f"method.sd.path '{sd.path}': scheduler prediction_type '{found}' is not one of "
            f"{list(KNOWN_PREDICTION_TYPES)}"
        )
    if sched is not None and found != sd.target and not sd.allow_target_mismatch:
        raise UserError(
            f"method.sd.target={sd.target} but the UNet at '{sd.path}' was trained for '{found}'; set "
            f"method.sd.target={found}, or method.sd.allow_target_mismatch=true to train against {sd.target} anyway"
        )


def build_noise_schedule(sd: SDSection) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=sd.num_train_timesteps,
        beta_start=sd.beta_start,
        beta_end=sd.beta_end,
        beta_schedule=sd.beta_schedule,
        prediction_type=sd.target,
    )


class SDDenoiser(nn.Module):
    """The frozen UNet with its noise schedule and the loss target of ``sd.target``."""

    def __init__(self, unet: nn.Module, scheduler, target: str):
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.target_type = target

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.target_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(x0, noise, t)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        return self.unet(noisy.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()

    @torch.no_grad()
    def sample(
        self, context: torch.Tensor, shape: tuple, generator: torch.Generator, steps: int
    ) -> torch.Tensor:
        """DDIM sampling from noise under ``context`` (previews, the demo)."""
        ddim = DDIMScheduler.from_config(self.scheduler.config, prediction_type=self.target_type)
        ddim.set_timesteps(steps)
        x = torch.randn(shape, generator=generator, device=context.device)
        for t in ddim.timesteps:
            tt = torch.full((shape[0],), int(t), device=context.device, dtype=torch.long)
            x = ddim.step(self(x, tt, context), t, x).prev_sample
        return x


def text_embedding(sd: SDSection, path: str, prompt: str) -> torch.Tensor:
    """SD's own text encoder on ``prompt``, padded to the tokenizer's length: [L, D], float32."""
    kw = {"revision": sd.revision} if sd.revision else {}
    with loading(f"the SD text encoder from '{sd.path}'", "Point method.sd.path at a diffusers SD pipeline."):
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
        encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
    ids = tokenizer(
        [prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    return out.last_hidden_state[0].float()


def build_sd(sd: SDSection, cache_dir: str | None) -> tuple[SDDenoiser, LatentCodec, str]:
    """``(SDDenoiser, LatentCodec, resolved path)``: frozen UNet and the pipeline's VAE (with the
    section's latent normalisation). :func:`check_pipeline` is the caller's, before anything
    heavier than JSON is read."""
    path = resolve_tiny(sd.path, cache_dir)
    kw = {"revision": sd.revision} if sd.revision else {}
    with loading(f"the SD UNet from '{sd.path}'", "Point method.sd.path at a diffusers SD pipeline."):
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    unet.requires_grad_(False).eval()
    unet.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[sd.unet_dtype])
    # the pipeline's vae/ subfolder, with the latent settings the SD section keeps for it
    vae = VAEConfig(name_or_path=path, subfolder="vae", **{k: getattr(sd, k) for k in SD_VAE_KEYS})
    return SDDenoiser(unet, build_noise_schedule(sd), sd.target), build_codec(vae, cache_dir), path
