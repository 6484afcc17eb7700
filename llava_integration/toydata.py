"""Toy-world LLaVA data in the real JSON format, and the toy-question accuracy report.

The tiny preset trains on what LLaVA-1.5 trains on, in miniature: LCS-558K-style caption
samples for pretraining and mix665k-style instruction samples for finetuning, multi-turn (2-4
questions per image), plus text-only samples. Questions come in the formats the benchmarks ask
in (lmms-eval's prompts): short answers ("...\nAnswer the question using a single word or
phrase.") about count, colour, position and shape; yes/no presence questions answered
"Yes"/"No" (POPE, HallusionBench, NaturalBench phrasings; half of them "Yes"); and
multiple-choice questions answered with the option letter (MMVP / ScienceQA "A. x" lines with
"Answer with the option's letter from the given choices directly.", CV-Bench "(A) x" lines,
NaturalBench inline options), the right option at a uniformly drawn position. Everything is
written as LLaVA JSON with an image folder, so the tiny run goes through the same loader,
templates and label mask as a real run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.world import (
    COLORS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    ToyWorld,
    vocabulary,
)
from llava_integration.templates import TEMPLATES

SHORT = "Answer the question using a single word or phrase."
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption of the image.",
    "What is in the image?",
)
YES_NO = ("Yes", "No")  # LLaVA-1.5's VQA data answers yes/no questions capitalised
LETTERS = "ABCDEFGH"
MAX_COUNT = 3  # ToyWorld's default: 1..3 shapes per scene
MAX_OPTIONS = 4
TEXT_ONLY = (
    ("What number comes after {a}?", "next"),
    ("Is {c} a color?", "color"),
    ("What is the plural of {s}?", "plural"),
)

# Prompt styles of the lmms-eval tasks (and LLaVA-1.5's mix665k), so the tiny model is finetuned
# on the formats the benchmarks ask in. Multiple choice: {q} the question, {opts} the options.
MC_LETTER = "Answer with the option's letter from the given choices directly."
MC_STYLES = (
    # MMVP / ScienceQA-IMG (lmms-eval mmvp, scienceqa: "A. x" lines), A-OKVQA in mix665k
    lambda q, o: f"{q}\n" + "\n".join(f"{LETTERS[i]}. {x}" for i, x in enumerate(o)) + f"\n{MC_LETTER}",
    # ScienceQA-IMG with a hint
    lambda q, o: (
        f"Context: Look at the shapes.\n{q}\n"
        + "\n".join(f"{LETTERS[i]}. {x}" for i, x in enumerate(o))
        + f"\n{MC_LETTER}"
    ),
    # CV-Bench ("(A) x" lines after a note naming the letters)
    lambda q, o: (
        "Note: You only need to respond with "
        + ", ".join(LETTERS[: len(o)])
        + f" without providing any additional information.\n\n{q} Select from the following choices.\n"
        + "\n".join(f"({LETTERS[i]}) {x}" for i, x in enumerate(o))
    ),
    # NaturalBench multiple choice (options inline)
    lambda q, o: (
        f"{q} "
        + " ".join(f"{LETTERS[i]}. {x}" for i, x in enumerate(o))
        + " Please output the letter corresponding to the correct option."
    ),
)
# Yes/no: POPE (short-answer suffix), HallusionBench (bare question), NaturalBench.
YES_NO_STYLES = (
    lambda q: f"{q}\n{SHORT}",
    lambda q: q,
    lambda q: f"{q} Please answer Yes or No.",
)


@dataclass(frozen=True)
class Question:
    kind: str
    text: str  # the full prompt (question and any options / answer-format instruction)
    answer: str
    options: tuple[str, ...]


def _attribute_qa(attrs: dict) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """kind -> (question, right answer, every possible answer)."""
    n = int(attrs["count"])
    return {
        "count": ("How many shapes are there?", NUMBER_WORDS[n - 1], NUMBER_WORDS[:MAX_COUNT]),
        "color": ("What color are the shapes?", str(attrs["color"]), COLORS),
        "position": ("Where are the shapes?", str(attrs["position"]), POSITIONS),
        "shape": ("What shape are they?", str(attrs["shape"]), SHAPES),
    }


def presence_question(attrs: dict, rng: random.Random) -> tuple[str, str]:
    """Ask "Is there a {colour} {shape} in the image?": half "Yes"; "No" with the colour, the shape or
    both changed (POPE's adversarial / random negatives)."""
    color, shape = str(attrs["color"]), str(attrs["shape"])
    if rng.random() < 0.5:
        return f"Is there a {color} {shape} in the image?", "Yes"
    change = rng.randrange(3)
    if change in (0, 2):
        color = rng.choice([c for c in COLORS if c != color])
    if change in (1, 2):
        shape = rng.choice([s for s in SHAPES if s != shape])
    return f"Is there a {color} {shape} in the image?", "No"


def choice_question(attrs: dict, rng: random.Random, style: int | None = None) -> Question:
    """A multiple-choice question about one attribute, answered with its option letter.

    2..4 options (at most every possible value); the right one sits at a uniformly drawn
    position, so answer letters are balanced for each number of options.
    """
    kind = rng.choice(("count", "color", "position", "shape"))
    question, right, values = _attribute_qa(attrs)[kind]
    k = rng.randint(2, min(MAX_OPTIONS, len(values)))
    others = rng.sample([v for v in values if v != right], k - 1)
    at = rng.randrange(k)
    options = others[:at] + [right] + others[at:]
    fmt = MC_STYLES[rng.randrange(len(MC_STYLES)) if style is None else style]
    return Question("choice", fmt(question, options), LETTERS[at], tuple(LETTERS[:k]))


def image_questions(attrs: dict, rng: random.Random) -> list[Question]:
    """One question of each kind about a scene, each with its closed set of answers: short answers
    (count, colour, position, shape), a yes/no presence question, a multiple-choice question."""
    out = [
        Question(kind, f"{q}\n{SHORT}", a, values) for kind, (q, a, values) in _attribute_qa(attrs).items()
    ]
    q, a = presence_question(attrs, rng)
    out.append(Question("presence", YES_NO_STYLES[rng.randrange(len(YES_NO_STYLES))](q), a, YES_NO))
    out.append(choice_question(attrs, rng))
    return out


def text_only_sample(rng: random.Random) -> list[tuple[str, str]]:
    """A question the language model can answer without an image (mix665k has such samples)."""
    template, kind = rng.choice(TEXT_ONLY)
    if kind == "next":
        i = rng.randrange(len(NUMBER_WORDS) - 1)
        return [(template.format(a=NUMBER_WORDS[i]) + "\n" + SHORT, NUMBER_WORDS[i + 1])]
    if kind == "color":
        word = rng.choice(COLORS + SHAPES)
        return [(template.format(c=word) + "\n" + SHORT, YES_NO[0] if word in COLORS else YES_NO[1])]
    shape = rng.choice(SHAPES)
    return [(template.format(s=shape) + "\n" + SHORT, shape + "s")]


def corpus() -> list[str]:
    """Every string the toy data can contain (the tiny tokenizer's vocabulary is built from it)."""

    texts = [SHORT, *CAPTION_PROMPTS, " ".join(vocabulary()), "'", ","]
    attrs = {"count": 1, "color": "red", "position": "left", "shape": "circle"}
    texts += [q for q, _, _ in _attribute_qa(attrs).values()]
    texts += [f"Is there a {c} {s} in the image?" for c in COLORS for s in SHAPES]
    texts += [f(q) for f in YES_NO_STYLES for q in ("Is it?",)]
    texts += [f("What?", list(LETTERS)) for f in MC_STYLES]
    texts += [t.format(a="", c="", s="") for t, _ in TEXT_ONLY]
    texts += [" ".join(YES_NO), " ".join(s + "s" for s in SHAPES), " ".join(LETTERS)]
    for t in TEMPLATES.values():
        texts += [t.system, *t.roles, ":"]
    return texts


def _conversation(pairs: list[tuple[str, str]], image: bool) -> list[dict]:
    conv = []
    for i, (q, a) in enumerate(pairs):
        value = f"<image>\n{q}" if (image and i == 0) else q
        conv += [{"from": "human", "value": value}, {"from": "gpt", "value": a}]
    return conv


def write_toy_llava(
    root: str | Path,
    seed: int,
    image_size: int,
    n_pretrain: int,
    n_finetune: int,
    n_eval: int,
    text_only_fraction: float = 0.1,
) -> dict[str, Path]:
    """Write ``root/images/*.jpg``, ``pretrain.json``, ``finetune.json`` and ``eval.json``.

    Pretraining, finetuning and evaluation use disjoint scene indices. Rewrites nothing when
    ``root/manifest.json`` already records the same arguments (resume regenerates nothing).
    """
    root = Path(root)
    args = {
        "seed": seed,
        "image_size": image_size,
        "n_pretrain": n_pretrain,
        "n_finetune": n_finetune,
        "n_eval": n_eval,
        "text_only_fraction": text_only_fraction,
        "version": 2,
    }
    paths = {k: root / f"{k}.json" for k in ("pretrain", "finetune", "eval")}
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == args:
        return paths
    world = ToyWorld(seed=seed, image_size=image_size, max_count=MAX_COUNT)
    (root / "images").mkdir(parents=True, exist_ok=True)

    def image(index: int):
        s = world.sample(index)
        rel = f"images/{s.key}.jpg"
        s.image.save(root / rel, format="JPEG", quality=95)
        return s, rel

    rng = random.Random(derive_seed("toy-llava", seed))
    pretrain = []
    for i in range(n_pretrain):
        s, rel = image(i)
        prompt = rng.choice(CAPTION_PROMPTS)
        pretrain.append(
            {"id": f"pt-{s.key}", "image": rel, "conversations": _conversation([(prompt, s.caption)], True)}
        )
    finetune = []
    for i in range(n_pretrain, n_pretrain + n_finetune):
        if rng.random() < text_only_fraction:
            finetune.append(
                {"id": f"ft-text-{i}", "conversations": _conversation(text_only_sample(rng), False)}
            )
            continue
        s, rel = image(i)
        qs = image_questions(s.attributes, rng)
        rng.shuffle(qs)
        pairs = [(q.text, q.answer) for q in qs[: rng.randint(2, 4)]]
        if rng.random() < 0.1:
            pairs.append((rng.choice(CAPTION_PROMPTS), s.caption))
        finetune.append({"id": f"ft-{s.key}", "image": rel, "conversations": _conversation(pairs, True)})
    evals = []
    start = n_pretrain + n_finetune
    for i in range(start, start + n_eval):
        s, rel = image(i)
        for q in image_questions(s.attributes, rng):
            evals.append(
                {
                    "id": f"ev-{s.key}-{q.kind}",
                    "image": rel,
                    "kind": q.kind,
                    "question": q.text,
                    "answer": q.answer,
                    "options": list(q.options),
                }
            )
    paths["pretrain"].write_text(json.dumps(pretrain))
    paths["finetune"].write_text(json.dumps(finetune))
    paths["eval"].write_text(json.dumps(evals))
    manifest.write_text(json.dumps(args))
    return paths


def toy_accuracy(runner, eval_json: str | Path, image_root: str | Path, limit: int = 0) -> dict:
    """Accuracy on held-out toy questions, picking the option with the highest likelihood.

    Returns per-kind and overall accuracy next to chance (the mean of 1 / number of options).
    """
    from PIL import Image

    items = json.loads(Path(eval_json).read_text())
    if limit:
        items = items[:limit]
    per: dict[str, list[tuple[bool, float]]] = {}
    for item in items:
        with Image.open(Path(image_root) / item["image"]) as im:
            img = im.convert("RGB")
        scores = runner.choice_likelihood(img, item["question"], item["options"])
        pick = item["options"][max(range(len(scores)), key=scores.__getitem__)]
        per.setdefault(item["kind"], []).append((pick == item["answer"], 1.0 / len(item["options"])))
    report: dict = {"per_kind": {}}
    all_rows = [r for rows in per.values() for r in rows]
    for kind, rows in sorted(per.items()):
        report["per_kind"][kind] = {
            "accuracy": sum(ok for ok, _ in rows) / len(rows),
            "chance": sum(c for _, c in rows) / len(rows),
            "n": len(rows),
        }
    if all_rows:
        report["accuracy"] = sum(ok for ok, _ in all_rows) / len(all_rows)
        report["chance"] = sum(c for _, c in all_rows) / len(all_rows)
        report["n"] = len(all_rows)
    return report
