"""Toy-world versions of the six MLLM benchmarks, written as parquet in each real dataset's schema.

The column names, types and value formats are those of the hub datasets lmms-eval 0.7.3 reads
(``tests/README.md``, "Benchmark fixtures", says where each is documented), so the built-in ``doc_to_visual``,
``doc_to_text`` and ``process_results`` run unchanged on them. Questions use the phrasings the
tiny LLaVA is finetuned on (``llava_integration.toydata``: colour, count, position, presence), so
a trained tiny model can score above chance. Layout under ``root``, one folder per benchmark::

    mmvp/train.parquet  cv_bench/test.parquet  naturalbench/test.parquet
    pope/{random,popular,adversarial}.parquet  hallusion_bench/{image,non_image}.parquet
    scienceqa_img/test.parquet

The same layout is what ``--data-root`` expects for the real data (or hub shards ``split-*.parquet``).
Worlds: seed ``seed + 10 + k`` for benchmark k, so no fixture image is a training image of the tiny
runs (worlds 0, 1234 and 3).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from eval.mllm.mmvp_patterns import PATTERN_FILE, write_pattern_map
from genhancer.toyworld.world import (
    COLORS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    Scene,
    ToyWorld,
    attributes,
    render,
)

_FIXTURE_VERSION = 3  # 3: mmvp/patterns.csv


@dataclass(frozen=True)
class MllmFixtureRecipe:
    """Sizes of the toy benchmarks (rows = questions)."""

    seed: int = 0
    image_size: int = 64
    mmvp_pairs: int = 6
    cv_bench_per_source: int = 4
    naturalbench_groups: int = 3
    pope_per_split: int = 6
    hallusion_sets: int = 2
    scienceqa: int = 6


def _world(recipe: MllmFixtureRecipe, k: int) -> ToyWorld:
    return ToyWorld(seed=recipe.seed + 10 + k, image_size=recipe.image_size, max_count=3)


def _image(scene: Scene, size: int):
    return render(scene, size)


def _write(rows: dict[str, list], features: dict, path: Path) -> Path:
    from datasets import Dataset, Features

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=Features(features)).to_parquet(str(path))
    return path


def _columns(records: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in records] for k in records[0]}


def _other(value, values, rng: random.Random):
    return rng.choice([v for v in values if v != value])


def _vary(world: ToyWorld, scene: Scene, attribute: str, rng: random.Random) -> Scene:
    return world.vary(scene, attribute, rng)


# --- MMVP: lmms-lab-eval/MMVP, split train -------------------------------------------------------


def write_mmvp(root: Path, recipe: MllmFixtureRecipe) -> Path:
    """Pairs of scenes differing in one attribute; both rows ask the same two-option question."""
    from datasets import Image, Value

    world, rng = _world(recipe, 0), random.Random(recipe.seed)
    rows = []
    for p in range(recipe.mmvp_pairs):
        a = world.scene(p)
        attr = ("color", "count", "position")[p % 3]
        b = _vary(world, a, attr, rng)
        question = {
            "color": "What color are the shapes?",
            "count": "How many shapes are there?",
            "position": "Where are the shapes?",
        }[attr]
        va, vb = (
            (str(attributes(s)[attr]) if attr != "count" else NUMBER_WORDS[len(s.shapes) - 1]) for s in (a, b)
        )
        opts = [va, vb] if rng.random() < 0.5 else [vb, va]
        for j, (scene, value) in enumerate(((a, va), (b, vb))):
            rows.append(
                {
                    "Index": 2 * p + j + 1,  # 1-based, as published
                    "Question": question,
                    "Options": f"(a) {opts[0]} (b) {opts[1]}",
                    "Correct Answer": "(a)" if opts[0] == value else "(b)",
                    "image": _image(scene, recipe.image_size),
                }
            )
    feats = {
        "Index": Value("int32"),
        "Question": Value("string"),
        "Options": Value("string"),
        "Correct Answer": Value("string"),
        "image": Image(),
    }
    # The pair-to-pattern map is not part of the dataset (eval.mllm.mmvp_patterns): a CSV beside it.
    pattern = {"color": "color", "count": "quantity", "position": "position"}
    write_pattern_map(
        root / "mmvp" / PATTERN_FILE,
        {p: pattern[("color", "count", "position")[p % 3]] for p in range(recipe.mmvp_pairs)},
        recipe.mmvp_pairs,
    )
    return _write(_columns(rows), feats, root / "mmvp" / "train.parquet")


# --- CV-Bench: nyu-visionx/CV-Bench, split test ---------------------------------------------------


def write_cv_bench(root: Path, recipe: MllmFixtureRecipe) -> Path:
    """Count / Relation rows as 2D (ADE20K, COCO), Depth / Distance stand-ins as 3D (Omni3D)."""
    from datasets import Image, Sequence, Value

    world, rng = _world(recipe, 1), random.Random(recipe.seed + 1)
    rows = []
    idx = 0
    for source, kind in (("ADE20K", "2D"), ("COCO", "2D"), ("Omni3D", "3D")):
        for k in range(recipe.cv_bench_per_source):
            scene = world.scene(idx)
            attrs = attributes(scene)
            if kind == "2D" and k % 2 == 0:
                task, question = "Count", "How many shapes are there?"
                choices = list(NUMBER_WORDS[:3])
                right = NUMBER_WORDS[len(scene.shapes) - 1]
            elif kind == "2D":
                task, question = "Relation", "Where are the shapes?"
                choices = [str(attrs["position"]), _other(attrs["position"], POSITIONS, rng)]
                right = str(attrs["position"])
            else:
                task = "Depth" if k % 2 == 0 else "Distance"
                question, right = "What color are the shapes?", str(attrs["color"])
                choices = [right, _other(right, COLORS, rng)]
            rng.shuffle(choices)
            letters = "ABCDEFGH"
            listed = "\n".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))
            rows.append(
                {
                    "idx": idx,
                    "type": kind,
                    "task": task,
                    "image": _image(scene, recipe.image_size),
                    "question": question,
                    "choices": choices,
                    "answer": f"({letters[choices.index(right)]})",
                    "prompt": f"{question} Select from the following choices.\n{listed}",
                    "filename": f"img/{kind}/{task.lower()}/{source.lower()}_{idx:04d}.png",
                    "source": source,
                    "source_dataset": source,
                    "source_filename": f"{idx:06d}.jpg",
                    "target_class": None,
                    "target_size": None,
                    "bbox": None,
                }
            )
            idx += 1
    feats = {
        "idx": Value("int32"),
        "type": Value("string"),
        "task": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "choices": Sequence(Value("string")),
        "answer": Value("string"),
        "prompt": Value("string"),
        "filename": Value("string"),
        "source": Value("string"),
        "source_dataset": Value("string"),
        "source_filename": Value("string"),
        "target_class": Value("string"),
        "target_size": Value("int64"),
        "bbox": Sequence(Value("float32")),
    }
    return _write(_columns(rows), feats, root / "cv_bench" / "test.parquet")


# --- NaturalBench: BaiqiL/NaturalBench-lmms-eval, split test --------------------------------------


def write_naturalbench(root: Path, recipe: MllmFixtureRecipe) -> Path:
    """Groups of 2 images x 2 questions in the official row order q0_i0, q0_i1, q1_i0, q1_i1, whose
    answers are yes/A, no/B, no/B, yes/A by position; alternating yes/no and multiple-choice groups.

    Only the columns lmms-eval's task code reads (``naturalbench/utils.py``: ``Index``, ``Image``,
    ``Question``, ``Question_Type``): no answer column, since neither the official scorer nor ours
    reads one, and lmms-eval then logs its ``doc_to_target: "answer"`` as the literal string.
    """
    from datasets import Image, Value

    world, rng = _world(recipe, 2), random.Random(recipe.seed + 2)
    rows = []
    for g in range(recipe.naturalbench_groups):
        i0 = world.scene(g)
        i1 = _vary(world, i0, "color", rng)
        c0, c1 = attributes(i0)["color"], attributes(i1)["color"]
        shape = attributes(i0)["shape"]
        # q0 is true of image 0, q1 of image 1: the official layout's yes/A, no/B, no/B, yes/A.
        if g % 2 == 0:
            qtype = "yes_no"
            q0, q1 = (f"Is there a {c} {shape} in the image?" for c in (c0, c1))
        else:
            qtype = "multiple_choice"
            q0 = f"What color are the shapes? A. {c0} B. {c1}"
            q1 = f"What color are the shapes? A. {c1} B. {c0}"
        for k, (q, im) in enumerate(((q0, i0), (q0, i1), (q1, i0), (q1, i1))):
            rows.append(
                {
                    "Index": 4 * g + k,  # must equal the row position (naturalbench/utils.py:191)
                    "Image": _image(im, recipe.image_size),
                    "Question": q,
                    "Question_Type": qtype,
                }
            )
    feats = {
        "Index": Value("int64"),
        "Image": Image(),
        "Question": Value("string"),
        "Question_Type": Value("string"),
    }
    return _write(_columns(rows), feats, root / "naturalbench" / "test.parquet")


# --- POPE: lmms-lab-encoder/POPE, config Full, splits random/popular/adversarial -------------------


def write_pope(root: Path, recipe: MllmFixtureRecipe) -> list[Path]:
    """Half "yes" (the scene's own colour and shape), half "no": a random object (random), the most
    frequent other colour (popular), or the same shape in another colour (adversarial)."""
    from datasets import Image, Value

    world, rng = _world(recipe, 3), random.Random(recipe.seed + 3)
    feats = {
        "id": Value("string"),
        "question_id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "image_source": Value("string"),
        "image": Image(),
        "category": Value("string"),
    }
    out = []
    n = 0
    for split in ("random", "popular", "adversarial"):
        rows = []
        for k in range(recipe.pope_per_split):
            scene = world.scene(n)
            a = attributes(scene)
            color, shape = str(a["color"]), str(a["shape"])
            if k % 2 == 0:
                answer = "yes"
            else:
                answer = "no"
                if split == "random":
                    color, shape = _other(color, COLORS, rng), _other(shape, SHAPES, rng)
                elif split == "popular":
                    color = "red" if color != "red" else "blue"
                else:
                    color = _other(color, COLORS, rng)
            rows.append(
                {
                    "id": str(n),
                    "question_id": str(k + 1),
                    "question": f"Is there a {color} {shape} in the image?",
                    "answer": answer,
                    "image_source": ToyWorld.key(n),
                    "image": _image(scene, recipe.image_size),
                    "category": split,
                }
            )
            n += 1
        out.append(_write(_columns(rows), feats, root / "pope" / f"{split}.parquet"))
    return out


# --- HallusionBench: lmms-lab/HallusionBench, splits image and non_image -------------------------


def write_hallusion(root: Path, recipe: MllmFixtureRecipe) -> list[Path]:
    """Sets of an original figure and an edited one (colour changed), two yes/no questions each.

    As in the official data: VD sets have figures 0 and 1 (``visual_input`` "1"/"2"); VS sets ask
    the same questions without a figure first (figure 0, ``visual_input`` "0", ``image`` None: the
    ``non_image`` split), then on figures 1 and 2 (the ``image`` split).
    """
    from datasets import Image, Value

    world, rng = _world(recipe, 4), random.Random(recipe.seed + 4)
    rows: dict[str, list[dict]] = {"image": [], "non_image": []}
    for s in range(recipe.hallusion_sets):
        category = "VD" if s % 2 == 0 else "VS"
        orig = world.scene(s)
        edited = _vary(world, orig, "color", rng)
        shape = str(attributes(orig)["shape"])
        c0, c1 = str(attributes(orig)["color"]), str(attributes(edited)["color"])
        figures = [(0, "1", orig), (1, "2", edited)] if category == "VD" else [
            (0, "0", orig), (1, "1", orig), (2, "2", edited)
        ]  # fmt: skip
        for fig, visual, scene in figures:
            for q, color in enumerate((c0, c1)):
                yes = attributes(scene)["color"] == color
                rows["non_image" if visual == "0" else "image"].append(
                    {
                        "category": category,
                        "subcategory": "color",
                        "visual_input": visual,
                        "set_id": str(s),
                        "figure_id": str(fig),
                        "sample_note": "toyworld",
                        "question_id": str(q),
                        "question": f"Is there a {color} {shape} in the image?",
                        "gt_answer_details": f"The {shape} is {attributes(scene)['color']}.",
                        "gt_answer": "1" if yes else "0",
                        "filename": ""
                        if visual == "0"
                        else f"./hallusion_bench/{category}/color/{s}_{fig}.png",
                        "image": None if visual == "0" else _image(scene, recipe.image_size),
                    }
                )
    feats = {k: Value("string") for k in rows["image"][0] if k != "image"}
    feats["image"] = Image()
    return [
        _write(_columns(r), feats, root / "hallusion_bench" / f"{split}.parquet")
        for split, r in rows.items()
        if r
    ]


# --- ScienceQA-IMG: lmms-lab-encoder/ScienceQA, config ScienceQA-IMG, split test -------------------


def write_scienceqa(root: Path, recipe: MllmFixtureRecipe) -> Path:
    """Colour / count questions with 2-3 choices; every other row has a hint (the ``Context:`` line)."""
    from datasets import Image, Sequence, Value

    world, rng = _world(recipe, 5), random.Random(recipe.seed + 5)
    rows = []
    for k in range(recipe.scienceqa):
        scene = world.scene(k)
        a = attributes(scene)
        if k % 2 == 0:
            question, right = "What color are the shapes?", str(a["color"])
            choices = [right, _other(right, COLORS, rng), _other(right, COLORS, rng)]
            choices = list(dict.fromkeys(choices))
        else:
            question, right = "How many shapes are there?", NUMBER_WORDS[len(scene.shapes) - 1]
            choices = list(NUMBER_WORDS[:3])
        rng.shuffle(choices)
        rows.append(
            {
                "image": _image(scene, recipe.image_size),
                "question": question,
                "choices": choices,
                "answer": choices.index(right),
                "hint": "Look at the shapes." if k % 2 else "",
                "task": "closed choice",
                "grade": "grade2",
                "subject": "natural science",
                "topic": "toyworld",
                "category": "Colors and counting",
                "skill": "Identify colors and counts",
                "lecture": "",
                "solution": f"The answer is {right}.",
            }
        )
    feats = {
        "image": Image(),
        "question": Value("string"),
        "choices": Sequence(Value("string")),
        "answer": Value("int8"),
        "hint": Value("string"),
        **{
            k: Value("string")
            for k in ("task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
        },
    }
    return _write(_columns(rows), feats, root / "scienceqa_img" / "test.parquet")


WRITERS: dict[str, Callable[[Path, MllmFixtureRecipe], object]] = {
    "mmvp": write_mmvp,
    "cv_bench": write_cv_bench,
    "naturalbench": write_naturalbench,
    "pope": write_pope,
    "hallusion_bench": write_hallusion,
    "scienceqa_img": write_scienceqa,
}


def ensure_mllm_fixtures(
    root: str | Path, recipe: MllmFixtureRecipe, benchmarks: list[str] | None = None
) -> Path:
    """Write the toy benchmarks under ``root`` unless an identical recipe is already there."""
    root = Path(root)
    stamp = root / "mllm_fixtures.json"
    want = {"version": _FIXTURE_VERSION, "recipe": asdict(recipe)}
    names = list(benchmarks or WRITERS)
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    have = set(done.get("benchmarks", [])) if {k: done.get(k) for k in want} == want else set()
    for name in names:
        if name not in have:
            WRITERS[name](root, recipe)
            have.add(name)
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({**want, "benchmarks": sorted(have)}, indent=2))
    return root
