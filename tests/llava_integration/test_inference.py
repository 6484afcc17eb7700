"""LlavaRunner: greedy generation and option likelihoods (shapes, determinism, batching)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava_integration.inference import LlavaRunner


@pytest.fixture()
def runner(tiny_llava, tmp_path):
    from llava_integration.model import save

    model, proc = tiny_llava
    save(model, proc, tmp_path / "final")
    return LlavaRunner.load(tmp_path / "final", device="cpu")


def _images():
    return [Image.new("RGB", (32, 32), c) for c in ("red", "blue")] + [Image.new("RGB", (48, 24), "green")]


def test_generate_is_batched_greedy_and_deterministic(runner):
    prompts = ["How many shapes are there?", "What color are the shapes?", "Where are the shapes?"]
    out = runner.generate(_images(), prompts, max_new_tokens=4)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert runner.generate(_images(), prompts, max_new_tokens=4) == out
    singles = [runner.generate([im], p, max_new_tokens=4)[0] for im, p in zip(_images(), prompts)]
    assert singles == out  # left padding does not change greedy answers


def test_generate_text_only(runner):
    (answer,) = runner.generate([None], "Is red a color?", max_new_tokens=3)
    assert isinstance(answer, str)


def test_choice_likelihood(runner):
    image = _images()[0]
    options = ["red", "blue", "two red circles"]
    scores = runner.choice_likelihood(image, "What color are the shapes?", options)
    assert len(scores) == 3 and all(s < 0 for s in scores)
    assert runner.choice_likelihood(image, "What color are the shapes?", options) == scores
    # the same number computed by hand for the single-token option
    ids, labels = runner.encode(image, "What color are the shapes?", "blue")
    pos = [i for i, lab in enumerate(labels) if lab != -100]
    assert len(pos) == 1
    with torch.no_grad():
        logits = (
            runner.model(input_ids=torch.tensor([ids]), pixel_values=runner.preprocess([image]))
            .logits[0]
            .float()
        )
    manual = torch.log_softmax(logits[pos[0] - 1], -1)[ids[pos[0]]].item()
    assert scores[1] == pytest.approx(manual, abs=1e-4)
    # a longer option sums more (negative) terms
    assert scores[2] < max(scores[:2])


def test_load_rejects_a_non_model_dir(tmp_path):
    from enhance.errors import UserError

    with pytest.raises(UserError, match="no config.json"):
        LlavaRunner.load(tmp_path)
