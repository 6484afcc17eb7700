"""Config sections shared by several methods: the frozen Stable Diffusion pipeline (DIVA, DCR, the
naive baseline) and the augmented view (DCR, the naive baseline). Each method embeds the ones it
uses in its own section, with its own defaults (its official recipe's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genhancer.runtime.configtools import doc

SDTarget = Literal["epsilon", "v_prediction"]
UnetDtype = Literal["float32", "bfloat16"]


@dataclass
class SDSection:
    """The frozen pretrained Stable Diffusion (UNet, VAE, text encoder, DDPM schedule)."""

    path: str = doc(
        "stabilityai/stable-diffusion-2-1-base",
        "HF id or local dir of a diffusers SD pipeline (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/); 'genhancer-tiny:sd' (epsilon) / 'genhancer-tiny:sd-v' (v-prediction) build tiny ones",
    )
    revision: str = doc("", "HF revision (empty: default branch)")
    target: SDTarget = doc(
        "epsilon",
        "what the loss compares the UNet output with: epsilon (the noise; DIVA) | v_prediction "
        "(scheduler.get_velocity; DCR). Must equal the pipeline's scheduler prediction_type unless "
        "allow_target_mismatch",
    )
    allow_target_mismatch: bool = doc(
        False, "train with a target other than the UNet's own prediction_type (off: exit 2)"
    )
    num_train_timesteps: int = doc(1000, "DDPM training timesteps (both official codes: 1000)")
    beta_start: float = doc(0.00085, "DDPM beta_start (SD's)")
    beta_end: float = doc(0.012, "DDPM beta_end (SD's)")
    beta_schedule: str = doc("scaled_linear", "DDPM beta schedule (SD's)")
    unet_dtype: UnetDtype = doc("float32", "dtype of the frozen UNet (DCR's code: bfloat16)")
    cross_attention_dim: int = doc(
        1024,
        "condition width the projector outputs; must equal the UNet's cross_attention_dim (SD 2.x: 1024)",
    )
    reconstruct_steps: int = doc(20, "DDIM steps for previews and the demo's reconstructions")
    scaling_factor: float = doc(0.18215, "SD VAE latent scale (the pipeline's vae/ subfolder)")
    shift_factor: float = doc(0.0, "SD VAE latent shift")
    latent_channels: int = doc(4, "SD VAE latent channels")
    sample_posterior: bool = doc(
        True, "sample the VAE posterior (DCR's code) rather than take its mean (DIVA's code)"
    )


@dataclass
class AugmentSection:
    """The augmented view a contrastive loss pairs with the image (torchvision's order)."""

    jitter: list[float] = doc([0.1, 0.1, 0.1, 0.05], "ColorJitter brightness, contrast, saturation, hue")
    flip_p: list[float] = doc([0.5, 0.5], "horizontal and vertical flip probabilities")
    crop_scale: list[float] = doc([0.9, 1.0], "RandomResizedCrop scale")
    crop_ratio: list[float] = doc([0.9, 1.1], "RandomResizedCrop aspect ratio")


#: The SD VAE's latent settings, kept in ``method.sd`` (an old tree held them in top-level ``vae.*``).
SD_VAE_KEYS = ("scaling_factor", "shift_factor", "latent_channels", "sample_posterior")
#: Old ``dcr.*`` keys of the augmented view (now ``method.augment.*``).
AUGMENT_KEYS = ("jitter", "flip_p", "crop_scale", "crop_ratio")
