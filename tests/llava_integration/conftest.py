"""Tiny factories for the llava_integration tests: a config-built vision tower and LM saved in
the real formats (seconds to build, nothing cached outside tmp, no pretrained weights), and the
real Llama 2 tokenizer vendored under ``tests/assets/llama2_tokenizer`` (see its SOURCE.md)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

TOWER_SIZE = 32  # px; patch 8 -> 4x4 grid -> 16 image tokens
LLAMA_TOKENIZER_ASSET = Path(__file__).resolve().parents[1] / "assets" / "llama2_tokenizer"


def write_llama_tokenizer(out: Path, legacy: bool = True) -> Path:
    """Un-gzip the vendored Llama 2 ``tokenizer.json`` next to its ``tokenizer_config.json`` in ``out``
    (the files a Vicuna checkpoint ships), so ``AutoTokenizer.from_pretrained(out)`` loads it.
    ``legacy=False`` writes ``"legacy": false`` into the config, as Vicuna-v1.5's says."""
    out.mkdir(parents=True, exist_ok=True)
    with (
        gzip.open(LLAMA_TOKENIZER_ASSET / "tokenizer.json.gz", "rb") as src,
        open(out / "tokenizer.json", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    config = json.loads((LLAMA_TOKENIZER_ASSET / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}, indent=2))
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
def llama_tok_dir_nonlegacy(tmp_path_factory) -> Path:
    """The same tokenizer with ``"legacy": false`` (Vicuna-v1.5's config)."""
    return write_llama_tokenizer(tmp_path_factory.mktemp("llama_tok_nonlegacy"), legacy=False)


@pytest.fixture(scope="session")
def llama_tok_nonlegacy(llama_tok_dir_nonlegacy):
    from transformers import AutoTokenizer

    from llava_integration.model import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(llama_tok_dir_nonlegacy)
    prepare_tokenizer(tok)
    assert tok.legacy is False
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


SHORT = "Answer the question using a single word or phrase."

# Rows in the exact layouts of LLaVA-1.5's released files, written by hand (not by the code under
# test). blip_laion_cc_sbu_558k.json: the instruction first and <image> at the end of the human turn;
# images under LLaVA-Pretrain/images/<5-digit folder>/<id>.jpg.
LCS_ROWS = [
    ("004539375", "Render a clear and concise summary of the photo.", "select luxury furniture 3 - inch gel"),
    (
        "002239345",
        "Write a terse but informative summary of the picture.",
        "2019 ford f-150 xlt supercrew 4x4",
    ),
    ("000123801", "Give a brief description of the image.", "the cat in the hat book cover"),
    ("004455031", "Share a concise interpretation of the image provided.", "東京タワー at night"),
    ("001983117", "What is in the photo?", "a man riding a wave on top of a surfboard."),
    ("003125544", "Describe the image concisely.", "vintage café chairs"),
    ("000817263", "Provide a brief description of the given image.", "3 red apples on a wooden table"),
    ("002654310", "Summarize the visual content of the image.", "sunset over the mountains"),
]


def _turns(*values: str, first: str = "human") -> list[dict]:
    roles = ("human", "gpt") if first == "human" else ("gpt", "human")
    return [{"from": roles[i % 2], "value": v} for i, v in enumerate(values)]


def mix665k_rows() -> list[dict]:
    """llava_v1_5_mix665k.json rows: multi-turn, images under coco/, gqa/, ocr_vqa/, textvqa/, vg/,
    text-only rows without an "image" key, a row that opens with a gpt turn (LLaVA drops that
    turn) and two broken rows (skipped and counted)."""
    return [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": _turns(
                "<image>\nWhat are the colors of the bus in the image?",
                "The bus in the image is white and red.",
                "What feature can be seen on the back of the bus?",
                "The back of the bus features an advertisement.",
            ),
        },
        {
            "id": "000000215677",
            "image": "coco/train2017/000000215677.jpg",
            "conversations": _turns(f"<image>\nHow many people are in the picture?\n{SHORT}", "3"),
        },
        {
            "id": "2354786",
            "image": "gqa/images/2354786.jpg",
            "conversations": _turns(f"<image>\nIs the man on the left or right?\n{SHORT}", "Left"),
        },
        {
            "id": "1883061040",
            "image": "ocr_vqa/images/1883061040.jpg",
            "conversations": _turns(
                "<image>\nWho wrote this book?", "Gary D. Schmidt", "What year was it published?", "2011"
            ),
        },
        {
            "id": "0a0bc91825468c45",
            "image": "textvqa/train_images/0a0bc91825468c45.jpg",
            "conversations": _turns(f"<image>\nWhat time does the clock show?\n{SHORT}", "10:30"),
        },
        {
            "id": "VG_2357376",
            "image": "vg/VG_100K/2357376.jpg",
            "conversations": _turns(
                "<image>\nPlease provide the bounding box coordinate of the region this sentence "
                "describes: white cup on the table.",
                "[0.41, 0.34, 0.56, 0.52]",
            ),
        },
        {
            "id": "VG_2411851",
            "image": "vg/VG_100K_2/2411851.jpg",
            "conversations": _turns("What is the temperature shown on the sign?\n<image>", "-5 degrees"),
        },
        {
            "id": "i6IyJda_0",
            "conversations": _turns("Write a haiku about autumn.", "Crimson leaves drifting."),
        },
        {"id": "sharegpt_math", "conversations": _turns("What is 7 times 8?", "56")},
        {
            "id": "sharegpt_gpt_first",
            "conversations": _turns(
                "Hello! How can I help?", "How many legs does a spider have?", "8", first="gpt"
            ),
        },
        {
            "id": "broken_turn",
            "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}],
        },
        {"id": "broken_image", "conversations": _turns("<image>\nWhat is this?", "A dog.")},
    ]


def write_llava_layout(root: Path, image_size: int = 40) -> Path:
    """LCS-558K and mix665k JSON files and their (non-square, generated) images under ``root``, in
    the folders LLaVA-1.5's scripts expect (``--data-root root``)."""
    import json

    from PIL import Image

    def image(rel: str, seed: int) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        color = ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)
        Image.new("RGB", (image_size, image_size * 3 // 4), color).save(path, format="JPEG")

    pretrain = []
    for k, (sid, instruction, caption) in enumerate(LCS_ROWS):
        rel = f"{sid[:5]}/{sid}.jpg"
        image(f"LLaVA-Pretrain/images/{rel}", k)
        pretrain.append(
            {"id": sid, "image": rel, "conversations": _turns(f"{instruction}\n<image>", caption)}
        )
    (root / "LLaVA-Pretrain").mkdir(parents=True, exist_ok=True)
    (root / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(pretrain))
    finetune = mix665k_rows()
    for k, row in enumerate(finetune):
        if "image" in row:
            image(row["image"], 100 + k)
    (root / "llava_v1_5_mix665k.json").write_text(json.dumps(finetune))
    return root


@pytest.fixture(scope="session")
def llava_layout(tmp_path_factory) -> Path:
    return write_llava_layout(tmp_path_factory.mktemp("llava_data"))
