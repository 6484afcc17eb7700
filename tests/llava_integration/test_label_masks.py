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
  the last round is masked; a total that does not add up masks the whole sample.

Chunks and rounds are tokenized with the ``tokenizers`` pipeline of the vendored ``tokenizer.json``
(SentencePiece's pieces, as LLaVA's slow tokenizer makes them); our code tokenizes the whole
conversation in one call with ``transformers``, as training and inference do.
"""

from __future__ import annotations

import pytest

from llava_integration.data import parse_records
from llava_integration.templates import IGNORE_INDEX, TEMPLATES, tokenize

IMAGE = "<image>"
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SHORT = "Answer the question using a single word or phrase."


def _c(*turns: str, first: str = "human") -> list[dict]:
    roles = ("human", "gpt") if first == "human" else ("gpt", "human")
    return [{"from": roles[i % 2], "value": t} for i, t in enumerate(turns)]


# --- golden conversations in the published layouts ----------------------------------------------

# blip_laion_cc_sbu_558k.json: the instruction first, <image> at the end of the human turn
PLAIN = [
    {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": _c(
            "Render a clear and concise summary of the photo.\n<image>",
            "select luxury furniture 3 - inch gel memory foam mattress topper",
        ),
    },
    {
        "id": "002239345",
        "image": "00223/002239345.jpg",
        "conversations": _c(
            "Write a terse but informative summary of the picture.\n<image>",
            "2019 ford f-150 xlt supercrew 4x4",
        ),
    },
    {
        "id": "000123801",
        "image": "00012/000123801.jpg",
        "conversations": _c(
            "Give a brief description of the image.\n<image>", '"the cat in the hat" book cover'
        ),
    },
    {
        "id": "004455031",
        "image": "00445/004455031.jpg",
        "conversations": _c(
            "<image>\nShare a concise interpretation of the image provided.", "東京タワー at night"
        ),
    },
    {
        "id": "001983117",
        "image": "00198/001983117.jpg",
        "conversations": _c("What is in the photo?\n<image>", "a man riding a wave on top of a surfboard."),
    },
    {
        "id": "003125544",
        "image": "00312/003125544.jpg",
        "conversations": _c("Describe the image concisely.\n<image>", "(2) vintage café chairs, ça va"),
    },
]

# llava_v1_5_mix665k.json: multi-turn, images under coco/, gqa/, ocr_vqa/, textvqa/, vg/, text-only rows
FINETUNE = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": _c(
            "<image>\nWhat are the colors of the bus in the image?",
            "The bus in the image is white and red.",
            "What feature can be seen on the back of the bus?",
            "The back of the bus features an advertisement.",
            "Is the bus driving down the street or pulled off to the side?",
            "The bus is driving down the street, which is crowded with people and other vehicles.",
        ),
    },
    {
        "id": "000000215677",
        "image": "coco/train2017/000000215677.jpg",
        "conversations": _c(
            f"<image>\nHow many people are in the picture?\n{SHORT}",
            "3",
            f"What color is the frisbee?\n{SHORT}",
            "White",
            f"How many dogs are there?\n{SHORT}",
            "12",
        ),
    },
    {
        "id": "2354786",
        "image": "gqa/images/2354786.jpg",
        "conversations": _c(
            f"<image>\nIs the man on the left or right?\n{SHORT}",
            "Left",
            f"Are there both cars and trucks?\n{SHORT}",
            "No",
        ),
    },
    {
        "id": "1883061040",
        "image": "ocr_vqa/images/1883061040.jpg",
        "conversations": _c(
            "<image>\nWho wrote this book?",
            "Gary D. Schmidt",
            "What is the title of this book?",
            "Okay for Now",
            "What type of book is this?",
            "Children's Books",
            "Is this book related to Children's Books?",
            "Yes",
            "What year was this book published?",
            "2011",
        ),
    },
    {
        "id": "0a0bc91825468c45",
        "image": "textvqa/train_images/0a0bc91825468c45.jpg",
        "conversations": _c(
            f"<image>\nWhat time does the clock show?\nReference OCR token: 10:30, SEIKO\n{SHORT}",
            "10:30",
        ),
    },
    {
        "id": "VG_2357376",
        "image": "vg/VG_100K/2357376.jpg",
        "conversations": _c(
            "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: "
            "white cup on the table.",
            "[0.41, 0.34, 0.56, 0.52]",
            "Please provide a short description for this region: [0.12, 0.45, 0.36, 0.78]",
            "Man wearing a red hat.",
        ),
    },
    {
        "id": "VG_2411851",
        "image": "vg/VG_100K_2/2411851.jpg",
        "conversations": _c(
            "What is the temperature shown on the sign?\n<image>",  # <image> at the end of the turn
            "-5 degrees",
        ),
    },
    {
        "id": "aokvqa_0001",
        "image": "coco/train2017/000000299207.jpg",
        "conversations": _c(
            "<image>\nWhat is the man most likely to do next?\nA. sleep\nB. surf\nC. eat\nD. read\n"
            "Answer with the option's letter from the given choices directly.",
            "B",
        ),
    },
    {
        "id": "coco_price",
        "image": "coco/train2017/000000000009.jpg",
        "conversations": _c("<image>\nHow much does the sandwich cost?", "$3.50, according to the board."),
    },
    {
        "id": "coco_non_ascii",
        "image": "coco/train2017/000000000025.jpg",
        "conversations": _c(
            "<image>\nWhat does the sign say?",
            "日本語の看板",
            "And in English?",
            "¿Dónde está? means where is it.",
        ),
    },
    {
        "id": "coco_list",
        "image": "coco/train2017/000000000030.jpg",
        "conversations": _c(
            "<image>\nList the steps shown in the picture.",
            "1. Cut the bread.\n2. Spread the butter.\n3. Serve.",
        ),
    },
    {
        "id": "coco_quote",
        "image": "coco/train2017/000000000034.jpg",
        "conversations": _c("<image>\nWhat is written on the mug?", "'World's Best Dad'"),
    },
    {
        "id": "coco_emoji",
        "image": "coco/train2017/000000000036.jpg",
        "conversations": _c("<image>\nHow does the child seem to feel?", "🙂 The child looks happy."),
    },
    # text-only rows (ShareGPT in mix665k): no "image" key
    {
        "id": "i6IyJda_0",
        "conversations": _c(
            "Write a haiku about autumn.",
            "Crimson leaves drifting,\nwhispers of the cooling wind,\nthe year exhales slow.",
            "Translate 'cat' into French.",
            "« chat »",
        ),
    },
    {"id": "sharegpt_math", "conversations": _c("What is 7 times 8?", "56")},
    {
        "id": "sharegpt_code",
        "conversations": _c("Show a Python one-liner that prints hello.", '```python\nprint("hello")\n```'),
    },
    # a row whose conversation starts with a gpt turn: LLaVA drops that turn
    {
        "id": "sharegpt_gpt_first",
        "conversations": _c(
            "Hello! How can I help you today?",
            "How many legs does a spider have?",
            "8 legs.",
            first="gpt",
        ),
    },
]


# --- LLaVA-1.5's preprocessing, written out --------------------------------------------------------


class Reference:
    """LLaVA-1.5's ``tokenizer_image_token``, ``preprocess_plain`` and ``preprocess_v1`` (see above)."""

    def __init__(self, tokenizer_json: str, image_id: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_json)
        self.image_id = image_id
        self.bos = self.tok.token_to_id("<s>")

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text).ids  # BOS + pieces, as ``tokenizer(text).input_ids``

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
        for rou in prompt.split("</s>"):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len, instruction_len = count(rou), count(parts[0] + sep) - 2
            labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
            cur += round_len
        labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
        mismatch = cur != len(ids)
        if mismatch:
            labels = [IGNORE_INDEX] * len(ids)
        return ids, labels, mismatch


@pytest.fixture(scope="module")
def reference(llama_tok_dir, llama_tok) -> Reference:
    return Reference(str(llama_tok_dir / "tokenizer.json"), llama_tok.convert_tokens_to_ids(IMAGE))


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
def test_plain_masks_equal_llava(row, reference, llama_tok):
    want_ids, want_labels = reference.plain(row)
    ids, labels = _ours(llama_tok, row, "plain")
    assert ids == want_ids
    assert _show(llama_tok, ids, labels) == _show(llama_tok, want_ids, want_labels)


@pytest.mark.parametrize("row", FINETUNE, ids=[r["id"] for r in FINETUNE])
def test_vicuna_v1_masks_equal_llava(row, reference, llama_tok):
    want_ids, want_labels, _ = reference.v1(row)
    ids, labels = _ours(llama_tok, row, "vicuna_v1")
    assert ids == want_ids
    assert _show(llama_tok, ids, labels) == _show(llama_tok, want_ids, want_labels)


def test_a_digit_answer_supervises_its_leading_space(llama_tok):
    """Spelled out for one row: ``ASSISTANT: 3</s>`` is ``:``, ``▁``, ``3``, ``</s>``; LLaVA labels
    the last three, so the model learns to emit the ``▁`` it needs before a number."""
    row = {"id": "n", "conversations": _c("How many?", "3")}
    ids, labels = _ours(llama_tok, row, "vicuna_v1")
    assert _show(llama_tok, ids, labels)[-4:] == [(":", False), ("▁", True), ("3", True), ("</s>", True)]
    plain = {"id": "p", "image": "a.jpg", "conversations": _c("<image>", "3 dogs")}
    ids, labels = _ours(llama_tok, plain, "plain")
    assert _show(llama_tok, ids, labels)[:4] == [("<s>", False), (IMAGE, False), ("▁", True), ("3", True)]
