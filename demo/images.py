"""Opening uploads safely, and the small image helpers the views share.

Uploads come from anyone who can reach the page, so an image is checked by its header (size on
disk, width x height) before its pixels are decoded: a decompression bomb is refused, not
loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from enhance.preview import to_uint8
from genhancer.runtime.errors import UserError


class BadImage(UserError):
    """An upload that is missing, unreadable or too large (the text says which)."""


def open_image(
    source: str | Path | Image.Image | np.ndarray | None,
    what: str = "image",
    max_pixels: int = 25_000_000,
    max_bytes: int | None = None,
) -> Image.Image:
    """An RGB copy of ``source`` (a file path, PIL image or HxWx3 array), within the limits."""
    if source is None or (isinstance(source, str) and not source):
        raise BadImage(f"{what}: no image given (upload one or pick an example)")
    if isinstance(source, np.ndarray):
        source = Image.fromarray(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, what, max_pixels)
        return source.convert("RGB")
    path = Path(source)
    if not path.is_file():
        raise BadImage(f"{what}: file not found: {path.name}")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise BadImage(
            f"{what}: the file is {path.stat().st_size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB"
        )
    try:
        with Image.open(path) as im:
            _check_pixels(im.size, what, max_pixels)  # header only: nothing decoded yet
            return im.convert("RGB")
    except BadImage:
        raise
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise BadImage(f"{what}: not a readable image ({type(exc).__name__})") from None


def _check_pixels(size: tuple[int, int], what: str, max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise BadImage(f"{what}: {w}x{h} pixels is more than the demo's limit of {max_pixels:,}")
    if w < 1 or h < 1:
        raise BadImage(f"{what}: empty image")


def square_view(image: Image.Image, size: int = 256) -> Image.Image:
    """Centre crop to a square and resize: the region a CLIP processor keeps, at display size."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def to_pil(pixels) -> Image.Image:
    """A ``[3, H, W]`` tensor in [-1, 1] as a PIL image."""
    return Image.fromarray(to_uint8(pixels[None])[0])


def enlarge(image: Image.Image | None, size: int = 256) -> Image.Image | None:
    """Blow a small image (a 32-64 px reconstruction) up for display, keeping its pixels sharp."""
    if image is None or max(image.size) >= size:
        return image
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
