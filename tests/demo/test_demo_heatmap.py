"""Heat maps: a patch-grid map for every encoder kind, equal to the gradient computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from demo.heatmap import DISPLAY_SIZE, heatmap_views, overlay, patch_relevance
from eval.clip.encoders import load_encoder


def _image():
    img = Image.new("RGB", (48, 40), "black")
    img.paste(Image.new("RGB", (12, 12), "red"), (30, 4))
    return img


def test_map_equals_the_gradient_norm_at_the_last_block_input(tmp_model_dirs):
    enc = load_encoder(str(tmp_model_dirs.clip), device="cpu")
    rel, score = patch_relevance(enc, _image(), "a photo of a red square")
    assert rel.shape == (4, 4) and rel.min() == 0.0 and rel.max() == pytest.approx(1.0)
    # by hand: run the tower with hidden states, differentiate w.r.t. the last block's input
    pixels = enc.preprocess([_image()])
    text = enc.encode_texts(["a photo of a red square"])
    vision = enc.model.vision_model
    with torch.enable_grad():
        out = vision(pixel_values=pixels, output_hidden_states=True)
        hidden = out.hidden_states[-2]
        hidden.retain_grad()
        token = enc.model.visual_projection(out.pooler_output)
        s = torch.nn.functional.cosine_similarity(token, text)[0] * enc.logit_scale_bias()[0]
        s.backward()
    norms = hidden.grad[0, 1:].norm(dim=-1).view(4, 4)
    expected = ((norms - norms.min()) / (norms.max() - norms.min())).numpy()
    np.testing.assert_allclose(rel, expected, atol=1e-5)
    assert score == pytest.approx(s.item(), abs=1e-5)
    assert score == pytest.approx(float(enc.logits(enc.encode_images([_image()]), text)[0, 0]), abs=1e-4)


@pytest.mark.parametrize("kind", ["siglip", "open_clip"])
def test_other_encoder_kinds(tmp_model_dirs, kind, monkeypatch):
    spec = str(tmp_model_dirs.siglip) if kind == "siglip" else f"open_clip:{tmp_model_dirs.open_clip_json}"
    enc = load_encoder(spec, device="cpu")
    if kind == "open_clip":  # the test config's 64-word vocabulary does not fit open_clip's tokenizer
        text = torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
        monkeypatch.setattr(enc, "encode_texts", lambda texts: text)
    rel, score = patch_relevance(enc, _image(), "a red square")
    assert rel.shape == (4, 4) and np.isfinite(rel).all() and np.isfinite(score)
    assert rel.max() == pytest.approx(1.0)


def test_overlay_size():
    rel = np.zeros((4, 4))
    rel[0, 3] = 1.0
    out = overlay(_image(), rel)
    assert out.size == (DISPLAY_SIZE, DISPLAY_SIZE) and out.mode == "RGB"
    arr = np.asarray(out).astype(int)
    assert arr[20, 230].sum() > arr[230, 20].sum()  # the hot corner is brighter


def test_views_for_both_sides_and_messages(registry, two_images):
    views, message = heatmap_views(registry, two_images[0], "a red square")
    assert message == "" and [v.side for v in views] == ["original", "enhanced"]
    for v in views:
        assert v.error == "" and v.overlay.size == (DISPLAY_SIZE, DISPLAY_SIZE)
        assert v.caption.startswith("score (logit)")
    assert heatmap_views(registry, None, "x")[1].startswith("image: no image given")
    assert "write a statement" in heatmap_views(registry, two_images[0], " ")[1]


def test_concurrent_requests_on_one_encoder_do_not_mix(tmp_model_dirs):
    import threading

    enc = load_encoder(str(tmp_model_dirs.clip), device="cpu")
    images = [_image(), Image.new("RGB", (32, 32), "blue")]
    texts = ["a red square", "a blue circle"]
    expected = [patch_relevance(enc, im, t) for im, t in zip(images, texts)]
    got: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def explain(i):
        try:
            for _ in range(3):
                got[i] = patch_relevance(enc, images[i], texts[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    def encode():
        for _ in range(3):
            enc.encode_images(images)

    threads = [threading.Thread(target=explain, args=(i,)) for i in (0, 1)] + [
        threading.Thread(target=encode)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        np.testing.assert_allclose(got[i][0], expected[i][0], atol=1e-5)
        assert got[i][1] == pytest.approx(expected[i][1], abs=1e-5)
