"""Chat: streamed answers equal the runner's own greedy answers, both sides, with messages."""

from __future__ import annotations

from PIL import Image

from demo.chat import chat_turn, stream_answer
from demo.models import ModelRegistry

QUESTION = "What color are the shapes?"


def test_stream_grows_to_the_runners_answer(registry, two_images):
    runner = registry.llava("original")
    image = Image.open(two_images[0]).convert("RGB")
    pieces = list(stream_answer(runner, image, QUESTION, max_new_tokens=6))
    assert pieces, "nothing streamed"
    assert pieces[-1] == runner.generate([image], QUESTION, max_new_tokens=6)[0]
    assert len(pieces) >= 2 or len(pieces[-1].split()) <= 1
    assert list(stream_answer(runner, None, QUESTION, 3))[-1] == runner.generate([None], QUESTION, 3)[0]


def test_a_runner_without_encoding_hooks_answers_in_one_piece():
    class Plain:
        def generate(self, images, prompt, max_new_tokens=32):
            return [f"{prompt}!"]

    assert list(stream_answer(Plain(), None, "hi")) == ["hi!"]


def test_chat_turn_streams_both_sides(registry, two_images):
    updates = list(chat_turn(registry, two_images[0], QUESTION))
    assert updates[0] == ("", "")
    final = updates[-1]
    image = Image.open(two_images[0]).convert("RGB")
    n = registry.cfg.max_new_tokens
    assert (
        final[0] == registry.llava("original").generate([image], QUESTION, n)[0]
        or final[0] == "(empty answer)"
    )
    assert (
        final[1] == registry.llava("enhanced").generate([image], QUESTION, n)[0]
        or final[1] == "(empty answer)"
    )
    assert len(updates) > 2  # more than the empty start and the final state: it streamed


def test_chat_messages(demo_cfg, tmp_model_dirs, demo_run, two_images, tmp_path):
    reg = ModelRegistry(demo_cfg(llava_original="", llava_enhanced=""))
    ((a, b),) = list(chat_turn(reg, None, QUESTION))[-1:]
    assert "--llava-original" in a and "--llava-enhanced" in b
    assert list(chat_turn(reg, None, " "))[-1][0].startswith("⚠ write a question")
    reg = ModelRegistry(demo_cfg(llava_enhanced=str(tmp_path / "gone")))
    a, b = list(chat_turn(reg, two_images[0], QUESTION))[-1]
    assert not a.startswith("⚠") and "folder not found" in b
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    assert "not a readable image" in list(chat_turn(reg, str(bad), QUESTION))[-1][0]
