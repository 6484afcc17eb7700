"""Label masks against LLaVA-1.5's own preprocessing, on the real Llama 2 tokenizer.

The expected ids and labels are computed here from LLaVA-1.5's algorithm as its training code
describes it, not by calling ``llava_integration``:

- ``tokenizer_image_token``: split the prompt at ``<image>``, tokenize each chunk on its own (each
  gets BOS and SentencePiece's leading ``▁``), keep one BOS, put the image token between chunks.
- ``preprocess_plain``: the prompt is ``<image>`` + caption + ``"\\n"``; everything after the
  image is supervised.
- ``preprocess_v1``: a conversation drops a leading ``gpt`` turn, the image turn becomes
  ``<image>\\n`` + the rest; the prompt is system + ``" "``, then ``"USER: " + q + " "`` and
  ``"ASSISTANT: " + a + "</s>"``. It is split into rounds at ``"</s>"``; a round splits at
  ``" ASSISTANT: "`` into instruction and answer. With ``cur`` starting at 1 (BOS masked),
  ``len(tokens(instruction + " ASSISTANT: ")) - 2`` tokens are masked (the BOS of the separate
  call and the trailing ``▁``, which in the whole prompt belongs to the answer), then ``cur``
  advances by ``len(tokens(round))`` (its BOS stands for the round's ``</s>``). Everything after
  the last round is masked; a total that does not add up masks the whole sample. With a
  ``legacy: false`` tokenizer, rounds after the first count one token less in both lengths (the
  separate call writes ``▁USER``, the whole prompt ``USER`` after ``</s>``).

Chunks and rounds are tokenized with the ``tokenizers`` pipeline of the vendored ``tokenizer.json``
(SentencePiece's pieces, as LLaVA's slow tokenizer makes them). For ``legacy: false`` the slow
tokenizer of transformers 4.37 (LLaVA's) puts SentencePiece's ``▁`` before the string's first piece
only, not after a special token; the reference does that by splitting at special tokens itself.
``test_original_llava.py`` (slow) checks all of this against the original package itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from golden_rows import FINETUNE, PLAIN, _c

from llava_integration.data import parse_records
from llava_integration.templates import IGNORE_INDEX, TEMPLATES, tokenize

IMAGE = "<image>"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


# --- LLaVA-1.5's preprocessing, written out --------------------------------------------------------


class Reference:
    """LLaVA-1.5's ``tokenizer_image_token``, ``preprocess_plain`` and ``preprocess_v1`` (see above)."""

    def __init__(self, tokenizer_json: str, image_id: int, legacy: bool = True):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_json)
        self.legacy = legacy
        data = json.loads(Path(tokenizer_json).read_text())
        data["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        self.bare = Tokenizer.from_str(json.dumps(data))  # no ▁ prefix
        self.image_id = image_id
        self.bos = self.tok.token_to_id("<s>")

    def ids(self, text: str) -> list[int]:
        """BOS + pieces, as ``tokenizer(text).input_ids``."""
        if self.legacy:
            return self.tok.encode(text).ids  # every piece between special tokens gets the ▁ prefix
        out = [self.bos]
        for k, piece in enumerate(re.split("(<s>|</s>|<unk>)", text)):
            if piece in ("<s>", "</s>", "<unk>"):
                out.append(self.tok.token_to_id(piece))
            elif piece:
                out += (self.tok if k == 0 else self.bare).encode(piece, add_special_tokens=False).ids
        return out

    def image_ids(self, prompt: str) -> list[int]:
        chunks = [self.ids(c) for c in prompt.split(IMAGE)]
        out, offset = [], 0
        if chunks and chunks[0] and chunks[0][0] == self.bos:
            offset = 1
            out.append(self.bos)
        seps = [[self.image_id] * (offset + 1)] * len(chunks)
        for x in [e for pair in zip(chunks, seps) for e in pair][:-1]:
            out.extend(x[offset:])
        return out

    def plain(self, row: dict) -> tuple[list[int], list[int]]:
        conv = row["conversations"]
        prompt = IMAGE + conv[1]["value"] + "\n"
        ids = self.image_ids(prompt)
        n = len(self.image_ids(IMAGE))
        return ids, [IGNORE_INDEX] * n + ids[n:]

    def v1(self, row: dict) -> tuple[list[int], list[int], bool]:
        """(ids, labels, whether LLaVA's length check failed and masked the whole sample)."""
        source = row["conversations"]
        if source[0]["from"] != "human":
            source = source[1:]
        has_image = "image" in row
        prompt = SYSTEM + " "
        for j, turn in enumerate(source):
            value = turn["value"]
            if IMAGE in value:
                value = (IMAGE + "\n" + value.replace(IMAGE, "").strip()).strip()
            role = "USER" if j % 2 == 0 else "ASSISTANT"
            prompt += f"{role}: {value}" + (" " if j % 2 == 0 else "</s>")
        count = (lambda t: len(self.image_ids(t))) if has_image else (lambda t: len(self.ids(t)))
        ids = self.image_ids(prompt) if has_image else self.ids(prompt)
        labels = list(ids)
        sep = " ASSISTANT: "
        cur = 1
        labels[:cur] = [IGNORE_INDEX] * cur
        for i, rou in enumerate(prompt.split("</s>")):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len, instruction_len = count(rou), count(parts[0] + sep) - 2
            if i != 0 and not self.legacy:
                round_len, instruction_len = round_len - 1, instruction_len - 1
            labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
            cur += round_len
        labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
        mismatch = cur != len(ids)
        if mismatch:
            labels = [IGNORE_INDEX] * len(ids)
        return ids, labels, mismatch


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non_legacy"])
def legacy(request) -> bool:
    return request.param


@pytest.fixture(scope="module")
def tok(legacy, request):
    """Our tokenizer (``<image>``, ``<pad>`` added) with the config's ``legacy`` flag."""
    return request.getfixturevalue("llama_tok" if legacy else "llama_tok_nonlegacy")


@pytest.fixture(scope="module")
def reference(llama_tok_dir, tok, legacy) -> Reference:
    return Reference(str(llama_tok_dir / "tokenizer.json"), tok.convert_tokens_to_ids(IMAGE), legacy)


def _ours(tok, row: dict, template: str) -> tuple[list[int], list[int]]:
    (record,) = parse_records([row], "golden.json")
    return tokenize(tok, TEMPLATES[template], record.turns)


def _show(tok, ids, labels) -> list[tuple[str, bool]]:
    return [(t, lab != IGNORE_INDEX) for t, lab in zip(tok.convert_ids_to_tokens(ids), labels)]


# --- tests ------------------------------------------------------------------------------------------


def test_the_golden_set_is_valid_llava_input_and_covers_the_hard_cases(reference):
    assert len(PLAIN) + len(FINETUNE) >= 20
    assert sum("image" not in row for row in FINETUNE) >= 3  # text-only rows
    folders = {row["image"].split("/")[0] for row in FINETUNE if "image" in row}
    assert folders == {"coco", "gqa", "ocr_vqa", "textvqa", "vg"}
    space = reference.tok.token_to_id("▁")
    standalone = 0
    for row in FINETUNE:
        ids, labels, mismatch = reference.v1(row)
        assert not mismatch, row["id"]  # LLaVA trains on every golden row
        standalone += sum(1 for i, lab in zip(ids, labels) if lab == space)
    for row in PLAIN:
        ids, labels = reference.plain(row)
        standalone += sum(1 for lab in labels if lab == space)
    assert standalone >= 8  # answers starting with a digit, CJK, ... keep a supervised standalone "▁"


@pytest.mark.parametrize("row", PLAIN, ids=[r["id"] for r in PLAIN])
def test_plain_masks_equal_llava(row, reference, tok):
    want_ids, want_labels = reference.plain(row)
    ids, labels = _ours(tok, row, "plain")
    assert _show(tok, ids, labels) == _show(tok, want_ids, want_labels)
    assert ids == want_ids


@pytest.mark.parametrize("row", FINETUNE, ids=[r["id"] for r in FINETUNE])
def test_vicuna_v1_masks_equal_llava(row, reference, tok):
    want_ids, want_labels, _ = reference.v1(row)
    ids, labels = _ours(tok, row, "vicuna_v1")
    assert _show(tok, ids, labels) == _show(tok, want_ids, want_labels)
    assert ids == want_ids


def test_a_digit_answer_supervises_its_leading_space(llama_tok):
    """Spelled out for one row: ``ASSISTANT: 3</s>`` is ``:``, ``▁``, ``3``, ``</s>``; LLaVA labels
    the last three, so the model learns to emit the ``▁`` it needs before a number."""
    row = {"id": "n", "conversations": _c("How many?", "3")}
    ids, labels = _ours(llama_tok, row, "vicuna_v1")
    assert _show(llama_tok, ids, labels)[-4:] == [(":", False), ("▁", True), ("3", True), ("</s>", True)]
    plain = {"id": "p", "image": "a.jpg", "conversations": _c("<image>", "3 dogs")}
    ids, labels = _ours(llama_tok, plain, "plain")
    assert _show(llama_tok, ids, labels)[:4] == [("<s>", False), (IMAGE, False), ("▁", True), ("3", True)]


def test_non_legacy_text_after_the_image_starts_with_its_own_space(llama_tok_nonlegacy):
    """Spelled out for Vicuna-v1.5's ``legacy: false``: LLaVA tokenizes the text after ``<image>`` as
    a string of its own, so it opens with SentencePiece's ``▁`` (``▁`` ``<0x0A>``; ``▁select``), while
    the text after ``</s>`` in the same string does not (``USER``, not ``▁US`` ``ER``)."""
    tok = llama_tok_nonlegacy
    row = {"id": "v", "image": "a.jpg", "conversations": _c("<image>\nWhat?", "3", "Why?", "No.")}
    shown = _show(tok, *_ours(tok, row, "vicuna_v1"))
    at = shown.index((IMAGE, False))
    assert shown[at - 1 : at + 4] == [
        ("▁", False),
        (IMAGE, False),
        ("▁", False),
        ("<0x0A>", False),
        ("What", False),
    ]
    at = shown.index(("</s>", True))
    assert shown[at - 2 : at + 3] == [("▁", True), ("3", True), ("</s>", True), ("USER", False), (":", False)]
    plain = {"id": "p", "image": "a.jpg", "conversations": _c("<image>", "select luxury")}
    shown = _show(tok, *_ours(tok, plain, "plain"))
    assert shown[:4] == [("<s>", False), (IMAGE, False), ("▁select", True), ("▁lux", True)]
    spaced = _show(tok, *_ours(tok, {**plain, "conversations": _c("<image>", " select")}, "plain"))
    assert spaced[:4] == [("<s>", False), (IMAGE, False), ("▁", True), ("▁select", True)]
