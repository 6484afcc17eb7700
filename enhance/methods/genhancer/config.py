"""GenHancer's section of the config (``method:`` with ``name: genhancer``): its own randomly
initialised denoiser (continuous FLUX-style MM-DiT, or discrete VQ + Perceiver), the codec it
reconstructs in, the flow-matching sampler and the condition projector. Defaults are the paper's
(Sec. 4 and the supplementary's "Default training settings")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genhancer.runtime.configtools import doc

DenoiserKind = Literal["continuous", "discrete"]
TimestepSampler = Literal["logit_normal", "uniform"]


@dataclass
class ProjectorConfig:
    hidden_act: str = doc("gelu", "activation between the two linear layers of each head")


@dataclass
class DenoiserConfig:
    kind: DenoiserKind = doc(
        "continuous", "continuous (FLUX-style MM-DiT on VAE latents) | discrete (VQ codes + Perceiver)"
    )
    num_layers: int = doc(2, "MM-DiT (double-stream) blocks")
    num_single_layers: int = doc(4, "single-stream DiT blocks")
    attention_head_dim: int = doc(128, "per-head width; must equal sum(axes_dims_rope)")
    num_attention_heads: int = doc(24, "heads; hidden size = heads * head dim (3072 for FLUX)")
    joint_attention_dim: int = doc(4096, "context width: the projector's context head outputs this")
    pooled_projection_dim: int = doc(768, "pooled vector width: the projector's pooled head outputs this")
    axes_dims_rope: list[int] = doc([16, 56, 56], "rotary dims per position axis (text, row, col)")
    guidance: float = doc(4.0, "fixed guidance value fed to the guidance embedding")
    guidance_embeds: bool = doc(True, "FLUX-dev style guidance embedding")
    init_from: str = doc("", "ablation (Fig. 1 iv): start from a pretrained FLUX transformer dir/id")
    init_subfolder: str = doc("transformer", "subfolder of init_from holding the transformer")
    # --- discrete denoiser (Alg. 2); num_layers is the Perceiver depth (paper: 6)
    tokenizer: str = doc("", "discrete: diffusers VQModel dir/id ('genhancer-tiny:vq' for tiny)")
    tokenizer_subfolder: str = doc("vqvae", "discrete: subfolder of tokenizer holding the VQModel")
    codebook_size: int = doc(0, "discrete: expected codebook size (0: take the tokenizer's)")
    token_grid: int = doc(0, "discrete: expected code grid per side at the tower resolution (0: derive)")
    perceiver_hidden: int = doc(1024, "discrete: Perceiver width (the projector's context head outputs this)")
    perceiver_heads: int = doc(16, "discrete: Perceiver attention heads")
    decoder_layers: int = doc(1, "discrete: read-out blocks for the masked positions")
    mask_ratio: list[float] = doc([0.5, 0.9], "discrete: per-sample mask ratio drawn from U(lo, hi)")


@dataclass
class VAEConfig:
    name_or_path: str = doc(
        "black-forest-labs/FLUX.1-dev",
        "HF id or dir of a FLUX-style 16-channel AutoencoderKL; 'genhancer-tiny:vae' builds the tiny one",
    )
    subfolder: str = doc("vae", "subfolder of name_or_path holding the VAE")
    scaling_factor: float = doc(0.3611, "FLUX latent scale: z = (latent - shift) * scale")
    shift_factor: float = doc(0.1159, "FLUX latent shift")
    latent_channels: int = doc(16, "latent channels (packed 2x2 -> 4x this denoiser input channels)")
    sample_posterior: bool = doc(True, "sample the posterior (paper) rather than take its mode")


@dataclass
class FlowConfig:
    timestep_sampler: TimestepSampler = doc(
        "logit_normal", "logit_normal (t = sigmoid(s * N(0,1))) | uniform"
    )
    scale: float = doc(1.0, "s of the scaled logit-normal sampler (paper Sec. 3.3)")
    preview_steps: int = doc(20, "Euler steps when sampling previews")


@dataclass
class GenHancerSection:
    name: Literal["genhancer"] = doc(
        "genhancer",
        "genhancer (random-init denoiser, two stages) | diva (frozen SD, one stage, diffusion MSE) | dcr "
        "(frozen SD, two stages, contrastive loss on predicted noise) | naive-contrastive (frozen SD, "
        "diffusion MSE + InfoNCE on the tower's features)",
    )
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
