"""The toy world: seeded synthetic scenes with known attributes (:mod:`.world`) and the tiny
"pretrained" models built on them for the offline ``tiny`` presets (:mod:`.models`).

Every package reads its generated data and tiny models from here, so none of them imports another
package of the pipeline for test data."""

from genhancer.toyworld.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    NO_TEXT,
    ORIENTATIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    WORDS,
    Scene,
    Shape,
    ToySample,
    ToyWorld,
    attributes,
    caption,
    caption_words,
    render,
    vocabulary,
)

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLORS",
    "NO_TEXT",
    "ORIENTATIONS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "Shape",
    "ToySample",
    "ToyWorld",
    "WORDS",
    "attributes",
    "caption",
    "caption_words",
    "render",
    "vocabulary",
]
