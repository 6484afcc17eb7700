"""Golden LLaVA rows in the exact layouts of LLaVA-1.5's released files, written by hand (not by
the code under test); ``test_label_masks.py`` and ``test_original_llava.py`` read them."""

from __future__ import annotations

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
    {  # LLaVA does not strip captions
        "id": "000817263",
        "image": "00081/000817263.jpg",
        "conversations": _c("<image>\nDescribe the image concisely.", " a bowl of soup on a table \n"),
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
    {  # LLaVA strips only the turn that holds <image>
        "id": "sharegpt_spaces",
        "conversations": _c(
            "  Tell me a joke.\n", "Why did the chicken cross the road? ", "Why?", "\nTo get across."
        ),
    },
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
