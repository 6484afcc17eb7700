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
    # the same number computed by hand for the single-token option: its token, then the end token
    ids, labels = runner.encode(image, "What color are the shapes?", "blue", include_end=True)
    pos = [i for i, lab in enumerate(labels) if lab != -100]
    assert len(pos) == 2 and ids[pos[1]] == runner.tokenizer.eos_token_id
    with torch.no_grad():
        logits = (
            runner.model(input_ids=torch.tensor([ids]), pixel_values=runner.preprocess([image]))
            .logits[0]
            .float()
        )
    manual = sum(torch.log_softmax(logits[p - 1], -1)[ids[p]].item() for p in pos)
    assert scores[1] == pytest.approx(manual, abs=1e-4)
    without_end = runner.choice_likelihood(image, "What color are the shapes?", ["blue"], with_end=False)[0]
    assert without_end == pytest.approx(
        torch.log_softmax(logits[pos[0] - 1], -1)[ids[pos[0]]].item(), abs=1e-4
    )
    mean = runner.choice_likelihood(image, "What color are the shapes?", ["blue"], length_normalize=True)[0]
    assert mean == pytest.approx(manual / 2, abs=1e-4)


class Bigram(torch.nn.Module):
    """A language model whose next-token logits depend only on the current token (a lookup table)."""

    def __init__(self, config, table: torch.Tensor):
        super().__init__()
        self.config = config
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, **_):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[input_ids])


@pytest.mark.parametrize("tok_name", ["word_tok", "llama_tok"])
def test_an_option_that_is_a_prefix_of_another_does_not_win_by_construction(tiny_llava, tok_name, request):
    """A model sure that "red" goes on as "red car" must rank "red car" first: scored with the end
    token, "red" pays for stopping. Summed without it, "red" could never lose to "red car"."""
    from types import SimpleNamespace

    tok = request.getfixturevalue(tok_name)
    model, _ = tiny_llava
    red, car = (tok("red car", add_special_tokens=False).input_ids[i] for i in (-2, -1))
    table = torch.zeros(len(tok), len(tok))
    table[red, car] = 8.0  # after "red": almost surely "car"
    table[car, tok.eos_token_id] = 8.0  # after "car": almost surely the end
    runner = LlavaRunner(Bigram(model.config, table), SimpleNamespace(tokenizer=tok), device="cpu")
    ids, labels = runner.encode(None, "What is it?", "red car")
    answer = [t for t, lab in zip(tok.convert_ids_to_tokens(ids), labels) if lab != -100]
    assert answer in (["red", "car"], ["▁red", "▁car"])
    red_score, red_car_score = runner.choice_likelihood(None, "What is it?", ["red", "red car"])
    assert red_car_score > red_score + 5
    old_red, old_red_car = runner.choice_likelihood(None, "What is it?", ["red", "red car"], with_end=False)
    assert old_red >= old_red_car  # the prefix bias the end token removes


def test_load_rejects_a_non_model_dir(tmp_path):
    from genhancer.runtime.errors import UserError

    with pytest.raises(UserError, match="no config.json"):
        LlavaRunner.load(tmp_path)


def test_a_loaded_model_reads_images_as_training_did(runner):
    """The saved processor config names no backend; loading must not fall back to transformers'
    default torchvision resize, which differs from the PIL one training (and LLaVA-1.5) used."""
    from transformers import LlavaImageProcessorPil

    assert isinstance(runner.processor.image_processor, LlavaImageProcessorPil)
    assert runner.processor.image_processor.do_pad
