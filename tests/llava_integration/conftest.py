"""Tiny factories for the llava_integration tests: a config-built vision tower and LM saved in
the real formats (seconds to build, nothing cached outside tmp, no pretrained weights), and the
real Llama 2 tokenizer vendored under ``tests/assets/llama2_tokenizer`` (see its SOURCE.md)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

TOWER_SIZE = 32  # px; patch 8 -> 4x4 grid -> 16 image tokens
LLAMA_TOKENIZER_ASSET = Path(__file__).resolve().parents[1] / "assets" / "llama2_tokenizer"


def write_llama_tokenizer(out: Path) -> Path:
    """Un-gzip the vendored Llama 2 ``tokenizer.json`` next to its ``tokenizer_config.json`` in ``out``
    (the files a Vicuna checkpoint ships), so ``AutoTokenizer.from_pretrained(out)`` loads it."""
    out.mkdir(parents=True, exist_ok=True)
    with (
        gzip.open(LLAMA_TOKENIZER_ASSET / "tokenizer.json.gz", "rb") as src,
        open(out / "tokenizer.json", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    shutil.copy(LLAMA_TOKENIZER_ASSET / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def make_tower(
    out: Path, hidden: int = 32, image_size: int = TOWER_SIZE, patch: int = 8, seed: int = 0
) -> Path:
    """A random CLIP vision tower + image processor, laid out like ``enhance``'s export/vision_tower."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=hidden,
    )
    CLIPVisionModel(cfg).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    return out


def make_llm(out: Path, hidden: int = 32, seed: int = 0, tokenizer: str = "word") -> Path:
    """A random 2-layer Llama with the tiny preset's word-level tokenizer, or (``tokenizer="llama"``)
    with the real Llama 2 tokenizer files, as a Vicuna checkpoint carries them."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from llava_integration.tiny import build_tokenizer, llm_config

    torch.manual_seed(seed)
    if tokenizer == "llama":
        tok = AutoTokenizer.from_pretrained(write_llama_tokenizer(out))
    else:
        tok = build_tokenizer()
        tok.save_pretrained(out)
    recipe = {"hidden": hidden, "intermediate": 2 * hidden, "layers": 2, "heads": 2, "max_positions": 2048}
    LlamaForCausalLM(llm_config(tok, recipe)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llava_parts")
    return {
        "tower": make_tower(root / "tower"),
        "llm": make_llm(root / "llm"),
        "tower_wide": make_tower(root / "tower_wide", hidden=48),
        "tower_grid": make_tower(root / "tower_grid", image_size=48),
        "tower_alt": make_tower(root / "tower_alt", seed=1),
        "llm_llama": make_llm(root / "llm_llama", tokenizer="llama"),
    }


@pytest.fixture(scope="session")
def llama_tok_dir(tmp_path_factory) -> Path:
    """A folder holding the real Llama 2 ``tokenizer.json`` and ``tokenizer_config.json``."""
    return write_llama_tokenizer(tmp_path_factory.mktemp("llama_tok"))


@pytest.fixture(scope="session")
def llama_tok(llama_tok_dir):
    """The real Llama 2 tokenizer with ``<image>`` and ``<pad>`` added, as model assembly adds them."""
    from transformers import AutoTokenizer

    from llava_integration.model import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(llama_tok_dir)
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(scope="session")
def word_tok():
    """The tiny preset's word-level tokenizer with ``<image>`` and ``<pad>`` added."""
    from llava_integration.model import prepare_tokenizer
    from llava_integration.tiny import build_tokenizer

    tok = build_tokenizer()
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(scope="session")
def tiny_model_cfg(tiny_dirs):
    from llava_integration.config import ModelConfig

    return ModelConfig(
        vision_tower=str(tiny_dirs["tower"]), llm=str(tiny_dirs["llm"]), gradient_checkpointing=False
    )


@pytest.fixture()
def tiny_llava(tiny_model_cfg):
    """(model, processor), freshly assembled (seconds)."""
    from llava_integration.model import build

    return build(tiny_model_cfg, seed=0)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    from llava_integration.toydata import write_toy_llava

    root = tmp_path_factory.mktemp("toy_llava")
    write_toy_llava(root, seed=3, image_size=TOWER_SIZE, n_pretrain=24, n_finetune=40, n_eval=4)
    return root
