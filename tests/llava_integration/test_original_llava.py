"""Our LLaVA inputs against the original LLaVA package's own, token for token and pixel for pixel.

The slow test runs ``llava-torch`` 1.2.2.post1 (``LazySupervisedDataset``, ``preprocess_plain`` /
``preprocess_v1``, ``DataCollatorForSupervisedDataset``, ``LlavaLlamaForCausalLM``) under
transformers 4.37.2 in a side folder (``original_llava.py``) on the golden rows, with non-square
images of several sizes, the real Llama 2 tokenizer as ``legacy: true`` and ``legacy: false``
(Vicuna-v1.5's), pretraining (``plain``, centre crop) and finetuning (``v1``, pad to square). It
compares with what our ``LlavaStream`` feeds ``LlavaForConditionalGeneration``: ids and labels
exactly (our run of image tokens standing for LLaVA's one ``-200``), pixel values exactly, and the
loss of the same tiny Llama, tower and projector to 1e-5 relative.

The fast test checks the one piece of the harness we wrote, the SentencePiece model rebuilt from
the vendored ``tokenizer.json``, against ``tokenizers`` on thousands of strings.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from golden_rows import FINETUNE, PLAIN
from original_llava import (
    SideEnvError,
    ensure_side_env,
    read_vendored_tokenizer_json,
    run_original,
    write_sentencepiece_model,
    write_slow_tokenizer,
)
from testkit import load_test_module

from enhance.backbones.hf import _prefix_keys
from llava_integration.config import ModelConfig
from llava_integration.data import LlavaStream, load_records
from llava_integration.model import build, num_image_tokens
from llava_integration.templates import IGNORE_INDEX, TEMPLATES

LLAVA_IMAGE_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX
IMAGE_SIZES = [(70, 45), (33, 90), (64, 64), (20, 27), (41, 40), (100, 31), (48, 49)]
STAGES = {  # LLaVA-1.5's scripts: pretrain --version plain (square), finetune --version v1 --image_aspect_ratio pad
    "pretrain": ("plain", "plain", "square", PLAIN),
    "finetune": ("v1", "vicuna_v1", "pad", FINETUNE),
}

_parts = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
make_llm, make_tower = _parts.make_llm, _parts.make_tower


def test_rebuilt_sentencepiece_model_encodes_like_the_vendored_tokenizer_json(tmp_path):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    data = read_vendored_tokenizer_json()
    sp = spm.SentencePieceProcessor(model_file=str(write_sentencepiece_model(data, tmp_path / "t.model")))
    fast = Tokenizer.from_str(json.dumps(data))
    rng = random.Random(0)
    words = [w.replace("▁", " ") for w in data["model"]["vocab"] if not w.startswith("<")]
    chars = [chr(c) for c in [*range(32, 127), *range(0x4E00, 0x4E20), 0xE9, 0x1F642, 0x3042, 10, 9]]
    texts = [r["conversations"][k]["value"] for r in PLAIN + FINETUNE for k in range(len(r["conversations"]))]
    texts += ["".join(rng.choice(["", " ", "\n"]) + rng.choice(words) for _ in range(8)) for _ in range(1500)]
    texts += ["".join(rng.choices(chars, k=rng.randint(1, 30))) for _ in range(1500)]
    differ = [t for t in texts if sp.encode(t) != fast.encode(t, add_special_tokens=False).ids]
    assert not differ, differ[:3]
    assert sp.encode("Hello world!") == [15043, 3186, 29991]  # llama-tokenizer-js's own test case


def _write_data(root: Path, rows: list[dict]) -> Path:
    from PIL import Image

    rng = random.Random(7)
    for k, row in enumerate(rows):
        if "image" not in row:
            continue
        w, h = IMAGE_SIZES[k % len(IMAGE_SIZES)]
        pixels = bytes(rng.randrange(256) for _ in range(w * h * 3))
        path = root / "images" / row["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (w, h), pixels).save(path, format="JPEG", quality=90)
    data = root / "data.json"
    data.write_text(json.dumps(rows, ensure_ascii=False))
    return data


def _side_weights(model, path: Path) -> Path:
    """Our LM and projector in LLaVA's key names (its tower loads from the same folder as ours)."""
    from safetensors.torch import save_file

    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model.") :]] = v
        elif k == "lm_head.weight":
            out[k] = v
        elif k.startswith("model.multi_modal_projector."):
            name = k[len("model.multi_modal_projector.") :]
            out["model.mm_projector." + name.replace("linear_1.", "0.").replace("linear_2.", "2.")] = v
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def _llama_kwargs(text_config) -> dict:
    rope = getattr(text_config, "rope_parameters", None) or {}
    return {
        "vocab_size": text_config.vocab_size,
        "hidden_size": text_config.hidden_size,
        "intermediate_size": text_config.intermediate_size,
        "num_hidden_layers": text_config.num_hidden_layers,
        "num_attention_heads": text_config.num_attention_heads,
        "num_key_value_heads": text_config.num_key_value_heads,
        "max_position_embeddings": text_config.max_position_embeddings,
        "rms_norm_eps": text_config.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", getattr(text_config, "rope_theta", 10000.0)),
        "hidden_act": text_config.hidden_act,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _collapse(ids: list[int], labels: list[int], image_id: int) -> tuple[list[int], list[int]]:
    """Our expanded run of image tokens as LLaVA's single ``-200`` (label ``IGNORE_INDEX``)."""
    out_ids, out_labels = [], []
    for i, (x, y) in enumerate(zip(ids, labels)):
        if x == image_id:
            assert y == IGNORE_INDEX
            if i and ids[i - 1] == image_id:
                continue
            x = LLAVA_IMAGE_INDEX
        out_ids.append(x)
        out_labels.append(y)
    return out_ids, out_labels


@pytest.fixture(scope="module")
def side_site() -> Path:
    try:
        return ensure_side_env()
    except SideEnvError as exc:
        pytest.fail(str(exc))


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non_legacy"])
def test_inputs_and_loss_equal_the_original_llava_package(side_site, tmp_path, legacy, stage):
    version, template, aspect, rows = STAGES[stage]
    tower = make_tower(tmp_path / "tower")
    _prefix_keys(tower, "vision_model.")  # our export's layout: the one transformers 4.37 reads
    llm = make_llm(tmp_path / "llm", tokenizer="llama")
    config = json.loads((llm / "tokenizer_config.json").read_text())
    (llm / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))
    data = _write_data(tmp_path / "data", rows)

    model, processor = build(ModelConfig(vision_tower=str(tower), llm=str(llm), gradient_checkpointing=False))
    assert processor.tokenizer.legacy is legacy
    image_processor = processor.image_processor
    image_processor.do_pad = aspect == "pad"  # as train.stage_image_processor sets it per stage
    records = load_records(data)
    assert len(records) == len(rows)
    stream = LlavaStream(
        records,
        data.parent / "images",
        processor.tokenizer,
        image_processor,
        TEMPLATES[template],
        model.config.image_token_id,
        num_image_tokens(model.config),
        max_length=2048,
        batch_size=len(records),
        seed=0,
    )
    ours = stream.collate(records)
    assert ours["num_samples"] == len(rows) and not ours["skipped"] and not ours["dropped"]
    with torch.no_grad():
        our_loss = model(
            input_ids=ours["input_ids"],
            attention_mask=ours["attention_mask"],
            pixel_values=ours["pixel_values"],
            labels=ours["labels"],
        ).loss.double()

    job = {
        "tokenizer_dir": str(write_slow_tokenizer(tmp_path / "slow_tok", legacy)),
        "tower_dir": str(tower),
        "data_path": str(data),
        "image_folder": str(data.parent / "images"),
        "version": version,
        "image_aspect_ratio": aspect,
        "model_max_length": 2048,
        "llama": _llama_kwargs(model.config.text_config),
        "mm_hidden_size": model.config.vision_config.hidden_size,
        "weights": str(_side_weights(model, tmp_path / "side_weights.safetensors")),
    }
    try:
        original = run_original(side_site, job, tmp_path / "side")
    except SideEnvError as exc:
        pytest.fail(str(exc))
    assert bool(original["legacy"]) is legacy
    assert "tokenization mismatch" not in original["log"]  # LLaVA trains on every row

    image_rows = 0
    for i, row in enumerate(rows):
        n = int(ours["attention_mask"][i].sum())
        ids, labels = _collapse(
            ours["input_ids"][i, :n].tolist(), ours["labels"][i, :n].tolist(), model.config.image_token_id
        )
        want_ids, want_labels = original["input_ids"][i].tolist(), original["labels"][i].tolist()
        tok = processor.tokenizer
        assert ids == want_ids, (row["id"], tok.convert_ids_to_tokens([x for x in ids if x >= 0])[:12])
        assert labels == want_labels, row["id"]
        if "image" in row:
            assert torch.equal(ours["pixel_values"][image_rows], original["images"][i]), row["id"]
            image_rows += 1
    assert image_rows == ours["pixel_values"].shape[0]
    supervised = int((ours["labels"] != IGNORE_INDEX).sum())
    assert supervised > 10 * len(rows) // 2
    assert abs(our_loss - original["loss"]) <= 1e-5 * abs(original["loss"]), (
        float(our_loss),
        float(original["loss"]),
    )
