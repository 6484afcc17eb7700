"""Tiny base models for the offline ``tiny`` presets, built locally and cached.

No machine here reaches a model hub, so the tiny preset builds its own "pretrained" models in
the real formats and then loads them through the same ``from_pretrained`` code as the paper
presets:

* ``genhancer-tiny:clip``: a small ``CLIPModel`` with a CLIP BPE tokenizer over the toy-world
  vocabulary, trained contrastively on toy-world captions for a minute of CPU so the base tower
  is not noise (otherwise "enhancement" has nothing to improve on).
* ``genhancer-tiny:vae``: a small FLUX-style 16-channel ``AutoencoderKL`` trained briefly as an
  autoencoder on toy-world images, so previews decode to something recognisable.

Both are written atomically (temp dir, then rename) under a directory named by a hash of their
recipe, so a changed recipe never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from genhancer.runtime.errors import UserError
from genhancer.toyworld.world import ToyWorld, vocabulary

TINY_PREFIX = "genhancer-tiny:"
_RECIPE_VERSION = 1

TINY_CLIP_RECIPE = {
    "image_size": 64,
    "patch_size": 8,
    "vision_hidden": 64,
    "vision_layers": 4,
    "text_hidden": 64,
    "text_layers": 2,
    "heads": 4,
    "projection_dim": 64,
    "max_text_len": 40,
    "photo_prefix_prob": 0.5,  # half the captions read "a photo of ...", the MMVP-VLM prompt form
    "train_steps": 300,
    "batch_size": 64,
    "lr": 1e-3,
    "num_images": 2048,
    "seed": 1234,
}

TINY_VAE_RECIPE = {
    "image_size": 64,
    "block_out_channels": [16, 32, 32],
    "latent_channels": 16,
    "train_steps": 250,
    "batch_size": 16,
    "lr": 2e-3,
    "kl_weight": 1e-6,
    "num_images": 1024,
    "seed": 4321,
}


TINY_VQ_RECIPE = {
    "image_size": 64,
    "block_out_channels": [32, 32, 32],
    "latent_channels": 8,
    "codebook_size": 128,
    "train_steps": 200,
    "batch_size": 16,
    "lr": 2e-3,
    "num_images": 1024,
    "seed": 2468,
}


#: A tiny Stable-Diffusion-shaped pipeline folder (unet/, vae/, text_encoder/, tokenizer/,
#: scheduler/) for the frozen-SD methods: the text encoder and tokenizer are the tiny CLIP's text
#: side (SD 1.x also conditions on a CLIP text tower), the 4-channel VAE and the UNet are trained
#: briefly on toy images so the "pretrained" UNet means something, with ``prediction_type`` as SD
#: 2.1-base (epsilon) or SD 2.1 (v_prediction).
TINY_SD_RECIPE = {
    "image_size": 64,
    "vae_block_out_channels": [16, 32, 32],
    "latent_channels": 4,
    "vae_train_steps": 120,
    "unet_block_out_channels": [32, 64],
    "unet_train_steps": 200,
    "batch_size": 32,
    "lr": 2e-3,
    "kl_weight": 1e-6,
    "num_images": 1024,
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "scaling_factor": 0.18215,
    "seed": 97531,
}


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/genhancer"))


def _recipe_dir(cache_dir: Path, name: str, recipe: dict) -> Path:
    blob = json.dumps({"v": _RECIPE_VERSION, **recipe}, sort_keys=True).encode()
    return cache_dir / f"{name}-{hashlib.sha256(blob).hexdigest()[:10]}"


def build_cached(cache_dir: Path, name: str, recipe: dict, build: Callable[[Path], None]) -> Path:
    target = _recipe_dir(cache_dir, name, recipe)
    if (target / "COMPLETE").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        build(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
        (tmp / "COMPLETE").write_text("ok\n")
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_tiny(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Map ``genhancer-tiny:<what>`` to a cached local model dir; other names pass through."""
    if not name_or_path.startswith(TINY_PREFIX):
        return name_or_path
    what = name_or_path[len(TINY_PREFIX) :]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if what == "clip":
        return str(build_cached(cache, "tiny-clip", TINY_CLIP_RECIPE, build_tiny_clip))
    if what == "vae":
        return str(build_cached(cache, "tiny-vae", TINY_VAE_RECIPE, build_tiny_vae))
    if what == "vq":
        return str(build_cached(cache, "tiny-vq", TINY_VQ_RECIPE, build_tiny_vq))
    if what in ("sd", "sd-v"):
        recipe = {**TINY_SD_RECIPE, "prediction_type": "epsilon" if what == "sd" else "v_prediction"}
        return str(build_cached(cache, f"tiny-{what}", recipe, lambda out: build_tiny_sd(out, recipe)))

    raise UserError(f"unknown tiny model '{name_or_path}'; choose {TINY_PREFIX}clip, vae, vq, sd or sd-v")


# --- tokenizer --------------------------------------------------------------------------------


def build_clip_tokenizer(words: list[str], model_max_length: int = 77):
    """A real CLIP BPE tokenizer whose merges spell each word of ``words`` as few tokens.

    The vocabulary holds every printable ASCII character (with and without the ``</w>``
    end-of-word marker), a left-to-right merge chain for each word, and the start/end tokens.
    CLIP pools text at the end-of-text token, which the tokenizer appends; without it every caption embeds alike.
    """
    from transformers import CLIPTokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab: dict[str, int] = {}

    def add(tok: str) -> None:
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for c in chars:
        add(c)
    for c in chars:
        add(c + "</w>")
    merges: list[tuple[str, str]] = []
    seen = set()
    for word in sorted(set(w.lower() for w in words if w)):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            pair = (left, right)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            left = left + right
            add(left)
    add("<|startoftext|>")
    add("<|endoftext|>")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# --- tiny CLIP --------------------------------------------------------------------------------


def tiny_clip_for(recipe: dict):
    """A randomly initialised tiny ``CLIPModel`` and its ``CLIPProcessor`` (tokenizer over the toy-world
    vocabulary) of a recipe's sizes, seeded by ``recipe["seed"]``: what every tiny CLIP starts from."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    r = recipe
    torch.manual_seed(r["seed"])
    words = [*vocabulary(), "a", "photo", "of"]
    tokenizer = build_clip_tokenizer(words, model_max_length=r["max_text_len"])
    size = r["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": r["text_hidden"],
            "intermediate_size": 4 * r["text_hidden"],
            "num_hidden_layers": r["text_layers"],
            "num_attention_heads": r["heads"],
            "max_position_embeddings": r["max_text_len"],
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": r["vision_hidden"],
            "intermediate_size": 4 * r["vision_hidden"],
            "num_hidden_layers": r["vision_layers"],
            "num_attention_heads": r["heads"],
            "image_size": size,
            "patch_size": r["patch_size"],
        },
        projection_dim=r["projection_dim"],
    )
    return CLIPModel(config), processor


def build_tiny_clip(out_dir: Path, recipe: dict = TINY_CLIP_RECIPE) -> None:
    """Build, contrastively pretrain on toy-world captions, and save a tiny CLIP + processor."""

    r = recipe
    size = r["image_size"]
    model, processor = tiny_clip_for(r)
    tokenizer = processor.tokenizer

    world = ToyWorld(seed=r["seed"], image_size=size)
    samples = [world.sample(i) for i in range(r["num_images"])]
    pixels = processor.image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]

    rng = random.Random(r["seed"])
    texts = [("a photo of " if rng.random() < r["photo_prefix_prob"] else "") + s.caption for s in samples]
    tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")

    def batch(gen: torch.Generator) -> dict:
        idx = torch.randint(0, len(samples), (r["batch_size"],), generator=gen)
        return {
            "input_ids": tokens["input_ids"][idx],
            "attention_mask": tokens["attention_mask"][idx],
            "pixel_values": pixels[idx],
        }

    fit_and_save_clip(model, processor, out_dir, r, batch)


def fit_and_save_clip(model, processor, out_dir: Path, recipe: dict, batch: Callable) -> None:
    """``recipe["train_steps"]`` contrastive AdamW steps (wd 0.01) over ``batch(generator)`` (CLIP
    inputs; the generator is seeded by ``recipe["seed"]``), then save model and processor."""
    gen = torch.Generator().manual_seed(recipe["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    model.train()
    for _ in range(recipe["train_steps"]):
        out = model(**batch(gen), return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)


# --- tiny VAE and VQ tokenizer: small diffusers autoencoders fitted to toy images ---------------


def _autoencoder_blocks(recipe: dict) -> dict:
    """The encoder/decoder layout both tiny autoencoders share (no attention, 8 norm groups)."""
    n = len(recipe["block_out_channels"])
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(recipe["block_out_channels"]),
        "latent_channels": recipe["latent_channels"],
        "norm_num_groups": 8,
        "sample_size": recipe["image_size"],
        "mid_block_add_attention": False,
    }


def _toy_images(seed: int, image_size: int, n: int) -> torch.Tensor:
    import numpy as np

    world = ToyWorld(seed=seed, image_size=image_size)
    arr = np.stack([np.asarray(world.sample(i).image, dtype=np.float32) for i in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def _fit_on_toy_images(
    model: torch.nn.Module,
    recipe: dict,
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Generator], torch.Tensor],
    out_dir: Path,
) -> None:
    """Train ``model`` for ``recipe["train_steps"]`` AdamW steps on seeded toy batches, then save it."""
    r = recipe
    images = _toy_images(r["seed"], r["image_size"], r["num_images"])
    gen = torch.Generator().manual_seed(r["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"])
    model.train()
    for _ in range(r["train_steps"]):
        x = images[torch.randint(0, len(images), (r["batch_size"],), generator=gen)]
        loss = loss_fn(model, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)


def _vae_loss(kl_weight: float) -> Callable:
    """Reconstruction MSE of a sampled posterior + ``kl_weight`` * KL: how both tiny VAEs train."""

    def loss_fn(vae, x, gen):
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return torch.nn.functional.mse_loss(recon, x) + kl_weight * posterior.kl().mean()

    return loss_fn


def tiny_vae_config(recipe: dict = TINY_VAE_RECIPE) -> dict:
    return {
        **_autoencoder_blocks(recipe),
        "layers_per_block": 1,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    }


def build_tiny_vae(out_dir: Path, recipe: dict = TINY_VAE_RECIPE) -> None:
    """A FLUX-shaped (16-channel, no quant convs) AutoencoderKL trained briefly on toy images."""
    from diffusers import AutoencoderKL

    loss_fn = _vae_loss(recipe["kl_weight"])
    torch.manual_seed(recipe["seed"])
    _fit_on_toy_images(AutoencoderKL(**tiny_vae_config(recipe)), recipe, loss_fn, out_dir / "vae")


def tiny_vq_config(recipe: dict = TINY_VQ_RECIPE) -> dict:
    return {
        **_autoencoder_blocks(recipe),
        "vq_embed_dim": recipe["latent_channels"],
        "num_vq_embeddings": recipe["codebook_size"],
    }


def build_tiny_vq(out_dir: Path, recipe: dict = TINY_VQ_RECIPE) -> None:
    """A small ``VQModel`` (VQ-GAN-style tokenizer, no adversarial loss) trained on toy images,
    so its codes mean something (colours, edges) for the tiny discrete preset."""
    from diffusers import VQModel

    def loss_fn(vq, x, gen):
        out = vq(x)
        return torch.nn.functional.mse_loss(out.sample, x) + out.commit_loss.mean()

    torch.manual_seed(recipe["seed"])
    _fit_on_toy_images(VQModel(**tiny_vq_config(recipe)), recipe, loss_fn, out_dir / "vqvae")


def tiny_sd_unet_config(recipe: dict, cross_attention_dim: int) -> dict:
    """A two-level ``UNet2DConditionModel`` over the tiny SD latents (cross-attention in the first)."""
    latent = recipe["image_size"] // 2 ** (len(recipe["vae_block_out_channels"]) - 1)
    return {
        "sample_size": latent,
        "in_channels": recipe["latent_channels"],
        "out_channels": recipe["latent_channels"],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": list(recipe["unet_block_out_channels"]),
        "layers_per_block": 1,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    }


def build_tiny_sd(out_dir: Path, recipe: dict) -> None:
    """Write a tiny SD pipeline folder: the tiny CLIP's text side, a 4-channel VAE, a UNet trained
    text-to-image on toy captions with ``recipe["prediction_type"]``, and its DDPM scheduler."""

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    r = recipe
    clip_dir = Path(resolve_tiny(TINY_PREFIX + "clip", out_dir.parent))
    clip = CLIPModel.from_pretrained(clip_dir)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    te.eval().requires_grad_(False)
    te.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")

    vae_recipe = {
        **r,
        "block_out_channels": r["vae_block_out_channels"],
        "train_steps": r["vae_train_steps"],
        "batch_size": 16,
    }
    vae_cfg = {
        **_autoencoder_blocks(vae_recipe),
        "layers_per_block": 1,
        "scaling_factor": r["scaling_factor"],
    }

    vae_loss = _vae_loss(r["kl_weight"])
    torch.manual_seed(r["seed"])
    vae = AutoencoderKL(**vae_cfg)
    _fit_on_toy_images(vae, vae_recipe, vae_loss, out_dir / "vae")
    vae.requires_grad_(False)

    scheduler = DDPMScheduler(
        num_train_timesteps=r["num_train_timesteps"],
        beta_start=r["beta_start"],
        beta_end=r["beta_end"],
        beta_schedule=r["beta_schedule"],
        prediction_type=r["prediction_type"],
    )
    scheduler.save_pretrained(out_dir / "scheduler")

    world = ToyWorld(seed=r["seed"], image_size=r["image_size"])
    samples = [world.sample(i) for i in range(r["num_images"])]
    images = _toy_images(r["seed"], r["image_size"], r["num_images"])
    rng = random.Random(r["seed"])
    texts = [("a photo of " if rng.random() < 0.5 else "") + s.caption for s in samples]
    ids = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        latents = (
            torch.cat([vae.encode(images[i : i + 64]).latent_dist.mean for i in range(0, len(images), 64)])
            * r["scaling_factor"]
        )
        context = torch.cat([te(ids[i : i + 64])[0] for i in range(0, len(ids), 64)])
    unet = UNet2DConditionModel(**tiny_sd_unet_config(r, te.config.hidden_size))
    gen = torch.Generator().manual_seed(r["seed"])
    opt = torch.optim.AdamW(unet.parameters(), lr=r["lr"])
    unet.train()
    for _ in range(r["unet_train_steps"]):
        idx = torch.randint(0, len(latents), (r["batch_size"],), generator=gen)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, r["num_train_timesteps"], (len(idx),), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        target = noise if r["prediction_type"] == "epsilon" else scheduler.get_velocity(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=context[idx]).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    unet.eval()
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
