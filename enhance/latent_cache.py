"""Pre-encoded VAE posteriors: encode each training image once, then train without the VAE.

The VAE is frozen, so its forward pass in every step is pure overhead (it is the largest single
cost of a stage-1 step at 224 px). A cache stores, for every readable image of the source and each
of ``crops`` fixed crops, the crop box and the VAE posterior (mean, log-variance) of that crop.
Training then reads the *original* image (the tower still needs the crop's pixels), picks one of
the stored crops per (epoch, image) and samples the latent from the stored posterior with the same
noise draw the VAE would have made (:func:`enhance.model.sample_posterior`).

Trade-off (documented in README): on-the-fly training sees a fresh RandomResizedCrop every epoch;
a cached run cycles through ``crops`` crops drawn once from the same distribution. The paper's
recipe is one epoch of CC3M, where every image is seen once and the two are the same thing.

Layout of a cache folder::

    spec.json                what it is built from, written before the first shard
    manifest.json            spec, shard list, counts -- written LAST (marks the cache finished)
    shard-00000.safetensors  mean, logvar [n, crops, C, h, w]; boxes [n, crops, 4]; sizes [n, 2];
                             metadata "uids": the source uids of the n rows, in order

Shards are written atomically (temp file, then rename) and hold a fixed, deterministic range of
the source, so an interrupted build resumes by skipping the shards already on disk. With several
processes, rank ``r`` builds shards ``r, r + world, ...`` and the main process writes the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from enhance.data.sources import DEFAULT_MAX_PIXELS, ItemRef, Source, UnreadableImage, decode_image
from enhance.data.transforms import PairTransform, random_resized_crop_box
from enhance.model import encode_posterior
from genhancer.runtime.checkpoint import atomic_write_text
from genhancer.runtime.errors import UserError
from genhancer.runtime.seeding import derive_seed

log = logging.getLogger("enhance")

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEC_FILE = "spec.json"
CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# --- what a cache is valid for -------------------------------------------------------------------


def cache_spec(cfg: Any, image_size: int) -> dict[str, Any]:
    """Everything that changes the cached tensors; a run refuses a cache whose spec differs."""
    d, v, c = cfg.data, cfg.method.vae, cfg.latent_cache
    source: dict[str, Any] = {"kind": d.source, "path": d.path}
    if d.source == "hf":
        source.update(split=d.split, image_column=d.image_column)
    if d.source == "toyworld":
        source.update(size=d.toyworld_size, seed=d.toyworld_seed)
    return {
        "format": FORMAT_VERSION,
        "source": source,
        "vae": {"name_or_path": v.name_or_path, "subfolder": v.subfolder},
        "resolution": image_size,
        "crop_scale": [float(x) for x in d.crop_scale],
        "crop_ratio": [3 / 4, 4 / 3],
        "crops": c.crops,
        "dtype": c.dtype,
        "seed": c.seed,
    }


def _spec_differences(found: dict, wanted: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(found) | set(wanted)):
        a, b = found.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cache has {a!r}, run wants {b!r}")
    return out


def crop_boxes(
    uid: str, width: int, height: int, crops: int, seed: int, scale: tuple[float, float]
) -> list[tuple[int, int, int, int]]:
    """The ``crops`` fixed RandomResizedCrop boxes of one image (a pure function of its uid)."""
    return [
        random_resized_crop_box(
            width, height, random.Random(derive_seed("latent-cache", seed, uid, k)), scale
        )
        for k in range(crops)
    ]


# --- building --------------------------------------------------------------------------------------


def _all_items(source: Source) -> Iterator[ItemRef]:
    """Every item of the source once, in its fixed (unshuffled) order."""
    for segment in source.segments(0, 0, 0, 1, False):
        yield from segment.items(0)


def _source_size(source: Source) -> int:
    return sum(segment.count() for segment in source.segments(0, 0, 0, 1, False))


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def build_shards(
    codec: Any,
    source: Source,
    out_dir: str | os.PathLike,
    spec: dict[str, Any],
    *,
    shard_size: int = 256,
    batch_size: int = 64,
    workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """Encode this rank's shards of ``source`` into ``out_dir`` (skipping shards already there).
    Returns (shards, items) of the whole cache; once every rank is done, the main process calls
    :func:`finish_latent_cache` with them."""
    from tqdm.auto import tqdm

    if shard_size < 1 or batch_size < 1:
        raise UserError(
            f"latent_cache.shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, spec)
    writer = _ShardWriter(
        codec,
        PairTransform(spec["resolution"], (0.5,) * 3, (0.5,) * 3, scale=tuple(spec["crop_scale"])),
        spec["crops"],
        spec["seed"],
        CACHE_DTYPES[spec["dtype"]],
        max_pixels or DEFAULT_MAX_PIXELS,
        batch_size,
    )
    total = _source_size(source)
    num_shards = max(1, -(-total // shard_size))
    mine = [i for i in range(num_shards) if i % world_size == rank]
    todo = [i for i in mine if not (out / _shard_name(i)).is_file()]
    if len(todo) < len(mine):
        log.info(
            "latent cache: %d of this rank's %d shards already built, resuming",
            len(mine) - len(todo),
            len(mine),
        )
    bar = tqdm(
        total=sum(min(shard_size, total - i * shard_size) for i in todo),
        desc=f"latent cache (rank {rank})",
        unit="img",
        disable=not progress,
    )
    items, cursor = _all_items(source), 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for index in todo:
            start, stop = index * shard_size, min(total, (index + 1) * shard_size)
            while cursor < start:  # items of shards built earlier or by other ranks: not fetched
                next(items)
                cursor += 1
            refs = [next(items) for _ in range(start, stop)]
            cursor = stop
            writer.write(out / _shard_name(index), refs, pool)
            bar.update(len(refs))
    bar.close()
    return num_shards, total


def _claim(out: Path, spec: dict[str, Any]) -> None:
    """Record the spec before the first shard, so a resumed build never mixes two setups."""
    f = out / SPEC_FILE
    if f.is_file():
        check_spec({"spec": json.loads(f.read_text())}, spec, out)
        return
    atomic_write_text(f, json.dumps(spec, indent=2))


def build_latent_cache(
    codec: Any, source: Source, out_dir: str | os.PathLike, spec: dict[str, Any], **kw: Any
) -> dict:
    """Single-process build (or reuse, when ``out_dir`` holds a finished cache of the same spec)."""
    existing = read_manifest(out_dir)
    if existing is not None:
        check_spec(existing, spec, Path(out_dir))
        return existing
    num_shards, total = build_shards(codec, source, out_dir, spec, **kw)
    return finish_latent_cache(Path(out_dir), spec, num_shards, total)


@dataclass
class _ShardWriter:
    codec: Any
    transform: PairTransform
    crops: int
    seed: int
    dtype: torch.dtype
    max_pixels: int
    batch_size: int

    def write(self, path: Path, refs: list[ItemRef], pool: ThreadPoolExecutor) -> None:
        """Fetch (sequentially: a tar handle is not thread-safe), decode and crop (threads), encode
        (batched), then write the shard atomically."""

        fetched = []
        for ref in refs:
            try:
                fetched.append((ref.uid, ref.fetch()[1]))
            except UnreadableImage as exc:
                log.warning("latent cache: skipping unreadable image %s: %s", ref.uid, exc)
        kept = [p for p in pool.map(self._prepare, fetched) if p is not None]
        kept_uids = {uid for uid, _, _, _ in kept}
        skipped = [ref.uid for ref in refs if ref.uid not in kept_uids]
        flat = [crop for _, _, _, stack in kept for crop in stack]  # n * crops uint8 HWC crops, in order
        device = next(self.codec.vae.parameters()).device
        means, logvars = [], []
        for i in range(0, len(flat), self.batch_size):
            # the on-the-fly transform's arithmetic, op for op, so a float32 cache matches it exactly
            unit = np.stack(flat[i : i + self.batch_size]).transpose(0, 3, 1, 2).astype(
                np.float32
            ) / np.float32(255.0)
            pixels = torch.from_numpy(unit * np.float32(2.0) - np.float32(1.0)).to(device)
            mean, logvar = encode_posterior(self.codec, pixels)
            means.append(mean.to("cpu", self.dtype))
            logvars.append(logvar.to("cpu", self.dtype))
        n = len(kept)
        if n:
            shape = (n, self.crops, *means[0].shape[1:])
            tensors = {"mean": torch.cat(means).reshape(shape), "logvar": torch.cat(logvars).reshape(shape)}
        else:
            tensors = {"mean": torch.empty(0, dtype=self.dtype), "logvar": torch.empty(0, dtype=self.dtype)}
        boxes = [box for _, _, item_boxes, _ in kept for box in item_boxes]
        tensors["boxes"] = torch.tensor(boxes, dtype=torch.int32).reshape(n, self.crops, 4)
        tensors["sizes"] = torch.tensor([size for _, size, _, _ in kept], dtype=torch.int32).reshape(n, 2)
        meta = {"uids": json.dumps([uid for uid, _, _, _ in kept]), "skipped_uids": json.dumps(skipped)}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)

    def _prepare(self, item: tuple[str, Any]) -> tuple[str, tuple[int, int], list, list[np.ndarray]] | None:
        """Decode one image and cut its crops (runs in a thread: PIL releases the GIL)."""
        uid, data = item
        try:
            image = decode_image(data, self.max_pixels)
        except UnreadableImage as exc:
            log.warning("latent cache: skipping unreadable image %s: %s", uid, exc)
            return None
        boxes = crop_boxes(uid, image.width, image.height, self.crops, self.seed, self.transform.scale)
        res = self.transform.resolution
        crops = [
            np.asarray(image.resize((res, res), Image.BICUBIC, box=box), dtype=np.uint8) for box in boxes
        ]
        return uid, (image.width, image.height), boxes, crops


def finish_latent_cache(out: Path, spec: dict[str, Any], num_shards: int, total: int) -> dict[str, Any]:
    """Check every shard is on disk, then write the manifest (atomically, last)."""
    shards, images, skipped = [], 0, 0
    for index in range(num_shards):
        path = out / _shard_name(index)
        if not path.is_file():
            raise UserError(f"latent cache {out}: {path.name} is missing; run the build again to finish it")
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        n = len(json.loads(meta["uids"]))
        shards.append({"file": path.name, "images": n})
        images += n
        skipped += len(json.loads(meta["skipped_uids"]))
    manifest = {"spec": spec, "shards": shards, "images": images, "skipped": skipped, "source_items": total}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    for stale in out.glob(".*.tmp"):  # left by a build that was killed mid-write
        stale.unlink(missing_ok=True)
    log.info(
        "latent cache %s: %d images x %d crops, %d unreadable skipped", out, images, spec["crops"], skipped
    )
    return manifest


# --- reading ---------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a finished cache, or None when the folder holds no finished cache."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"latent cache manifest {f} is unreadable ({exc}); delete it and rebuild") from None


def check_spec(manifest: dict, spec: dict, path: Path) -> None:
    diffs = _spec_differences(manifest.get("spec", {}), spec)
    if diffs:
        raise UserError(
            f"latent cache {path} was built for a different setup ({'; '.join(diffs)}); "
            "point latent_cache.path at a new folder or rebuild this one"
        )


@dataclass(frozen=True)
class CacheEntry:
    size: tuple[int, int]  # (width, height) of the source image when cached
    boxes: torch.Tensor  # int32 [crops, 4]
    mean: torch.Tensor  # [crops, C, h, w]
    logvar: torch.Tensor


def uid_hash(uid: str) -> int:
    """64-bit key of a uid in the in-memory index (a dict of millions of str would cost ~0.5 GB in
    every DataLoader worker; two numpy arrays cost 16 bytes an image)."""
    return int.from_bytes(hashlib.blake2b(uid.encode("utf-8"), digest_size=8).digest(), "little")


class LatentCache:
    """Random access to a finished cache by source uid. Shards are memory-mapped lazily per
    process (at most ``max_open`` at a time), so the object pickles cheaply into DataLoader workers."""

    def __init__(self, path: str | os.PathLike, spec: dict | None = None, max_open: int = 64):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise UserError(
                f"no finished latent cache in {self.path} (manifest.json missing); build it first"
            )
        if spec is not None:
            check_spec(manifest, spec, self.path)
        self.manifest = manifest
        self.crops = int(manifest["spec"]["crops"])
        self.max_open = max(1, max_open)
        self._keys: np.ndarray | None = None  # sorted uint64 uid hashes
        self._where: np.ndarray | None = None  # int64 (shard << 32 | row), -1: unreadable at build
        self._files: OrderedDict[int, Any] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": OrderedDict()}

    def __len__(self) -> int:
        return int(self.manifest["images"])

    def _load_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            keys, where = [], []
            for s, shard in enumerate(self.manifest["shards"]):
                with safe_open(self.path / shard["file"], "pt") as f:
                    meta = f.metadata()
                for row, uid in enumerate(json.loads(meta["uids"])):
                    keys.append(uid_hash(uid))
                    where.append((s << 32) | row)
                for uid in json.loads(meta["skipped_uids"]):
                    keys.append(uid_hash(uid))
                    where.append(-1)
            k, w = np.asarray(keys, dtype=np.uint64), np.asarray(where, dtype=np.int64)
            order = np.argsort(k, kind="stable")
            k, w = k[order], w[order]
            if len(k) > 1 and bool((k[1:] == k[:-1]).any()):
                raise UserError(f"latent cache {self.path}: two image uids share a 64-bit hash; rebuild it")
            self._keys, self._where = k, w
        return self._keys, self._where

    def _lookup(self, uid: str) -> int | None:
        keys, where = self._load_index()
        h = np.uint64(uid_hash(uid))
        i = int(np.searchsorted(keys, h))
        return int(where[i]) if i < len(keys) and keys[i] == h else None

    def _file(self, shard: int):
        if shard in self._files:
            self._files.move_to_end(shard)
        else:
            if len(self._files) >= self.max_open:
                self._files.popitem(last=False)
            self._files[shard] = safe_open(self.path / self.manifest["shards"][shard]["file"], "pt")
        return self._files[shard]

    def __contains__(self, uid: str) -> bool:
        where = self._lookup(uid)
        return where is not None and where >= 0

    def get(self, uid: str) -> CacheEntry:
        where = self._lookup(uid)
        if where == -1:
            raise UnreadableImage(f"{uid} was unreadable when the latent cache {self.path} was built")
        if where is None:
            raise UserError(
                f"image {uid!r} is not in the latent cache {self.path} (the data changed since it was "
                "built?); rebuild the cache"
            )
        f, row = self._file(where >> 32), where & 0xFFFFFFFF
        width, height = (int(x) for x in f.get_slice("sizes")[row])
        return CacheEntry(
            (width, height), f.get_slice("boxes")[row], f.get_slice("mean")[row], f.get_slice("logvar")[row]
        )


class CachedCropTransform:
    """``(pil_image, rng, uid) -> {"pixel_values", "latent_mean", "latent_logvar"}``: the tower view
    of one of the image's cached crops (chosen by ``rng``), with that crop's stored posterior."""

    takes_uid = True

    def __init__(self, view: PairTransform, cache: LatentCache):
        self.view, self.cache = view, cache
        self.resolution = view.resolution

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        spec = self.cache.manifest["spec"]
        shard = self.cache._file(0) if self.cache.manifest["shards"] else None
        latent = tuple(shard.get_slice("mean").get_shape()[2:]) if shard is not None else ()
        r = spec["resolution"]
        return {"pixel_values": (3, r, r), "latent_mean": latent, "latent_logvar": latent}

    def __call__(self, img: Image.Image, rng: random.Random, uid: str) -> dict[str, torch.Tensor]:
        entry = self.cache.get(uid)
        if entry.size != img.size:
            raise UserError(
                f"image {uid!r} is {img.size[0]}x{img.size[1]} but was {entry.size[0]}x{entry.size[1]} when the "
                f"latent cache {self.cache.path} was built; rebuild the cache"
            )
        k = rng.randrange(self.cache.crops)
        box = tuple(int(x) for x in entry.boxes[k])
        res = self.view.resolution
        img = img if img.mode == "RGB" else img.convert("RGB")
        crop = img.resize((res, res), Image.BICUBIC, box=box)
        return {
            "pixel_values": self.view.normalise(crop),
            "latent_mean": entry.mean[k].float(),
            "latent_logvar": entry.logvar[k].float(),
        }

    def __repr__(self) -> str:
        return (
            f"CachedCropTransform({self.cache.path}, crops={self.cache.crops}, resolution={self.resolution})"
        )
