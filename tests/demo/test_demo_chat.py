"""Chat: streamed answers equal the runner's own greedy answers, both sides, with messages; a
conversation keeps each side's own history in LLaVA's vicuna_v1 template."""

from __future__ import annotations

from PIL import Image

from demo.chat import EMPTY, chat_panels, chat_turn, encode_conversation, history_from_messages, stream_answer
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


# --- multi-turn ---------------------------------------------------------------------------------

FOLLOW_UP = "What shape are they?"  # words the tiny tokenizer knows


def _squash(text: str) -> str:
    return "".join(text.split())


def test_a_first_turn_is_the_runners_own_prompt(registry, two_images):
    runner = registry.llava("original")
    image = Image.open(two_images[0]).convert("RGB")
    assert encode_conversation(runner, image, [], QUESTION) == runner.encode(image, QUESTION)[0]
    assert encode_conversation(runner, None, [], QUESTION) == runner.encode(None, QUESTION)[0]


def test_later_turns_follow_llavas_vicuna_v1_template(registry, two_images):
    from llava_integration.templates import IMAGE_TOKEN, TEMPLATES, Turn, render

    runner = registry.llava("original")
    image = Image.open(two_images[0]).convert("RGB")
    ids = encode_conversation(runner, image, [(QUESTION, "red")], FOLLOW_UP)
    assert ids.count(runner.image_token_id) == runner.num_image_tokens  # one image, in the first turn
    expected, _ = render(
        TEMPLATES["vicuna_v1"],
        [Turn("human", f"{IMAGE_TOKEN}\n{QUESTION}"), Turn("gpt", "red"), Turn("human", FOLLOW_UP)],
        add_generation_prompt=True,
    )
    text = runner.tokenizer.decode([i for i in ids if i != runner.image_token_id])
    assert _squash(text).endswith(_squash(expected.replace(IMAGE_TOKEN, "")))
    assert f"ASSISTANT: red</s>USER: {FOLLOW_UP} ASSISTANT:" in expected


def test_each_side_answers_after_its_own_history(registry, two_images):
    image = Image.open(two_images[0]).convert("RGB")
    n = registry.cfg.max_new_tokens
    first = list(chat_panels(registry, two_images[0], QUESTION, {"original": [], "enhanced": []}))[-1]
    second = list(chat_panels(registry, two_images[0], FOLLOW_UP, first))[-1]
    for side in ("original", "enhanced"):
        assert [m["role"] for m in second[side]] == ["user", "assistant", "user", "assistant"]
        assert second[side][:2] == first[side] and first[side][0] == {"role": "user", "content": QUESTION}
        history = history_from_messages(first[side])
        runner = registry.llava(side)
        expected = list(stream_answer(runner, image, FOLLOW_UP, n, history))[-1] or EMPTY
        assert second[side][3] == {"role": "assistant", "content": expected}
        if history:  # the follow-up is asked after the first exchange, not on its own
            assert len(encode_conversation(runner, image, history, FOLLOW_UP)) > len(
                runner.encode(image, FOLLOW_UP)[0]
            )


def test_warnings_and_empty_answers_stay_out_of_the_history():
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "⚠ no enhanced LLaVA was given"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": EMPTY},
        {"role": "user", "content": [{"type": "text", "text": "q3"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
    ]
    assert history_from_messages(messages) == [("q3", "blue")]
