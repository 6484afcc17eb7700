"""Data for GenHancer training: image sources and the resumable, seeded image stream.

The synthetic toy world the tiny presets train on lives in :mod:`genhancer.toyworld`."""

from enhance.data.loading import ImageStream, build_dataloader, collate
from enhance.data.sources import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SOURCE_KINDS,
    Source,
    UnreadableImage,
    build_source,
    decode_image,
    expand_braces,
    resolve_shards,
)
from enhance.data.transforms import CLIP_MEAN, CLIP_STD, PairTransform, make_transform
from genhancer.runtime.seeding import derive_seed

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
    "ImageStream",
    "PairTransform",
    "Source",
    "UnreadableImage",
    "build_dataloader",
    "build_source",
    "collate",
    "decode_image",
    "derive_seed",
    "expand_braces",
    "make_transform",
    "resolve_shards",
]
