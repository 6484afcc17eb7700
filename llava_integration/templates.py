"""Conversation templates (``plain`` for pretraining, ``vicuna_v1`` for finetuning) and the label mask.

A conversation is rendered to one string and tokenized as LLaVA-1.5's ``tokenizer_image_token``
does it, for training and inference alike: the text before ``<image>`` and the text after it are
tokenized as two strings, and the second loses its BOS. With a Llama tokenizer whose config says
``legacy: false`` (Vicuna-v1.5's) this matters: a string's first piece gets SentencePiece's ``▁``
prefix while text after a special token in the same string does not, so the text after the image
starts with ``▁`` (``▁`` ``<0x0A>`` in ``vicuna_v1``, ``▁select`` in ``plain``), as in LLaVA; one call
over the whole conversation would drop it. The tokenizer's character offsets then say which
tokens belong to an assistant answer. Only those tokens (and the turn's end token) carry labels,
so the loss never covers the system prompt, the user turns or the image (LLaVA-1.5, Sec. 3 and its
``preprocess``). Tokenizing turn by turn instead would drift at every turn boundary.

The supervised region of a ``vicuna_v1`` answer starts at the space after ``ASSISTANT:``, as in
LLaVA-1.5's ``preprocess_v1``: a SentencePiece tokenizer writes that space as a standalone ``▁``
before an answer that starts with a digit or a character without a ``▁``-prefixed piece (``2``,
``日本``), and the model must learn to emit it. In ``plain`` everything after the image is
supervised (``preprocess_plain``). ``tests/llava_integration/test_label_masks.py`` checks both
against LLaVA's round-splitting rule on a real Llama tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from genhancer.runtime.errors import UserError

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Turn:
    """One message: ``role`` is ``"human"`` or ``"gpt"`` (LLaVA's JSON names)."""

    role: str
    text: str


@dataclass(frozen=True)
class Template:
    """How turns become text.

    Args:
        name (str): registry name.
        system (str): text before the first turn ("" for none).
        roles (tuple[str, str]): speaker names written before user / assistant messages.
        sep (str): written after a user message.
        sep2 (str): written after an assistant message; it is supervised (the model learns to stop).
        plain (bool): LLaVA's pretraining format: the image, then the caption, nothing else.
        required_tokens (tuple[str, ...]): strings the tokenizer must hold as single tokens.
        encodable (tuple[str, ...]): strings the tokenizer must encode without ``<unk>`` (in any
            number of tokens: a Llama tokenizer writes ``"\n"`` as ``▁`` + ``<0x0A>``).
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    plain: bool = False
    required_tokens: tuple[str, ...] = ()
    encodable: tuple[str, ...] = ()


TEMPLATES: dict[str, Template] = {
    "plain": Template("plain", "", ("", ""), "", "\n", plain=True, encodable=("\n",)),
    "vicuna_v1": Template(
        "vicuna_v1", VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", required_tokens=("</s>",)
    ),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise UserError(f"unknown conversation template '{name}'; choose one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def normalize_image_turn(text: str) -> str:
    """Put the image first: ``<image>\\n`` + the rest, as LLaVA-1.5 trains (the JSON has it either end)."""
    if IMAGE_TOKEN not in text:
        return text
    rest = text.replace(IMAGE_TOKEN, "").strip()
    return f"{IMAGE_TOKEN}\n{rest}" if rest else IMAGE_TOKEN


def render(template: Template, turns: Sequence[Turn], add_generation_prompt: bool = False):
    """Render turns; returns ``(text, spans)`` with the character spans of supervised answers.

    Each span is ``(start, end, answer_end)``: the supervised region ``start..end`` runs from the
    space before the answer (``vicuna_v1``; right after the image in ``plain``) through the turn's
    end token, and ``start..answer_end`` leaves the end token out.
    """
    spans: list[tuple[int, int, int]] = []
    if template.plain:
        # LLaVA's plain format drops the instruction: image, caption, newline.
        image = IMAGE_TOKEN if any(IMAGE_TOKEN in t.text for t in turns if t.role == "human") else ""
        answer = next((t.text for t in turns if t.role == "gpt"), "")  # unstripped, as LLaVA
        text = image
        if answer or not add_generation_prompt:
            start = len(text)
            text += answer
            spans.append((start, len(text) + len(template.sep2), len(text)))
            text += template.sep2
        return text, spans
    text = template.system + template.sep if template.system else ""
    user, assistant = template.roles
    for turn in turns:
        if turn.role == "human":
            text += f"{user}: {normalize_image_turn(turn.text)}{template.sep}"
        elif turn.role == "gpt":
            text += f"{assistant}:"
            start = len(text)  # the space below is the answer's: LLaVA supervises its ``▁``
            text += " " + turn.text
            spans.append((start, len(text) + len(template.sep2), len(text)))
            text += template.sep2
        else:
            raise ValueError(f"unknown role {turn.role!r}")
    if add_generation_prompt:
        text += f"{assistant}:"
    return text, spans


def _absorbs_leading_space(tokenizer) -> bool:
    """Whether a SentencePiece-style tokenizer writes ``" a"`` like ``"a"``: transformers 5 builds
    Llama's as ``Metaspace``, which adds the ``▁`` prefix only when the text does not already start
    with one, where SentencePiece (LLaVA's slow tokenizer) always adds it (``" a"`` is ``▁▁a``).
    Such a tokenizer is given one more leading space to write what SentencePiece writes."""
    cached = getattr(tokenizer, "_llava_absorbs_leading_space", None)
    if cached is None:
        if "▁" not in tokenizer.get_vocab():
            cached = False
        else:
            cached = (
                tokenizer(" a", add_special_tokens=False)["input_ids"]
                == tokenizer("a", add_special_tokens=False)["input_ids"]
            )
        tokenizer._llava_absorbs_leading_space = cached
    return cached


def encode_image_text(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """``(ids, character offsets into text, special-token mask)`` as LLaVA-1.5's
    ``tokenizer_image_token`` tokenizes: each stretch of text between ``<image>`` tokens on its own
    (so each starts as a fresh string), one BOS in front, ``<image>``'s id between the stretches."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    special: list[int] = []
    drop_bos = False  # LLaVA keeps the first chunk's BOS and drops the first token of later chunks
    pos = 0
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            ids.append(image_id)
            offsets.append((pos, pos + len(IMAGE_TOKEN)))
            special.append(1)
            pos += len(IMAGE_TOKEN)
        shift = 1 if chunk.startswith(" ") and _absorbs_leading_space(tokenizer) else 0
        enc = tokenizer(
            " " * shift + chunk,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        start = 0
        if k == 0:
            drop_bos = bool(enc["input_ids"]) and enc["input_ids"][0] == tokenizer.bos_token_id
        elif drop_bos:
            start = 1
        ids += enc["input_ids"][start:]
        offsets += [
            (pos + max(s - shift, 0), pos + max(e - shift, 0)) for s, e in enc["offset_mapping"][start:]
        ]
        special += enc["special_tokens_mask"][start:]
        pos += len(chunk)
    return ids, offsets, special


def tokenize(
    tokenizer,
    template: Template,
    turns: Sequence[Turn],
    include_end: bool = True,
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids and labels (``IGNORE_INDEX`` outside assistant answers) for one conversation.

    A token is supervised when its character span overlaps a supervised region (see
    :func:`render`), so both ``▁word`` and a standalone ``▁`` before the answer count as the answer.
    A non-special token with an empty span (text a tokenizer inserts) goes with the token after it;
    BOS and other special tokens with empty spans are never supervised.
    ``include_end=False`` leaves the end token out (for scoring an answer without it).
    """
    text, spans = render(template, turns, add_generation_prompt=add_generation_prompt)
    ids, offsets, special = encode_image_text(tokenizer, text)
    labels = [IGNORE_INDEX] * len(ids)
    follow = False  # the decision for the token to the right (for empty spans)
    for i in range(len(ids) - 1, -1, -1):
        s, e = offsets[i]
        if e <= s:
            on = follow and not special[i]
        else:
            on = any(
                s < (end if include_end else answer_end) and e > start for start, end, answer_end in spans
            )
        if on:
            labels[i] = ids[i]
        follow = on
    return ids, labels


def check_tokenizer(tokenizer, template: Template, where: str) -> None:
    """The template's end token must be one known token (the model learns to stop on it), and its
    other strings must encode without ``<unk>``, or the labels would train on nothing."""
    unk = tokenizer.unk_token_id
    for token in template.required_tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1 or (unk is not None and ids[0] == unk):
            raise UserError(
                f"the tokenizer of {where} has no single token for {token!r}, which the "
                f"'{template.name}' template needs; use a tokenizer that defines it"
            )
    for text in template.encodable:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids or (unk is not None and unk in ids):
            raise UserError(
                f"the tokenizer of {where} cannot encode {text!r} (it becomes <unk>), which the "
                f"'{template.name}' template needs; use a tokenizer that encodes it"
            )


def chat_template_jinja(template: Template) -> str:
    """The same ``vicuna_v1`` rendering as a Jinja chat template, saved with the processor so that
    ``processor.apply_chat_template`` (and lmms-eval's ``llava_hf``) prompts the model as it was trained."""
    if template.plain:
        raise ValueError("the plain template has no chat form")
    user, assistant = template.roles
    return (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set sys = messages[0]['content'] if messages[0]['content'] is string "
        "else messages[0]['content'][0]['text'] %}{% set msgs = messages[1:] %}"
        f"{{% else %}}{{% set sys = {template.system!r} %}}{{% set msgs = messages %}}{{% endif %}}"
        f"{{% if sys %}}{{{{ sys + {template.sep!r} }}}}{{% endif %}}"
        "{% for m in msgs %}"
        "{% if m['content'] is string %}{% set images = '<image>' in m['content'] %}"
        "{% set body = m['content'] | replace('<image>', '') | trim %}"
        "{% else %}{% set images = (m['content'] | selectattr('type', 'equalto', 'image') | list | length) > 0 %}"
        "{% set body = (m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
        "| join(' ')) | trim %}{% endif %}"
        "{% if m['role'] == 'user' %}"
        f"{{{{ {user + ': '!r} }}}}{{% if images %}}{{{{ '<image>' }}}}{{% if body %}}{{{{ '\\n' }}}}{{% endif %}}{{% endif %}}"
        f"{{{{ body + {template.sep!r} }}}}"
        "{% elif m['role'] == 'assistant' %}"
        f"{{{{ {assistant + ': '!r} + body + {template.sep2!r} }}}}"
        "{% endif %}{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {assistant + ':'!r} }}}}{{% endif %}}"
    )
