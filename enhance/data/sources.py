"""Where training images come from: tar shards, image folders, HF datasets or the toy world.

A source only answers "which items does rank r see in epoch e, in what order" as a list of
segments (one per shard, or one for an index-based source), each knowing its item count. That is
what lets :class:`enhance.data.loading.ImageStream` fast-forward to a stored position by counting
instead of decoding. Items are read lazily, so workers and resumed runs skip items for free.
Decoding lives here too, with every failure turned into :class:`UnreadableImage`.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
import re
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from genhancer.runtime.errors import UserError
from genhancer.runtime.seeding import derive_seed
from genhancer.toyworld.world import ToyWorld, render

log = logging.getLogger(__name__)

SOURCE_KINDS: tuple[str, ...] = ("webdataset", "imagefolder", "hf", "toyworld")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Tar members tried, in order, as a sample's image.
WDS_IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
#: Larger images are skipped (PIL's own default bomb limit).
DEFAULT_MAX_PIXELS = 89_478_485

ImageData = bytes | Image.Image


class UnreadableImage(Exception):
    """An item whose image cannot be read or decoded; the stream skips and counts it."""


# ------------------------------------------------------------------------------------------ decoding


def decode_image(data: ImageData, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode to a fully loaded RGB image, or raise :class:`UnreadableImage`.

    Truncated, empty or corrupt files and anything above ``max_pixels`` (checked from the header,
    before decoding, so a decompression bomb costs nothing) are rejected. PIL raises a zoo of
    exception types on malformed input, hence the broad catch.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise UnreadableImage(f"{img.width}x{img.height} exceeds max_pixels={max_pixels}")
            img.load()
            if img.mode == "RGB":
                return img
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")
    except UnreadableImage:
        raise
    except Exception as exc:  # see docstring
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------------------------------ source protocol


@dataclass(frozen=True)
class ItemRef:
    """A not-yet-read item: ``uid`` names it stably (seeds its augmentation), ``fetch`` reads it."""

    uid: str
    fetch: Callable[[], tuple[str, ImageData]]  # -> (key, image bytes or PIL image)


class Segment(Protocol):
    def count(self) -> int:
        """Number of this rank's items in the segment."""

    def items(self, skip: int) -> Iterator[ItemRef]:
        """This rank's items in order, after the first ``skip``."""


class Source(Protocol):
    kind: str
    path: str

    def segments(self, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool) -> Iterator[Segment]:
        """This rank's segments for ``epoch``; a pure function of the arguments."""


# -------------------------------------------------------------------------------- index-based sources


class _IndexSegment:
    def __init__(self, indices: np.ndarray, ref: Callable[[int], ItemRef]):
        self._indices, self._ref = indices, ref

    def count(self) -> int:
        return len(self._indices)

    def items(self, skip: int) -> Iterator[ItemRef]:
        for i in self._indices[skip:]:
            yield self._ref(int(i))


class IndexSource:
    """Base for sources addressable by index: epoch order is a seeded permutation; rank ``r`` takes
    every ``world_size``-th item of it starting at ``r``."""

    kind = "index"
    path = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def fetch(self, index: int) -> tuple[str, ImageData]:
        raise NotImplementedError

    def _ref(self, index: int) -> ItemRef:
        return ItemRef(str(index), partial(self.fetch, index))

    def segments(self, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool) -> Iterator[Segment]:
        n = len(self)
        if shuffle:  # RandomState's stream is frozen across numpy versions, and fast for millions
            order = np.random.RandomState(derive_seed("order", seed, epoch) % 2**32).permutation(n)
        else:
            order = np.arange(n)
        yield _IndexSegment(order[rank::world_size], self._ref)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, n={len(self)})"


class ImageFolderSource(IndexSource):
    """Every image file under a directory (recursive, hidden entries ignored), sorted by path.

    Keys are relative paths without the extension."""

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike):
        self.path = str(root)
        base = Path(root)
        files = []
        for p in base.rglob("*"):
            rel = p.relative_to(base)
            if any(part.startswith(".") for part in rel.parts) or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if p.is_file():
                files.append(rel.as_posix())
        self.files = sorted(files)

    def __len__(self) -> int:
        return len(self.files)

    def _ref(self, index: int) -> ItemRef:
        # the relative path, not the index: a latent cache built before files were added must not
        # pair stored latents with whichever image now sits at that index
        return ItemRef(self.files[index], partial(self.fetch, index))

    def fetch(self, index: int) -> tuple[str, ImageData]:
        rel = self.files[index]
        key = rel.rsplit(".", 1)[0]
        try:
            return key, (Path(self.path) / rel).read_bytes()
        except OSError as exc:
            raise UnreadableImage(f"{key}: {exc}") from exc


class HFSource(IndexSource):
    """A ``datasets.Dataset`` with an image column (decoded by us, so corrupt rows are skippable).

    Keys come from a ``key`` column when there is one, else the zero-padded row index."""

    kind = "hf"

    def __init__(self, dataset: Any, image_column: str = "image", path: str = ""):
        import datasets

        self.path = path
        self.image_column = image_column
        self.has_key = "key" in dataset.column_names
        columns = [image_column] + (["key"] if self.has_key and image_column != "key" else [])
        dataset = dataset.select_columns(columns)
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def fetch(self, index: int) -> tuple[str, ImageData]:
        try:
            row = self.dataset[index]
        except Exception as exc:  # a corrupt arrow row must not stop training
            raise UnreadableImage(f"row {index}: {exc}") from exc
        key = str(row["key"]) if self.has_key else f"{index:09d}"
        value = row[self.image_column]
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str):
            try:
                value = Path(value).read_bytes()
            except OSError as exc:
                raise UnreadableImage(f"{key}: {exc}") from exc
        if not isinstance(value, (bytes, Image.Image)):
            raise UnreadableImage(f"{key}: column {self.image_column!r} holds {type(value).__name__}")
        return key, value


class ToyWorldSource(IndexSource):
    """``n`` toy-world images generated on the fly (keys as :meth:`ToyWorld.key`)."""

    kind = "toyworld"

    def __init__(self, n: int, seed: int = 0, image_size: int = 64):
        self.world = ToyWorld(seed=seed, image_size=image_size)
        self.n = n
        self.path = f"toyworld:seed={seed},n={n},size={image_size}"

    def __len__(self) -> int:
        return self.n

    def fetch(self, index: int) -> tuple[str, ImageData]:
        return self.world.key(index), render(self.world.scene(index), self.world.image_size)


# ----------------------------------------------------------------------------------- tar shards


_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key/extension split


def _scan_shard(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """``[(key, {ext: (data offset, size)})]`` in tar order, from headers only (no data read).

    A damaged shard yields the samples whose headers were read before the damage, the same ones on
    every pass, so counts stay consistent.
    """
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            while True:
                try:
                    member = tar.next()
                except (tarfile.TarError, OSError) as exc:
                    log.warning("tar shard %s is damaged after %d samples: %s", path, len(groups), exc)
                    break
                if member is None:
                    break
                match = _MEMBER_RE.match(member.name)
                if member.isfile() and match:
                    groups.setdefault(match.group(1), {})[match.group(2).lower()] = (
                        member.offset_data,
                        member.size,
                    )
    except (tarfile.TarError, OSError) as exc:
        log.warning("cannot read tar shard %s: %s", path, exc)
    return list(groups.items())


class _ShardSegment:
    """One shard; ``stride``/``phase`` select this rank's items when ranks share shards."""

    def __init__(
        self, source: WebDatasetSource, shard: str, order_seed: int | None, base: int, stride: int, rank: int
    ):
        self.source, self.shard, self.order_seed = source, shard, order_seed
        self.base, self.stride, self.rank = base, stride, rank

    def _mine(self) -> list[int]:
        n = self.source.shard_size(self.shard)
        order = list(range(n))
        if self.order_seed is not None:
            random.Random(self.order_seed).shuffle(order)
        if self.stride == 1:
            return order
        return [k for j, k in enumerate(order) if (self.base + j) % self.stride == self.rank]

    def count(self) -> int:
        n = self.source.shard_size(self.shard)
        if self.stride == 1:
            return n
        first = (self.rank - self.base) % self.stride  # first j in [0, n) with (base + j) % stride == rank
        return max(0, -(-(n - first) // self.stride))

    def items(self, skip: int) -> Iterator[ItemRef]:
        mine = self._mine()[skip:]
        if not mine:
            return
        index = self.source.shard_index(self.shard)
        name = Path(self.shard).name
        with open(self.shard, "rb") as f:

            def fetch(key: str, members: dict[str, tuple[int, int]]) -> tuple[str, ImageData]:
                ext = next((e for e in WDS_IMAGE_EXTS if e in members), None)
                if ext is None:
                    raise UnreadableImage(f"{name}/{key}: no image member ({', '.join(sorted(members))})")
                offset, size = members[ext]
                try:
                    f.seek(offset)
                    data = f.read(size)
                except OSError as exc:
                    raise UnreadableImage(f"{name}/{key}: {exc}") from exc
                if len(data) != size:
                    raise UnreadableImage(f"{name}/{key}: truncated tar member")
                return key, data

            for k in mine:
                key, members = index[k]
                yield ItemRef(f"{name}/{key}", partial(fetch, key, members))


class WebDatasetSource:
    """Local tar shards in the img2dataset layout (``{key}.jpg`` + ``.txt`` + ``.json``).

    Epoch ``e`` visits the shards in a seeded order. With at least ``world_size`` shards, rank
    ``r`` takes every ``world_size``-th shard of that order; with fewer, every rank walks all
    shards and takes every ``world_size``-th sample. Samples inside a shard are visited in a
    seeded order too (random access by header offsets), which decorrelates consecutive batches.
    """

    kind = "webdataset"

    def __init__(self, shards: list[str], path: str = ""):
        self.shards = list(shards)
        self.path = path or (shards[0] if shards else "")
        self._sizes: dict[str, int] = {}
        self._index: tuple[str, list] | None = None  # one-entry cache: the shard being read

    def shard_index(self, shard: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        if self._index is None or self._index[0] != shard:
            self._index = (shard, _scan_shard(shard))
            self._sizes[shard] = len(self._index[1])
        return self._index[1]

    def shard_size(self, shard: str) -> int:
        if shard not in self._sizes:
            self.shard_index(shard)
        return self._sizes[shard]

    def segments(self, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool) -> Iterator[Segment]:
        order = list(self.shards)
        if shuffle:
            random.Random(derive_seed("shards", seed, epoch)).shuffle(order)

        def item_seed(shard: str) -> int | None:
            return derive_seed("shard-items", seed, epoch, Path(shard).name) if shuffle else None

        if len(order) >= world_size:
            for shard in order[rank::world_size]:
                yield _ShardSegment(self, shard, item_seed(shard), 0, 1, 0)
            return
        base = 0
        for shard in order:
            yield _ShardSegment(self, shard, item_seed(shard), base, world_size, rank)
            base += self.shard_size(shard)

    def __repr__(self) -> str:
        return f"WebDatasetSource({self.path!r}, shards={len(self.shards)})"


# -------------------------------------------------------------------------------------- building


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``{00000..00331}`` (zero padding kept) and ``{a,b}``."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") and len(a) > 1 else 0
        step = 1 if int(b) >= int(a) else -1
        options = [f"{i:0{width}d}" for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + out for out in expand_braces(tail)]
    return [out for opt in options for out in expand_braces(head + opt + tail)]


def resolve_shards(path: str) -> list[str]:
    """Tar shard paths from a directory, a ``.tar`` file, or glob/brace patterns joined by ``::``."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", path) or path.startswith("pipe:"):
        raise UserError(
            f"webdataset path {path!r}: only local tar shards are supported; download them first "
            "(e.g. with img2dataset) and pass a directory, a glob or a brace pattern"
        )
    shards: list[str] = []
    missing: list[str] = []
    for part in filter(None, path.split("::")):
        part = os.path.expanduser(part)
        if os.path.isdir(part):
            found = sorted(str(p) for p in Path(part).rglob("*.tar"))
            if not found:
                raise UserError(f"webdataset path {part!r} is a directory without .tar shards")
            shards.extend(found)
            continue
        for name in expand_braces(part):
            if glob.has_magic(name):
                shards.extend(sorted(glob.glob(name)))
            elif os.path.isfile(name):
                shards.append(name)
            else:
                missing.append(name)
    if missing:
        examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(
            f"webdataset path {path!r}: {len(missing)} listed shard(s) do not exist ({examples}); "
            "fix the pattern, or pass a glob or the directory to use the shards that exist"
        )
    if not shards:
        raise UserError(f"webdataset path {path!r} matches no .tar shards; check the path or pattern")
    return list(dict.fromkeys(shards))


def _load_hf(path: str, split: str) -> Any:
    import datasets

    local = Path(os.path.expanduser(path))
    try:
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise UserError(
                        f"HF dataset {path!r} has no split {split!r}; available: {', '.join(loaded)}"
                    )
                loaded = loaded[split]
            return loaded
        if path.startswith(("/", "./", "../", "~")) and not local.exists():
            raise UserError(f"HF dataset path {path!r} does not exist")
        return datasets.load_dataset(str(local) if local.exists() else path, split=split)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs the path
        raise UserError(
            f"cannot load HF dataset {path!r} (split {split!r}): {type(exc).__name__}: {exc}. "
            "Pass a directory written by Dataset.save_to_disk, a local data folder, or a hub id "
            "that is cached or reachable"
        ) from exc


def build_source(
    kind: str,
    path: str = "",
    image_column: str = "image",
    split: str = "train",
    *,
    toy_n: int = 1024,
    toy_seed: int = 0,
    toy_image_size: int = 64,
) -> Source:
    """A training image source, validated up front so bad paths fail before any model loads.

    ``kind`` is one of :data:`SOURCE_KINDS`: ``webdataset`` (``path``: directory, ``.tar`` file,
    glob or brace pattern, several joined by ``::``), ``imagefolder`` (``path``: directory searched
    recursively), ``hf`` (``path``: a ``save_to_disk`` directory, local data folder or hub id;
    ``image_column`` and ``split`` apply), ``toyworld`` (``path`` ignored; ``toy_n`` images from
    ``ToyWorld(toy_seed, toy_image_size)``). Raises :class:`UserError` naming the path otherwise.
    """
    if kind == "webdataset":
        source = WebDatasetSource(resolve_shards(path), path)
        for shard in source.shards:
            if any(ext in members for _, members in source.shard_index(shard) for ext in WDS_IMAGE_EXTS):
                return source
        raise UserError(
            f"webdataset path {path!r}: no sample in {len(source.shards)} shard(s) has an image member "
            f"({', '.join('.' + e for e in WDS_IMAGE_EXTS)})"
        )
    if kind == "imagefolder":
        root = Path(os.path.expanduser(path)) if path else None
        if root is None or not root.exists():
            raise UserError(f"image folder {path!r} does not exist")
        if not root.is_dir():
            raise UserError(f"image folder {path!r} is not a directory")
        folder = ImageFolderSource(root)
        if len(folder) == 0:
            raise UserError(
                f"image folder {path!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
            )
        return folder
    if kind == "hf":
        if not path:
            raise UserError("HF dataset path is empty; pass a save_to_disk directory or a hub id")
        dataset = _load_hf(path, split)
        if image_column not in dataset.column_names:
            raise UserError(
                f"HF dataset {path!r} has no column {image_column!r}; columns: {', '.join(dataset.column_names)}. "
                "Set the image column option"
            )
        if len(dataset) == 0:
            raise UserError(f"HF dataset {path!r} (split {split!r}) has no rows")
        return HFSource(dataset, image_column, path)
    if kind == "toyworld":
        if toy_n < 1 or toy_image_size < 16:
            raise UserError(
                f"toyworld source needs n >= 1 and image_size >= 16, got n={toy_n}, image_size={toy_image_size}"
            )
        return ToyWorldSource(toy_n, toy_seed, toy_image_size)
    raise UserError(f"unknown data source kind {kind!r}; valid kinds: {', '.join(SOURCE_KINDS)}")
