"""Pair test: per-model scores against a hand computation, truth marking, and in-page messages."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from demo.models import ModelRegistry
from demo.pair_test import (
    PairResult,
    StatementScore,
    parse_truth,
    render_pair,
    score_pair,
    softmax2,
)


def test_softmax2_and_truth_parsing():
    a, b = softmax2(2.0, 0.0)
    assert a + b == pytest.approx(1.0)
    assert a == pytest.approx(1 / (1 + math.exp(-2)))
    assert softmax2(1000.0, 0.0)[0] == pytest.approx(1.0)  # no overflow
    assert parse_truth("image A") == 0 and parse_truth("image B") == 1
    assert parse_truth("not marked") is None and parse_truth(None) is None


def test_scores_match_the_encoders_own_logits(registry, two_images):
    statements = ["a red square", "a blue square"]
    result = score_pair(registry, *two_images, statements, ["image A", "image B"])
    assert result.message == ""
    assert [m.side for m in result.models] == ["original", "enhanced"]
    images = [Image.open(p).convert("RGB") for p in two_images]
    for m in result.models:
        assert m.error == ""
        enc = registry.encoder(m.side)
        logits = enc.logits(
            enc.encode_images(images), enc.encode_texts(["a photo of " + s for s in statements])
        )
        for s, st in enumerate(m.statements):
            assert st.logits == pytest.approx((float(logits[0, s]), float(logits[1, s])), abs=1e-6)
            p = torch.softmax(torch.tensor(st.logits, dtype=torch.float64), 0)
            assert st.probs == pytest.approx(tuple(p.tolist()))
            assert st.pick == int(p.argmax())
            assert st.truth == s and st.correct == (st.pick == s)
            cos = st.logits[0] / enc.logit_scale_bias()[0]
            assert st.cosine[0] == pytest.approx(cos, abs=1e-6)
    # the two sides are different models, so their numbers differ
    assert result.models[0].statements[0].logits != result.models[1].statements[0].logits


def test_one_statement_and_unmarked_truth(registry, two_images):
    result = score_pair(registry, *two_images, ["a red square", "  "], ["not marked"])
    for m in result.models:
        assert len(m.statements) == 1
        assert m.statements[0].correct is None
    page = render_pair(result)
    assert "gh-unmarked" in page and "gh-right" not in page and "gh-wrong" not in page


def test_colours_follow_the_marked_truth():
    def st(pick, truth):
        return StatementScore("s", (1.0, 0.0), (0.1, 0.0), softmax2(1.0, 0.0), pick, truth)

    from demo.pair_test import ModelScores

    result = PairResult(
        [
            ModelScores("original", "x", [st(0, 0), st(0, 1)]),
            ModelScores("enhanced", "y", [st(0, 0), st(1, 1)]),
        ]
    )
    page = render_pair(result)
    assert page.count("gh-right") == 3 and page.count("gh-wrong") == 1
    assert "#d3f4dc" in page and "#fbd9d7" in page  # green and red
    assert "pair wrong" in page and "pair right" in page


def test_a_tie_is_not_right(registry, two_images, monkeypatch):
    enc = registry.encoder("original")
    monkeypatch.setattr(
        enc, "logits", lambda img, txt: torch.zeros(img.shape[0], txt.shape[0], dtype=torch.float64)
    )
    result = score_pair(registry, *two_images, ["a red square"], ["image A"])
    st = result.models[0].statements[0]
    assert st.pick == -1 and st.correct is False
    assert "tie" in render_pair(result)


def test_messages_instead_of_errors(registry, two_images, tmp_path):
    assert "image A: no image given" in score_pair(registry, None, two_images[1], ["x"]).message
    assert "write at least one statement" in score_pair(registry, *two_images, ["", None]).message
    assert "file not found" in score_pair(registry, str(tmp_path / "gone.png"), two_images[1], ["x"]).message
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    assert "not a readable image" in score_pair(registry, str(junk), two_images[1], ["x"]).message
    page = render_pair(score_pair(registry, None, None, ["x"]))
    assert "gh-message" in page and "Traceback" not in page


def test_upload_limits(demo_cfg, two_images, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300), "white").save(big)
    reg = ModelRegistry(demo_cfg(max_image_pixels=200 * 200))
    assert "more than the demo's limit" in score_pair(reg, str(big), two_images[1], ["x"]).message
    reg = ModelRegistry(demo_cfg(max_upload_mb=0.0001))
    noisy = tmp_path / "noisy.png"
    Image.effect_noise((120, 120), 80).convert("RGB").save(noisy)
    assert "the limit is" in score_pair(reg, str(noisy), two_images[1], ["x"]).message


def test_a_missing_model_leaves_the_other_side_working(demo_cfg, two_images, tmp_path):
    reg = ModelRegistry(demo_cfg(enhanced=str(tmp_path / "no_such_run")))
    result = score_pair(reg, *two_images, ["a red square"])
    original, enhanced = result.models
    assert original.error == "" and len(original.statements) == 1
    assert "model path not found" in enhanced.error and "no_such_run" in enhanced.error
    page = render_pair(result)
    assert "gh-message" in page and "no_such_run" in page

    reg = ModelRegistry(demo_cfg(original=""))
    result = score_pair(reg, *two_images, ["a red square"])
    assert "--original" in result.models[0].error
