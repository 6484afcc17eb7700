"""The scoring interface over HF CLIP, HF SigLIP and open_clip, and its errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from eval.clip.encoders import load_encoder, model_fingerprint
from genhancer.runtime.errors import UserError


def _images(n=3, size=32):
    gen = torch.Generator().manual_seed(0)
    return [
        Image.fromarray((torch.rand(size, size, 3, generator=gen) * 255).byte().numpy(), "RGB")
        for _ in range(n)
    ]


def test_hf_clip_global_token_and_logits(tmp_model_dirs):
    from transformers import CLIPModel, CLIPProcessor

    enc = load_encoder(str(tmp_model_dirs.clip), device="cpu", batch_size=2)
    assert enc.kind == "clip" and enc.image_size == 32
    images = _images()
    img = enc.encode_images(images)
    txt = enc.encode_texts(["a red square", "a blue circle"])
    assert img.shape == (3, 24) and txt.shape == (2, 24)  # projection dim, batched over 2 batches

    model = CLIPModel.from_pretrained(tmp_model_dirs.clip).eval()
    proc = CLIPProcessor.from_pretrained(tmp_model_dirs.clip)
    px = proc.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.vision_model(pixel_values=px)
        expected = model.visual_projection(out.pooler_output)  # enhance's global token
        tok = proc.tokenizer(["a red square", "a blue circle"], padding=True, return_tensors="pt")
        own = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=px)
    assert torch.allclose(img, expected, atol=1e-5)
    assert torch.allclose(enc.logits(img, txt).float(), own.logits_per_image, atol=1e-4)


def test_text_cache_encodes_each_text_once(tmp_model_dirs, monkeypatch):
    enc = load_encoder(str(tmp_model_dirs.clip), device="cpu")
    calls = []
    original = enc._text_batch
    monkeypatch.setattr(enc, "_text_batch", lambda texts: calls.append(list(texts)) or original(texts))
    a = enc.encode_texts(["a red square", "a red square", "photo of"])
    b = enc.encode_texts(["photo of", "a red square"])
    assert calls == [["a red square", "photo of"]]
    assert torch.equal(a[2], b[0])


def test_siglip_uses_its_own_sigmoid_logits(tmp_model_dirs):
    from transformers import SiglipModel

    enc = load_encoder(str(tmp_model_dirs.siglip), device="cpu")
    assert enc.kind == "siglip"
    model = SiglipModel.from_pretrained(tmp_model_dirs.siglip)
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
        enc.model.logit_bias.fill_(-3.0)
    scale, bias = enc.logit_scale_bias()
    assert bias == pytest.approx(-3.0) and scale == pytest.approx(float(model.logit_scale.detach().exp()))
    img = enc.encode_images(_images(2))
    txt = enc.encode_texts(["a red square", "a green circle", "a"])
    logits = enc.logits(img, txt)
    cos = (
        torch.nn.functional.normalize(img.double(), dim=-1)
        @ torch.nn.functional.normalize(txt.double(), dim=-1).T
    )
    assert torch.allclose(logits, scale * cos - 3.0)


def test_open_clip_export_folder_and_json_spec(open_clip_export):
    enc = load_encoder(str(open_clip_export), device="cpu")
    assert enc.kind == "open_clip" and enc.image_size == 32
    img = enc.encode_images(_images(2))
    txt = enc.encode_texts(["a photo of a cat", "a dog"])
    assert img.shape == (2, 16) and txt.shape == (2, 16)
    with torch.no_grad():
        # open_clip's own API is untouched: ``visual`` returns the pooled, projected token
        pooled = enc.model.visual(torch.stack([enc._transform(im) for im in _images(2)]))
    assert torch.allclose(img, pooled, atol=1e-5)
    spec_enc = load_encoder(
        f"open_clip:{open_clip_export.parent / 'genhancer-eval-openclip.json'}", device="cpu"
    )
    assert spec_enc.encode_images(_images(1)).shape == (1, 16)


def test_run_folder_resolves_to_its_hf_export(tmp_model_dirs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tmp_model_dirs.clip, run / "export" / "hf")
    assert load_encoder(str(run), device="cpu").kind == "clip"


def test_bad_model_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="model path not found: ./no/such/model"):
        load_encoder("./no/such/model")
    with pytest.raises(UserError, match="no config.json"):
        load_encoder(str(tmp_path))
    from transformers import BertConfig

    BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="'bert' model, not a vision-language"):
        load_encoder(str(tmp_path / "bert"))
    with pytest.raises(UserError, match="unknown open_clip model"):
        load_encoder("open_clip:NoSuchArch")


def test_fingerprint_changes_when_weights_change(tmp_model_dirs, tmp_path):
    copy = shutil.copytree(tmp_model_dirs.clip, tmp_path / "clip")
    before = model_fingerprint(str(copy))
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b"")
    import os

    os.utime(copy / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(str(copy)) != before
