"""Toy world: seeded synthetic scenes with known attributes.

Every tiny preset and test trains on these images instead of downloading data, and later stages reuse
them: captions feed a small LLaVA run (its tokenizer is built from :func:`vocabulary`), the attribute
labels feed linear probes, and :meth:`ToyWorld.vary` makes MMVP-style pairs that differ in exactly
one attribute.

A scene is one group of 1..5 identical shapes (same kind, colour, size and orientation) placed in
one of five regions, plus an optional word in a band at the bottom of the image. Layout: the top
80% of the image is a 3x3 grid; "left"/"right" groups stand in a column of the left/right third,
"top"/"center"/"bottom" groups lie along a row, always centred on their region, so the position is
readable from the group's centroid. Triangles point in their orientation; the other kinds carry a
small arrowhead pointing that way, so orientation is visible for any kind.
The background colour and a small per-shape jitter are nuisance variables: they are not captioned
and not labels. Rendering is supersampled and uses PIL's built-in bitmap font, so it is offline and
byte-for-byte deterministic for a given Pillow/libjpeg.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from genhancer.runtime.seeding import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    import datasets

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 82, 220),
    "yellow": (245, 210, 25),
    "purple": (140, 60, 185),
    "orange": (245, 135, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
ORIENTATIONS: tuple[str, ...] = ("up", "right", "down", "left")
POSITIONS: tuple[str, ...] = ("left", "center", "right", "top", "bottom")
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "car", "hat", "box", "go", "yes")
BACKGROUNDS: tuple[str, ...] = ("white", "gray", "black")
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (190, 190, 190),
    "black": (18, 18, 18),
}
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")
MAX_COUNT = len(NUMBER_WORDS)
#: Label names returned by :func:`attributes` (and accepted by :meth:`ToyWorld.vary`).
ATTRIBUTES: tuple[str, ...] = ("shape", "color", "count", "size", "orientation", "position", "text")
#: The ``text`` label of a scene without a word.
NO_TEXT = "none"

_PLURALS = {kind: kind + "s" for kind in SHAPES}
#: How captions say each position.
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Region centres in grid cells (x, y) and whether the group is laid out vertically.
_REGIONS = {
    "left": (0.5, 1.5, True),
    "right": (2.5, 1.5, True),
    "top": (1.5, 0.5, False),
    "center": (1.5, 1.5, False),
    "bottom": (1.5, 2.5, False),
}
_ANGLES = {"up": 0.0, "right": 90.0, "down": 180.0, "left": 270.0}
_TEXT_BAND = 0.2  # bottom fraction of the image reserved for the word
_JITTER = 0.05  # max per-shape offset, in slot spacings
_SHAPE_FIELDS = {
    "shape": "kind",
    "color": "color",
    "size": "size",
    "orientation": "orientation",
    "position": "position",
}
_VALUES = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "orientation": ORIENTATIONS,
    "position": POSITIONS,
}
_KEY_DIGITS = 9  # img2dataset-style keys: "000000012"
_TAR_MTIME = 946684800  # 2000-01-01, fixed so shards are byte-identical across runs


def _check(value: object, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class Shape:
    """One drawn object. ``jitter`` is its (dx, dy) offset in slot spacings (nuisance, not a label)."""

    kind: str
    color: str
    size: str
    orientation: str
    position: str
    jitter: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        _check(self.kind, SHAPES, "shape")
        _check(self.color, COLORS, "color")
        _check(self.size, SIZES, "size")
        _check(self.orientation, ORIENTATIONS, "orientation")
        _check(self.position, POSITIONS, "position")
        if any(abs(j) > _JITTER + 1e-9 for j in self.jitter):
            raise ValueError(f"jitter {self.jitter} exceeds ±{_JITTER}")


@dataclass(frozen=True)
class Scene:
    """A group of identical shapes (differing only in jitter), an optional word and a background."""

    shapes: tuple[Shape, ...]
    text: str | None = None
    background: str = "white"

    def __post_init__(self) -> None:
        if not 1 <= len(self.shapes) <= MAX_COUNT:
            raise ValueError(f"a scene holds 1..{MAX_COUNT} shapes, got {len(self.shapes)}")
        first = dataclasses.replace(self.shapes[0], jitter=(0.0, 0.0))
        if any(dataclasses.replace(s, jitter=(0.0, 0.0)) != first for s in self.shapes):
            raise ValueError("all shapes in a scene must share kind, colour, size, orientation and position")
        if self.text is not None:
            _check(self.text, WORDS, "text")
        _check(self.background, BACKGROUNDS, "background")

    @classmethod
    def build(
        cls,
        shape: str,
        color: str,
        count: int,
        size: str,
        orientation: str,
        position: str,
        text: str | None = None,
        background: str = "white",
        jitters: tuple[tuple[float, float], ...] | None = None,
    ) -> Scene:
        """A scene from its labels (``text`` may be None or ``"none"``); jitters default to zero."""
        jitters = jitters if jitters is not None else ((0.0, 0.0),) * count
        if len(jitters) != count:
            raise ValueError(f"{len(jitters)} jitters for {count} shapes")
        shapes = tuple(Shape(shape, color, size, orientation, position, tuple(j)) for j in jitters)
        return cls(shapes, None if text in (None, NO_TEXT) else text, background)


def attributes(scene: Scene) -> dict[str, str | int]:
    """Single-valued labels of a scene (``count`` is an int, the rest are str)."""
    s = scene.shapes[0]
    return {
        "shape": s.kind,
        "color": s.color,
        "count": len(scene.shapes),
        "size": s.size,
        "orientation": s.orientation,
        "position": s.position,
        "text": scene.text if scene.text is not None else NO_TEXT,
    }


def caption(scene: Scene) -> str:
    """E.g. "two large red triangles pointing up on the left, with the word 'sun'"."""
    s, n = scene.shapes[0], len(scene.shapes)
    noun = s.kind if n == 1 else _PLURALS[s.kind]
    text = f"{NUMBER_WORDS[n - 1]} {s.size} {s.color} {noun} pointing {s.orientation} {POSITION_PHRASES[s.position]}"
    if scene.text is not None:
        text += f", with the word '{scene.text}'"
    return text


def caption_words(text: str) -> list[str]:
    """How captions split into words: lowercase, punctuation stripped, split on whitespace."""
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def vocabulary() -> list[str]:
    """Every word that can occur in any caption, sorted."""
    parts = [
        *NUMBER_WORDS,
        *SIZES,
        *COLORS,
        *SHAPES,
        *_PLURALS.values(),
        "pointing",
        *ORIENTATIONS,
        *POSITION_PHRASES.values(),
        "with the word",
        *WORDS,
    ]
    return sorted({w for p in parts for w in caption_words(p)})


# ----------------------------------------------------------------------------------------- rendering


def _polygon(
    cx: float, cy: float, radius: float, angle_deg: float, corners: int
) -> list[tuple[float, float]]:
    """Regular polygon whose first corner points along ``angle_deg`` (0 = up, clockwise)."""
    pts = []
    for k in range(corners):
        a = math.radians(angle_deg + 360.0 * k / corners)
        pts.append((cx + radius * math.sin(a), cy - radius * math.cos(a)))
    return pts


def _font() -> ImageFont.ImageFont:
    # The bitmap font (not the FreeType one newer Pillow returns from load_default) renders the same
    # pixels on every machine.
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


def _draw_text(img: Image.Image, word: str, box: tuple[float, float, float, float], rgb: tuple) -> None:
    """Draw ``word`` centred in ``box``, scaling the bitmap glyphs to ~65% of the box height."""
    font = _font()
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), word, font=font)
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), word, fill=255, font=font)
    height = max(1, round((box[3] - box[1]) * 0.65))
    width = max(1, round(mask.width * height / mask.height))
    width = min(width, round((box[2] - box[0]) * 0.9))
    mask = mask.resize((width, height), Image.NEAREST)
    x = round((box[0] + box[2] - width) / 2)
    y = round((box[1] + box[3] - height) / 2)
    img.paste(Image.new("RGB", mask.size, rgb), (x, y), mask)


def render(scene: Scene, image_size: int = 64, object_scale: float = 1.0) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``image_size`` px (deterministic).

    ``object_scale`` multiplies every shape's diameter (1.0: the default world; larger objects
    give the rare attributes, orientation above all, more of the pixels)."""
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if object_scale <= 0:
        raise ValueError(f"object_scale must be > 0, got {object_scale}")
    factor = max(2, -(-256 // image_size))  # supersample onto a canvas of at least 256 px
    side = image_size * factor
    bg = BACKGROUND_RGB[scene.background]
    dark_bg = sum(bg) < 3 * 128
    ink = (235, 235, 235) if dark_bg else (25, 25, 25)
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)

    cell_w, cell_h = side / 3, side * (1 - _TEXT_BAND) / 3
    n = len(scene.shapes)
    spacing = min(1.0, 3.0 / n)  # in cells; groups of more than three shrink to fit a row
    base = scene.shapes[0]
    diameter = min(cell_w, cell_h) * spacing * (0.8 if base.size == "large" else 0.55) * object_scale
    outline = max(1, round(diameter * 0.06))
    rx, ry, vertical = _REGIONS[base.position]
    angle = _ANGLES[base.orientation]
    fill = COLOR_RGB[base.color]
    marker = (250, 250, 250) if sum(fill) < 450 else (25, 25, 25)
    for i, shape in enumerate(scene.shapes):
        along = (i - (n - 1) / 2) * spacing
        x = rx + (0.0 if vertical else along) + shape.jitter[0] * spacing
        y = ry + (along if vertical else 0.0) + shape.jitter[1] * spacing
        cx, cy, r = x * cell_w, y * cell_h, diameter / 2
        if shape.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=ink, width=outline)
        else:
            corners, rot, rad = {
                "square": (4, 45.0, r * 2**0.5),
                "diamond": (4, 0.0, r * 1.15),
                "triangle": (3, angle, r * 1.1),
            }[shape.kind]
            draw.polygon(_polygon(cx, cy, rad, rot, corners), fill=fill, outline=ink, width=outline)
        if shape.kind != "triangle":  # a triangle already points; others get an arrowhead
            draw.polygon(_polygon(cx, cy, r * 0.45, angle, 3), fill=marker)

    if scene.text is not None:
        band = (0.0, side * (1 - _TEXT_BAND), float(side), float(side))
        _draw_text(img, scene.text, band, ink)
    return img.resize((image_size, image_size), Image.LANCZOS)


# ----------------------------------------------------------------------------------------- the world


@dataclass
class ToySample:
    """One generated example; ``key`` is zero-padded like img2dataset keys."""

    key: str
    image: Image.Image
    caption: str
    attributes: dict[str, str | int]
    scene: Scene


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


class ToyWorld:
    """Scenes as a pure function of ``(seed, index)``, plus writers for the formats training reads.

    The nuisance options change what the pixels carry, not what the labels are: ``backgrounds``
    (the background colours drawn from), ``jitter`` (per-shape offsets on or off), ``text_prob``
    (how often a word is drawn) and ``object_scale`` (shape size, see :func:`render`). Their
    defaults give the original world, scene for scene and pixel for pixel.
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 64,
        max_count: int = 3,
        text_prob: float = 0.5,
        object_scale: float = 1.0,
        backgrounds: tuple[str, ...] = BACKGROUNDS,
        jitter: bool = True,
    ):
        if not 1 <= max_count <= MAX_COUNT:
            raise ValueError(f"max_count must be in 1..{MAX_COUNT}, got {max_count}")
        if not 0.0 <= text_prob <= 1.0:
            raise ValueError(f"text_prob must be in [0, 1], got {text_prob}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if object_scale <= 0:
            raise ValueError(f"object_scale must be > 0, got {object_scale}")
        backgrounds = tuple(backgrounds)
        if not backgrounds:
            raise ValueError("backgrounds must name at least one background")
        for b in backgrounds:
            _check(b, BACKGROUNDS, "background")
        self.seed, self.image_size, self.max_count, self.text_prob = seed, image_size, max_count, text_prob
        self.object_scale, self.backgrounds, self.jitter = float(object_scale), backgrounds, bool(jitter)

    def __repr__(self) -> str:
        return (
            f"ToyWorld(seed={self.seed}, image_size={self.image_size}, "
            f"max_count={self.max_count}, text_prob={self.text_prob}, object_scale={self.object_scale}, "
            f"backgrounds={self.backgrounds}, jitter={self.jitter})"
        )

    @staticmethod
    def key(index: int) -> str:
        return f"{index:0{_KEY_DIGITS}d}"

    @staticmethod
    def _jitter(rng: random.Random) -> tuple[float, float]:
        return (round(rng.uniform(-_JITTER, _JITTER), 4), round(rng.uniform(-_JITTER, _JITTER), 4))

    def scene(self, index: int) -> Scene:
        """The scene at ``index`` (deterministic in ``(seed, index)``)."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = random.Random(derive_seed("toyworld", self.seed, index))
        kind, color, size = rng.choice(SHAPES), rng.choice(COLORS), rng.choice(SIZES)
        orientation, position = rng.choice(ORIENTATIONS), rng.choice(POSITIONS)
        count = rng.randint(1, self.max_count)
        text = rng.choice(WORDS) if rng.random() < self.text_prob else None
        background = rng.choice(self.backgrounds)
        jitters = tuple(self._jitter(rng) if self.jitter else (0.0, 0.0) for _ in range(count))
        return Scene.build(kind, color, count, size, orientation, position, text, background, jitters)

    def sample(self, index: int) -> ToySample:
        scene = self.scene(index)
        image = render(scene, self.image_size, self.object_scale)
        return ToySample(self.key(index), image, caption(scene), attributes(scene), scene)

    def samples(self, n: int, start: int = 0) -> Iterator[ToySample]:
        for index in range(start, start + n):
            yield self.sample(index)

    def vary(self, scene: Scene, attribute: str, rng: random.Random) -> Scene:
        """``scene`` with exactly ``attribute`` changed to another value drawn from ``rng``.

        ``text`` switches to a different word (or gains one when the scene has none); ``count`` keeps
        the existing shapes and adds or drops some at the end. Background and jitter are kept.
        """
        _check(attribute, ATTRIBUTES, "attribute")
        labels = attributes(scene)
        current = labels[attribute]
        if attribute == "count":
            options: tuple = tuple(c for c in range(1, self.max_count + 1) if c != current)
        elif attribute == "text":
            options = tuple(w for w in WORDS if w != current)
        else:
            options = tuple(v for v in _VALUES[attribute] if v != current)
        if not options:
            raise ValueError(f"cannot vary {attribute!r}: no other value (max_count={self.max_count})")
        new = rng.choice(options)
        if attribute == "text":
            return dataclasses.replace(scene, text=new)
        if attribute == "count":
            shapes = scene.shapes[:new] + tuple(
                dataclasses.replace(scene.shapes[0], jitter=self._jitter(rng))
                for _ in range(new - len(scene.shapes))
            )
            return dataclasses.replace(scene, shapes=shapes)
        field = _SHAPE_FIELDS[attribute]
        shapes = tuple(dataclasses.replace(s, **{field: new}) for s in scene.shapes)
        return dataclasses.replace(scene, shapes=shapes)

    # ------------------------------------------------------------------------------------- writers

    def write_image_folder(self, root: str | os.PathLike, n: int, start: int = 0) -> Path:
        """Write ``root/{key}.jpg`` plus ``root/metadata.jsonl``.

        ``metadata.jsonl`` follows the Hugging Face "imagefolder" convention (one JSON object per line
        with ``file_name``, then ``key``, ``caption`` and the attribute labels), so the folder loads
        with ``datasets.load_dataset("imagefolder", data_dir=root)`` as well as with our loader.
        """
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        lines = []
        for s in self.samples(n, start):
            (root / f"{s.key}.jpg").write_bytes(_jpeg_bytes(s.image))
            lines.append(
                json.dumps({"file_name": f"{s.key}.jpg", "key": s.key, "caption": s.caption, **s.attributes})
            )
        (root / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return root

    def write_webdataset(
        self, root: str | os.PathLike, n: int, shard_size: int = 1000, start: int = 0
    ) -> list[Path]:
        """Write tar shards ``root/{shard:05d}.tar`` (numbered from 0) in the img2dataset layout.

        Each sample has members ``{key}.jpg``, ``{key}.txt`` (the caption) and ``{key}.json``
        (img2dataset metadata plus our ``attributes``). Headers use a fixed mtime/owner, so shards
        are byte-identical across runs.
        """
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        paths = []
        for shard, first in enumerate(range(start, start + n, shard_size)):
            path = root / f"{shard:05d}.tar"
            tmp = path.with_suffix(".tar.tmp")
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for s in self.samples(min(shard_size, start + n - first), first):
                    meta = {
                        "url": f"toyworld://{self.seed}/{int(s.key)}",
                        "key": s.key,
                        "status": "success",
                        "error_message": None,
                        "caption": s.caption,
                        "width": s.image.width,
                        "height": s.image.height,
                        "original_width": s.image.width,
                        "original_height": s.image.height,
                        "attributes": s.attributes,
                    }
                    members = {
                        "jpg": _jpeg_bytes(s.image),
                        "txt": s.caption.encode("utf-8"),
                        "json": json.dumps(meta).encode("utf-8"),
                    }
                    for ext, data in members.items():
                        info = tarfile.TarInfo(f"{s.key}.{ext}")
                        info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, io.BytesIO(data))
            os.replace(tmp, path)
            paths.append(path)
        return paths

    def to_hf_dataset(self, n: int, start: int = 0) -> datasets.Dataset:
        """An in-memory ``datasets.Dataset``: ``image``, ``caption``, ``key`` and one column per label."""
        import datasets

        columns: dict[str, list[Any]] = {"image": [], "caption": [], "key": [], **{a: [] for a in ATTRIBUTES}}
        for s in self.samples(n, start):
            columns["image"].append(s.image)
            columns["caption"].append(s.caption)
            columns["key"].append(s.key)
            for a in ATTRIBUTES:
                columns[a].append(s.attributes[a])
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "caption": datasets.Value("string"),
                "key": datasets.Value("string"),
                **{a: datasets.Value("int64" if a == "count" else "string") for a in ATTRIBUTES},
            }
        )
        return datasets.Dataset.from_dict(columns, features=features)
