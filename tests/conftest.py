"""Shared tiny factories for the whole suite (built from configs in seconds).

Everything here is built directly from configs in a temporary folder, in well under a second
each, so no test needs a model hub or the cached ``genhancer-tiny:*`` models (those train for
minutes). The folders are written in the real on-disk formats (``save_pretrained``, an open_clip
JSON model config), so the tests run the same loading code as the paper presets.

Fixtures (see each docstring):

* ``tiny_words``: the words the tiny tokenizer spells as single tokens.
* ``tmp_model_dirs`` (session): a :class:`TinyModelDirs` with tiny CLIP, SigLIP, open_clip and VAE.
* ``tiny_enhance_config``: ``(*overrides) -> EnhanceConfig`` on the ``tiny`` preset pointed at
  ``tmp_model_dirs`` (also available as the plain function :func:`build_tiny_enhance_config`).
* ``tiny_cfg``: ``tiny_enhance_config()`` with no extra overrides.
* ``tiny_clip_backbone``: a fresh :class:`~enhance.backbones.hf.HFCLIPBackbone` loaded from disk.
* ``tiny_genhancer_model``: a fresh :class:`~enhance.model.GenHancerModel` built by
  :func:`enhance.train.build_model` from ``tiny_cfg``.
* ``tiny_pixels``: a seeded batch ``{"pixel_values", "vae_pixels"}`` at the tiny resolution.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# The suite runs offline (tiny models and generated data only). Without this, a test of
# a missing model id waits out the hub client's retries (~50 s) instead of failing at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# --- sizes ------------------------------------------------------------------------------------

#: Input resolution of every tiny tower (patch 8 -> a 4x4 grid of 16 patch tokens).
TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
TINY_HIDDEN = 32
TINY_PROJECTION_DIM = 24  # != hidden, so a test can tell the projected token from the pooled one
TINY_TEXT_LEN = 16
#: VAE recipe: three blocks -> downsample 4 -> an 8x8 latent -> 16 packed tokens at 32 px.
TINY_VAE_BLOCKS = [8, 8, 8]
TINY_LATENT_CHANNELS = 16
TINY_WORDS = ("a", "red", "green", "blue", "square", "circle", "triangle", "photo", "of")

#: Overrides that shrink the ``tiny`` preset further (FLUX's rotary axes must sum to the head dim).
TINY_DENOISER_OVERRIDES = (
    "method.denoiser.num_layers=1",
    "method.denoiser.num_single_layers=1",
    "method.denoiser.num_attention_heads=2",
    "method.denoiser.attention_head_dim=16",
    "method.denoiser.axes_dims_rope=[4, 6, 6]",
    "method.denoiser.joint_attention_dim=32",
    "method.denoiser.pooled_projection_dim=32",
)


@dataclass(frozen=True)
class TinyModelDirs:
    """Paths of the tiny models written once per session.

    Attributes:
        root: the session folder holding everything below.
        clip: ``CLIPModel`` + ``CLIPProcessor`` (``AutoModel`` / ``AutoProcessor`` load it).
        siglip: ``SiglipModel`` + ``SiglipProcessor`` (SigLIP image processor, CLIP BPE tokenizer).
        open_clip_json: an open_clip model config named ``genhancer-test-openclip``.
        vae: a folder whose ``vae/`` subfolder holds a 16-channel ``AutoencoderKL``.
        cache: an empty cache dir for ``cfg.cache_dir`` (nothing may be built there).
    """

    root: Path
    clip: Path
    siglip: Path
    open_clip_json: Path
    vae: Path
    cache: Path


# --- builders (plain functions, usable outside fixtures) ----------------------------------------


def _text_config(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": TINY_HIDDEN,
        "intermediate_size": 2 * TINY_HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": TINY_TEXT_LEN,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision_config(layers: int) -> dict:
    return {
        "hidden_size": TINY_HIDDEN,
        "intermediate_size": 2 * TINY_HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": TINY_PATCH,
    }


def build_tiny_clip_dir(out_dir: Path, seed: int = 0) -> Path:
    """Write a random-init tiny ``CLIPModel`` (2 vision layers, 1 text layer) and its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from genhancer.toyworld.models import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(list(TINY_WORDS), model_max_length=TINY_TEXT_LEN)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    config = CLIPConfig(
        text_config=_text_config(tokenizer),
        vision_config=_vision_config(layers=2),
        projection_dim=TINY_PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out_dir, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def build_tiny_siglip_dir(out_dir: Path, seed: int = 0) -> Path:
    """Write a random-init tiny ``SiglipModel`` and a ``SiglipProcessor``.

    SigLIP's own tokenizer needs sentencepiece files we cannot fetch offline, so the processor
    pairs ``SiglipImageProcessor`` with the hand-built CLIP BPE tokenizer; ``AutoProcessor`` loads
    that pair back (the backbone only uses the image side).
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    from genhancer.toyworld.models import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(list(TINY_WORDS), model_max_length=TINY_TEXT_LEN)
    image_processor = SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    config = SiglipConfig(text_config=_text_config(tokenizer), vision_config=_vision_config(layers=1))
    torch.manual_seed(seed)
    SiglipModel(config).save_pretrained(out_dir, safe_serialization=True)
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def build_tiny_open_clip_json(path: Path) -> Path:
    """Write an open_clip model config (ViT 32 px, patch 8, width 32, 2 layers; embed dim 16).

    The model name open_clip registers is the file stem, ``genhancer-test-openclip``.
    """
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": TINY_IMAGE_SIZE,
            "layers": 2,
            "width": TINY_HIDDEN,
            "head_width": 16,
            "mlp_ratio": 2.0,
            "patch_size": TINY_PATCH,
        },
        "text_cfg": {"context_length": TINY_TEXT_LEN, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    path.write_text(json.dumps(cfg, indent=2))
    return path


def build_tiny_vae_dir(out_dir: Path, seed: int = 0) -> Path:
    """Write a random-init FLUX-shaped ``AutoencoderKL`` (16 latent channels) to ``out_dir/vae``."""
    from diffusers import AutoencoderKL

    from genhancer.toyworld.models import TINY_VAE_RECIPE, tiny_vae_config

    recipe = {
        **TINY_VAE_RECIPE,
        "block_out_channels": TINY_VAE_BLOCKS,
        "latent_channels": TINY_LATENT_CHANNELS,
        "image_size": TINY_IMAGE_SIZE,
    }
    torch.manual_seed(seed)
    AutoencoderKL(**tiny_vae_config(recipe)).save_pretrained(out_dir / "vae", safe_serialization=True)
    return out_dir


def build_tiny_sd_dir(out_dir: Path, clip_dir: Path, prediction_type: str, seed: int = 0) -> Path:
    """A random-init SD pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) over
    32 px images: the tiny CLIP's text side (width ``TINY_HIDDEN``), a 4-channel VAE, a UNet."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    from genhancer.toyworld.models import _autoencoder_blocks, tiny_sd_unet_config

    clip = CLIPModel.from_pretrained(clip_dir)
    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    te.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
    CLIPTokenizer.from_pretrained(clip_dir).save_pretrained(out_dir / "tokenizer")
    recipe = {
        "image_size": TINY_IMAGE_SIZE,
        "block_out_channels": TINY_VAE_BLOCKS,
        "latent_channels": 4,
        "vae_block_out_channels": TINY_VAE_BLOCKS,
        "unet_block_out_channels": [16, 32],
    }
    torch.manual_seed(seed)
    vae = AutoencoderKL(**_autoencoder_blocks(recipe), layers_per_block=1, scaling_factor=0.18215)
    vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    UNet2DConditionModel(**tiny_sd_unet_config(recipe, TINY_HIDDEN)).save_pretrained(
        out_dir / "unet", safe_serialization=True
    )
    DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
    ).save_pretrained(out_dir / "scheduler")
    return out_dir


#: The run settings every tiny test config shares: 2 + 2 steps on 4-image batches of a 64-image toy
#: world, a checkpoint and a log line every step, 2 preview images.
TINY_RUN_SETS = (
    "data.source=toyworld",
    "data.toyworld_size=64",
    "data.num_workers=0",
    "stage1.steps=2",
    "stage1.global_batch_size=4",
    "stage1.per_device_batch_size=4",
    "stage2.steps=2",
    "stage2.global_batch_size=4",
    "stage2.per_device_batch_size=4",
    "checkpoint.every=1",
    "checkpoint.keep_last=2",
    "logging.every=1",
    "logging.preview_count=2",
    "logging.progress=false",
)


def tiny_method_sets(dirs: TinyModelDirs, method: str, sd_dir: Path) -> list[str]:
    """The ``--set`` items of :func:`build_tiny_method_config` (also what the CLI tests pass)."""
    return [
        "backbone.family=openai-clip",
        f"backbone.name_or_path={dirs.clip}",
        f"backbone.image_size={TINY_IMAGE_SIZE}",
        f"method.sd.path={sd_dir}",
        f"method.sd.cross_attention_dim={TINY_HIDDEN}",
        "method.sd.reconstruct_steps=2",
        *TINY_RUN_SETS,
        "train.mixed_precision='no'",
        f"cache_dir={dirs.cache}",
        *TINY_METHOD_SETS[method],
    ]


#: What the tiny config of a frozen-SD method changes on top of the shared base (no GenHancer keys).
TINY_METHOD_SETS = {
    "dcr": ("stage1.per_device_batch_size=4",),
    "naive-contrastive": (),
    "diva": (f"method.num_tokens={TINY_TEXT_LEN}",),
}


def build_tiny_method_config(dirs: TinyModelDirs, method: str, sd_dir: Path, overrides=()):
    """``--method M --preset tiny`` pointed at ``dirs`` and the random SD folder ``sd_dir``,
    shrunk like :func:`build_tiny_enhance_config` (2 + 2 steps on 4-image batches)."""
    from enhance.config import load_config

    base = tiny_method_sets(dirs, method, sd_dir)
    return load_config("tiny", overrides=[*base, *overrides], method=method)


def build_tiny_enhance_config(dirs: TinyModelDirs, overrides: tuple[str, ...] | list[str] = ()):
    """The ``tiny`` preset pointed at ``dirs``, shrunk to seconds; ``overrides`` are applied last.

    Stage 1 and 2 run 2 optimizer steps each on 4-image batches of a 64-image toy world;
    checkpoints every step, logs every step, 2 preview images sampled with 2 Euler steps.
    """
    from enhance.config import load_config

    base = [
        "backbone.family=openai-clip",
        f"backbone.name_or_path={dirs.clip}",
        f"backbone.image_size={TINY_IMAGE_SIZE}",
        f"method.vae.name_or_path={dirs.vae}",
        "method.vae.subfolder=vae",
        f"method.vae.latent_channels={TINY_LATENT_CHANNELS}",
        *TINY_DENOISER_OVERRIDES,
        "method.flow.preview_steps=2",
        *TINY_RUN_SETS,
        "train.mixed_precision='no'",  # quoted: YAML 1.1 reads a bare no as false
        f"cache_dir={dirs.cache}",
    ]
    return load_config("tiny", overrides=[*base, *overrides])


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_words() -> tuple[str, ...]:
    """Words the tiny CLIP/SigLIP tokenizer spells as single tokens."""
    return TINY_WORDS


@pytest.fixture(scope="session")
def tmp_model_dirs(tmp_path_factory) -> TinyModelDirs:
    """Tiny CLIP, SigLIP, open_clip (JSON) and VAE written once per session (about a second).

    Treat the folders as read-only: tests that mutate a model load their own copy.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    cache = root / "cache"
    cache.mkdir()
    return TinyModelDirs(
        root=root,
        clip=build_tiny_clip_dir(root / "clip"),
        siglip=build_tiny_siglip_dir(root / "siglip"),
        open_clip_json=build_tiny_open_clip_json(root / "genhancer-test-openclip.json"),
        vae=build_tiny_vae_dir(root / "vae_repo"),
        cache=cache,
    )


@pytest.fixture()
def tiny_enhance_config(tmp_model_dirs):
    """Factory ``(*overrides: str) -> EnhanceConfig``: :func:`build_tiny_enhance_config` bound to
    this session's ``tmp_model_dirs``. Example: ``tiny_enhance_config("stage1.steps=4")``."""

    def make(*overrides: str):
        return build_tiny_enhance_config(tmp_model_dirs, overrides)

    return make


@pytest.fixture(scope="session")
def tiny_sd_dirs(tmp_model_dirs) -> dict[str, Path]:
    """Random SD pipeline folders: ``epsilon`` (as SD 2.1-base) and ``v_prediction`` (as SD 2.1)."""
    return {
        kind: build_tiny_sd_dir(tmp_model_dirs.root / f"sd_{kind}", tmp_model_dirs.clip, kind)
        for kind in ("epsilon", "v_prediction")
    }


@pytest.fixture()
def tiny_method_config(tmp_model_dirs, tiny_sd_dirs):
    """Factory ``(method, *overrides) -> EnhanceConfig`` for the frozen-SD methods (DIVA on the
    epsilon folder, DCR and naive on the v-prediction one, as their official checkpoints)."""

    def make(method: str, *overrides: str):
        sd = tiny_sd_dirs["epsilon" if method == "diva" else "v_prediction"]
        return build_tiny_method_config(tmp_model_dirs, method, sd, overrides)

    return make


@pytest.fixture()
def tiny_cfg(tiny_enhance_config):
    """The tiny ``EnhanceConfig`` with no extra overrides (validated)."""
    return tiny_enhance_config()


@pytest.fixture()
def tiny_clip_backbone(tmp_model_dirs):
    """A fresh ``HFCLIPBackbone`` (eval mode) loaded from ``tmp_model_dirs.clip``; safe to mutate."""
    from enhance.backbones.hf import load_hf_backbone

    return load_hf_backbone("openai-clip", str(tmp_model_dirs.clip), TINY_IMAGE_SIZE)


@pytest.fixture()
def tiny_genhancer_model(tiny_cfg):
    """A fresh ``GenHancerModel`` (tiny CLIP, tiny VAE, 1+1-block FLUX) from ``build_model(tiny_cfg)``."""
    from enhance.train import build_model

    return build_model(tiny_cfg)


@pytest.fixture()
def tiny_pixels() -> dict[str, torch.Tensor]:
    """Seeded batch of 2: ``pixel_values`` (CLIP-normalised scale) and ``vae_pixels`` in [-1, 1],
    both ``[2, 3, 32, 32]``."""
    gen = torch.Generator().manual_seed(0)
    vae = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=gen) * 2 - 1
    return {"pixel_values": vae * 1.7, "vae_pixels": vae}
