"""Conversation templates: the label mask token by token, chat-template parity, tokenizer checks,
on the tiny word-level tokenizer and on the real Llama 2 tokenizer (``test_label_masks.py`` holds
the comparison with LLaVA-1.5's own preprocessing)."""

from __future__ import annotations

import pytest

from genhancer.runtime.errors import UserError
from llava_integration.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    VICUNA_SYSTEM,
    Turn,
    chat_template_jinja,
    check_tokenizer,
    render,
    tokenize,
)
from llava_integration.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer()
    t.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return t


def _pairs(tok, ids, labels):
    return [(t, lab != IGNORE_INDEX) for t, lab in zip(tok.convert_ids_to_tokens(ids), labels)]


def test_vicuna_label_mask_token_by_token(tok):
    turns = [
        Turn("human", "How many shapes are there?\n<image>"),  # image token moved to the front
        Turn("gpt", "two"),
        Turn("human", "What color are the shapes?"),
        Turn("gpt", "red circle"),
    ]
    ids, labels = tokenize(tok, TEMPLATES["vicuna_v1"], turns)
    got = _pairs(tok, ids, labels)
    system = [w for w, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(VICUNA_SYSTEM)]
    expected = (
        [("<s>", False)]
        + [(w, False) for w in system]
        + [("USER", False), (":", False), ("<image>", False), ("\n", False)]
        + [(w, False) for w in ["How", "many", "shapes", "are", "there", "?"]]
        + [("ASSISTANT", False), (":", False), ("two", True), ("</s>", True)]
        + [("USER", False), (":", False)]
        + [(w, False) for w in ["What", "color", "are", "the", "shapes", "?"]]
        + [("ASSISTANT", False), (":", False), ("red", True), ("circle", True), ("</s>", True)]
    )
    assert got == expected


def test_vicuna_mask_without_end_token(tok):
    ids, labels = tokenize(
        tok, TEMPLATES["vicuna_v1"], [Turn("human", "Is it red?"), Turn("gpt", "yes")], include_end=False
    )
    assert [t for t, on in _pairs(tok, ids, labels) if on] == ["yes"]


def test_plain_label_mask_token_by_token(tok):
    turns = [Turn("human", "<image>\nDescribe the image briefly."), Turn("gpt", "one small red circle")]
    ids, labels = tokenize(tok, TEMPLATES["plain"], turns)
    assert _pairs(tok, ids, labels) == [
        ("<s>", False),
        ("<image>", False),
        ("one", True),
        ("small", True),
        ("red", True),
        ("circle", True),
        ("\n", True),
    ]


def test_chat_template_matches_training_render(tok):
    from jinja2 import Template as Jinja

    jinja = Jinja(chat_template_jinja(TEMPLATES["vicuna_v1"]))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "Where are they?"},
    ]
    got = jinja.render(messages=messages, add_generation_prompt=True)
    want, _ = render(
        TEMPLATES["vicuna_v1"],
        [Turn("human", "<image>\nHow many shapes?"), Turn("gpt", "two"), Turn("human", "Where are they?")],
        add_generation_prompt=True,
    )
    assert got == want


def test_tokenizer_without_template_tokens_is_named(tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    check_tokenizer(tok, TEMPLATES["vicuna_v1"], "x")
    check_tokenizer(tok, TEMPLATES["plain"], "x")
    inner = Tokenizer(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    no_eos = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>")
    with pytest.raises(UserError, match=r"my-llm.*'</s>'.*vicuna_v1"):
        check_tokenizer(no_eos, TEMPLATES["vicuna_v1"], "my-llm")
    with pytest.raises(UserError, match="plain"):
        check_tokenizer(no_eos, TEMPLATES["plain"], "my-llm")


def test_the_vendored_llama_tokenizer_is_the_legacy_sentencepiece_one(llama_tok):
    """What the Llama-specific tests rely on: "\n" is two tokens and digits stand alone."""
    assert llama_tok.convert_ids_to_tokens(llama_tok("\n", add_special_tokens=False).input_ids) == [
        "▁",
        "<0x0A>",
    ]
    assert llama_tok("Hello world!").input_ids == [1, 15043, 3186, 29991]
    assert llama_tok.convert_ids_to_tokens(llama_tok(": 3", add_special_tokens=False).input_ids) == [
        "▁:",
        "▁",
        "3",
    ]


@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_llama_tokenizer_passes_the_template_checks(llama_tok, template):
    check_tokenizer(llama_tok, TEMPLATES[template], "lmsys/vicuna-7b-v1.5")


@pytest.mark.parametrize("tok_name", ["word_tok", "llama_tok"])
@pytest.mark.parametrize("include_end", [True, False])
def test_supervised_tokens_spell_the_answers(tok_name, include_end, request):
    tok = request.getfixturevalue(tok_name)
    turns = [
        Turn("human", "<image>\nHow many shapes are there?"),
        Turn("gpt", "two"),
        Turn("human", "What color are the shapes?"),
        Turn("gpt", "red circle"),
    ]
    ids, labels = tokenize(tok, TEMPLATES["vicuna_v1"], turns, include_end=include_end)
    runs, current = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    end = "</s>" if include_end else ""
    got = [tok.decode(r).replace(" </s>", "</s>").strip() for r in runs]
    assert got == [f"two{end}", f"red circle{end}"]


@pytest.mark.parametrize("tok_name", ["word_tok", "llama_tok"])
def test_chat_template_prompt_tokenizes_like_training(tok_name, request):
    """lmms-eval's ``llava_hf`` tokenizes ``apply_chat_template``'s text in one call; the ids must be
    the ones training and :class:`LlavaRunner` build."""
    from jinja2 import Template as Jinja

    tok = request.getfixturevalue(tok_name)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "How many shapes are there?"}],
        },
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "What color are the shapes?"},
    ]
    text = Jinja(chat_template_jinja(TEMPLATES["vicuna_v1"])).render(
        messages=messages, add_generation_prompt=True
    )
    turns = [
        Turn("human", "<image>\nHow many shapes are there?"),
        Turn("gpt", "3"),
        Turn("human", "What color are the shapes?"),
    ]
    ids, _ = tokenize(tok, TEMPLATES["vicuna_v1"], turns, add_generation_prompt=True)
    assert tok(text).input_ids == ids
