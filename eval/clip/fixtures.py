"""Offline benchmark fixtures generated from the toy world, in the published on-disk layouts.

The tiny preset and the tests run the real loaders and scorers on these, so nothing here is a
shortcut: the MMVP-style set is a ``Questions.csv`` + ``MLLM_VLM Images/<Type>/<id>.jpg`` tree
exactly like the published MMVP-VLM, the classification set is an image folder by class, and
the retrieval set is images with several captions each.

Toy MMVP-VLM: every pair is a scene and the same scene with exactly one attribute changed
(:meth:`genhancer.toyworld.world.ToyWorld.vary` where it fits); each statement is its own image's
caption, so it names that image's value of the changed attribute. The nine published patterns
map to the closest toy attribute:

=================================== =====================================================
pattern (``Type``)                  what differs within a pair
=================================== =====================================================
Orientation and Direction           orientation turned by 90 degrees
Presence of Specific Features       a word present vs. absent
State and Condition                 size (small / large)
Quantity and Count                  number of shapes
Positional and Relational Context   position of the group
Color and Appearance                colour
Structural Characteristics          shape kind
Texts                               one word vs. another
Viewpoint and Perspective           orientation turned by 180 degrees (seen "from the other side")
=================================== =====================================================

Toy clustering (``clustering/toy_shapes``): scenes whose class is the shape kind, every other
attribute drawn by the world, written as a ``datasets`` folder the way the hub publishes one
(``data/test-00000-of-00001.parquet``, ``image`` + ``label`` columns, class names in the label
feature), or as an image folder by class.

Worlds: the MMVP-style scenes come from hashed indices (~1e9 range) of world ``seed``, the
classification and retrieval sets from worlds ``seed + 1`` and ``seed + 2``, the clustering set
from world ``seed + 3``; none of them
overlaps the images the tiny tower (world 1234) or ``enhance --preset tiny`` (world 0, indices
below ``data.toyworld_size``) trained on.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from eval.clip.clustering import quiet_datasets
from eval.clip.mmvp_vlm import CSV_COLUMNS, CSV_NAME, IMAGE_DIR, PAIRS_PER_PATTERN, PATTERNS
from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.world import (
    COLORS,
    NUMBER_WORDS,
    ORIENTATIONS,
    POSITION_PHRASES,
    SHAPES,
    WORDS,
    Scene,
    ToyWorld,
    attributes,
    caption,
    render,
)

_FIXTURE_VERSION = 2
_TURN_90 = {"up": "right", "right": "down", "down": "left", "left": "up"}
_TURN_180 = {"up": "down", "down": "up", "left": "right", "right": "left"}


def _rebuild(scene: Scene, **changes) -> Scene:
    """``scene`` with some labels replaced (jitter and background kept)."""
    labels = {**attributes(scene), **changes}
    jitters = tuple(s.jitter for s in scene.shapes)
    if len(jitters) != labels["count"]:
        raise ValueError("use ToyWorld.vary to change the count")
    return Scene.build(
        labels["shape"],
        labels["color"],
        labels["count"],
        labels["size"],
        labels["orientation"],
        labels["position"],
        labels["text"],
        scene.background,
        jitters,
    )


def _vary_with(attribute: str) -> Callable[[ToyWorld, Scene, random.Random], tuple[Scene, Scene]]:
    def make(world: ToyWorld, scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
        return scene, world.vary(scene, attribute, rng)

    return make


def _presence(world: ToyWorld, scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    base = _rebuild(scene, text="none")
    return base, _rebuild(base, text=rng.choice(WORDS))


def _texts(world: ToyWorld, scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
    base = scene if scene.text is not None else _rebuild(scene, text=rng.choice(WORDS))
    return base, world.vary(base, "text", rng)


def _turn(table: dict[str, str]):
    def make(world: ToyWorld, scene: Scene, rng: random.Random) -> tuple[Scene, Scene]:
        return scene, _rebuild(scene, orientation=table[attributes(scene)["orientation"]])

    return make


#: Published pattern key -> (toy attribute that differs, pair maker). Order = Table 1.
MMVP_PATTERN_ATTRIBUTES: dict[str, tuple[str, Callable]] = {
    "orientation": ("orientation", _turn(_TURN_90)),
    "presence": ("text", _presence),
    "state": ("size", _vary_with("size")),
    "quantity": ("count", _vary_with("count")),
    "position": ("position", _vary_with("position")),
    "color": ("color", _vary_with("color")),
    "structure": ("shape", _vary_with("shape")),
    "text": ("text", _texts),
    "viewpoint": ("orientation", _turn(_TURN_180)),
}


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def write_toy_mmvp_vlm(
    root: str | Path,
    seed: int = 0,
    image_size: int = 64,
    pairs_per_pattern: int = PAIRS_PER_PATTERN,
    patterns: tuple[str, ...] | None = None,
) -> Path:
    """Write an MMVP-VLM-layout benchmark to ``root``: 9 patterns x ``pairs_per_pattern`` pairs.

    ``patterns`` (keys of :data:`MMVP_PATTERN_ATTRIBUTES`) selects a subset, e.g. for a
    2-pattern test fixture. Question ids run 1, 2, ... with odd ids first in each pair.
    """
    root = Path(root)
    world = ToyWorld(seed=seed, image_size=image_size)
    type_of = dict(PATTERNS)
    keys = patterns or tuple(type_of)
    rows = []
    qid = 1
    for p, key in enumerate(keys):
        _, make = MMVP_PATTERN_ATTRIBUTES[key]
        folder = root / IMAGE_DIR / type_of[key]
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(pairs_per_pattern):
            rng = random.Random(derive_seed("toy_mmvp_vlm", seed, key, j))
            scene = world.scene(derive_seed("toy_mmvp_vlm_scene", seed, p, j) % 10**9)
            for s in make(world, scene, rng):
                (folder / f"{qid}.jpg").write_bytes(_jpeg(render(s, image_size)))
                rows.append((qid, type_of[key], caption(s)))
                qid += 1
    with open(root / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return root


def write_toy_classification(
    root: str | Path, seed: int = 1, image_size: int = 64, per_class: int = 20, attribute: str = "color"
) -> Path:
    """Image folder ``root/<class>/<n>.jpg``: toy scenes with ``attribute`` set to each class value."""
    values = {"color": COLORS, "shape": SHAPES, "orientation": ORIENTATIONS}[attribute]
    root = Path(root)
    world = ToyWorld(seed=seed, image_size=image_size)
    i = 0
    for value in values:
        (root / value).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            scene = _rebuild(world.scene(i), **{attribute: value})
            (root / value / f"{n:04d}.jpg").write_bytes(_jpeg(render(scene, image_size)))
            i += 1
    return root


def retrieval_captions(scene: Scene) -> list[str]:
    """Three captions per image, like Flickr30k/COCO's several references: full and two partial."""
    a = attributes(scene)
    n = int(a["count"])
    noun = a["shape"] if n == 1 else f"{a['shape']}s"
    word = f", with the word '{scene.text}'" if scene.text is not None else ""
    return [
        caption(scene),
        f"{NUMBER_WORDS[n - 1]} {a['color']} {noun} {POSITION_PHRASES[str(a['position'])]}",
        f"{a['size']} {a['color']} {noun} pointing {a['orientation']}{word}",
    ]


def write_toy_retrieval(root: str | Path, seed: int = 2, image_size: int = 64, n_images: int = 60) -> Path:
    """``root/images/<key>.jpg`` + ``root/captions.jsonl`` (``{"image", "captions"}`` per line)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    world = ToyWorld(seed=seed, image_size=image_size)
    lines = []
    for s in world.samples(n_images):
        (root / "images" / f"{s.key}.jpg").write_bytes(_jpeg(s.image))
        lines.append(json.dumps({"image": f"images/{s.key}.jpg", "captions": retrieval_captions(s.scene)}))
    (root / "captions.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


def write_toy_clustering(
    root: str | Path,
    seed: int = 3,
    image_size: int = 64,
    per_class: int = 20,
    split: str = "test",
    layout: str = "datasets",
) -> Path:
    """Toy scenes labelled by shape kind (4 classes), ``per_class`` each.

    ``layout="datasets"``: ``root/data/<split>-00000-of-00001.parquet`` (``image``, ``label`` with
    the class names), read by ``datasets.load_dataset(root, split=split)``;
    ``layout="imagefolder"``: ``root/<split>/<shape>/<n>.jpg``.
    """
    root = Path(root)
    world = ToyWorld(seed=seed, image_size=image_size)
    images, labels = [], []
    i = 0
    for c, shape in enumerate(SHAPES):
        for _ in range(per_class):
            images.append(render(_rebuild(world.scene(i), shape=shape), image_size))
            labels.append(c)
            i += 1
    if layout == "imagefolder":
        for n, (im, c) in enumerate(zip(images, labels)):
            folder = root / split / SHAPES[c]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{n:04d}.jpg").write_bytes(_jpeg(im))
        return root
    if layout != "datasets":
        raise ValueError(f"layout must be datasets or imagefolder, got {layout!r}")
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPES))}
    )
    rows = {"image": [{"bytes": _jpeg(im), "path": None} for im in images], "label": labels}
    (root / "data").mkdir(parents=True, exist_ok=True)
    with quiet_datasets():
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet")
        )
    return root


@dataclasses.dataclass(frozen=True)
class FixtureRecipe:
    """What the generated fixtures depend on (a change regenerates them)."""

    seed: int = 0
    image_size: int = 64
    pairs_per_pattern: int = PAIRS_PER_PATTERN
    class_images: int = 20
    retrieval_images: int = 60
    cluster_images: int = 20


#: Dataset names the fixtures provide under ``zeroshot/`` and ``clustering/``.
TOY_CLASSIFICATION = "toy_color"
TOY_RETRIEVAL = "toy_captions"
TOY_CLUSTERING = "toy_shapes"


def ensure_toy_fixtures(root: str | Path, recipe: FixtureRecipe = FixtureRecipe()) -> Path:
    """Generate (once) a data root holding ``mmvp_vlm/``, ``zeroshot/{toy_color,toy_captions}/`` and
    ``clustering/toy_shapes/``.

    Written to a temporary folder and renamed, with a ``COMPLETE`` marker and ``recipe.json``;
    a folder from another recipe is replaced.
    """
    root = Path(root)
    blob = json.dumps({"v": _FIXTURE_VERSION, **dataclasses.asdict(recipe)}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    marker = root / "COMPLETE"
    if marker.is_file() and marker.read_text().strip() == digest:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write_toy_mmvp_vlm(tmp / "mmvp_vlm", recipe.seed, recipe.image_size, recipe.pairs_per_pattern)
        write_toy_classification(
            tmp / "zeroshot" / TOY_CLASSIFICATION, recipe.seed + 1, recipe.image_size, recipe.class_images
        )
        write_toy_retrieval(
            tmp / "zeroshot" / TOY_RETRIEVAL, recipe.seed + 2, recipe.image_size, recipe.retrieval_images
        )
        write_toy_clustering(
            tmp / "clustering" / TOY_CLUSTERING, recipe.seed + 3, recipe.image_size, recipe.cluster_images
        )
        (tmp / "recipe.json").write_text(blob)
        (tmp / "COMPLETE").write_text(digest + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
