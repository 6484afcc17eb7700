"""The training stream: endless, rank-sharded, exactly resumable, and tolerant of bad images.

Contract with the trainer (see :func:`build_dataloader`):

* Order is a pure function of ``(seed, epoch)``; rank ``r`` of ``world_size`` reads its own subset
  (see the sources). Augmentation of an item is seeded from ``(seed, epoch, item uid)``, so it does
  not depend on rank count, worker count or where the run was resumed. A replicated stream (every
  rank reads rank 0 of 1) adds ``augment_rank`` to that seed, so ranks crop the same image differently.
* A *position* counts the items this rank has consumed, unreadable ones included. Every element
  carries ``position`` = the position *after* it; a batch carries the max. Store it in the
  checkpoint and pass it back as ``start_position``: the new stream yields exactly what the
  uninterrupted one would have yielded next, pixel for pixel. Positions do not depend on batch size
  or worker count (both may change across a resume); they do depend on ``world_size`` and ``seed``.
* DataLoader workers: positions are cut into blocks of ``block_size`` consecutive positions and
  block ``b`` (counted from ``start_position``) goes to worker ``b % num_workers``. The DataLoader
  fetches batches from workers round-robin, so with ``block_size == batch_size`` batches arrive in
  stream order. For that to hold even when images are skipped, :func:`build_dataloader` makes the
  stream emit a marker element per unreadable item (``emit_skips``), which the collate function
  drops and counts: every batch then spans exactly ``batch_size`` positions (and may hold fewer,
  even zero, images).
* ``rank_blocks=B`` (elastic layout): instead of the source's own split, every rank walks the one
  global order, cut into blocks of ``B`` positions; global block ``g`` goes to rank
  ``g % world_size`` (the layout of ``llava_integration.data.LlavaStream``). A position still counts
  this rank's items, so after ``k`` blocks on every rank the ranks together consumed exactly the
  first ``k * B * world_size`` items: a checkpoint taken there resumes on any number of processes
  (``genhancer.runtime.resume.elastic_position``), no item seen twice or skipped. Each rank reads
  only its own items; the others are passed over by index, without being fetched.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from enhance.data.sources import (
    DEFAULT_MAX_PIXELS,
    SOURCE_KINDS,
    Source,
    UnreadableImage,
    build_source,
    decode_image,
)
from genhancer.runtime.errors import UserError
from genhancer.runtime.seeding import derive_seed

__all__ = [
    "SOURCE_KINDS",
    "ImageStream",
    "build_dataloader",
    "build_source",
    "collate",
]

log = logging.getLogger(__name__)
_LOGGED_SKIPS = 10  # per iterator; later skips are logged at DEBUG

Transform = Callable[[Image.Image, random.Random], dict[str, torch.Tensor]]


class ImageStream(IterableDataset):
    """Yields ``{"pixel_values", "vae_pixels", "key", "position", "skipped", "epoch"}`` per image.

    ``skipped`` is the running number of unreadable items this iterator (this worker) has passed;
    with ``emit_skips`` each of them also yields ``{"key", "position", "skipped", "epoch",
    "unreadable": True}`` in its place. ``max_epochs=None`` streams forever.
    """

    def __init__(
        self,
        source: Source,
        transform: Transform,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_position: int = 0,
        max_epochs: int | None = None,
        shuffle: bool = True,
        block_size: int = 1,
        emit_skips: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        augment_rank: int = 0,
        rank_blocks: int = 0,
    ):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if rank_blocks and start_position % rank_blocks:
            raise ValueError(
                f"start_position {start_position} is not a multiple of rank_blocks {rank_blocks}"
            )
        if start_position < 0 or block_size < 1:
            raise ValueError(
                f"need start_position >= 0 and block_size >= 1, got {start_position}, {block_size}"
            )
        self.source, self.transform = source, transform
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start_position, self.max_epochs, self.shuffle = start_position, max_epochs, shuffle
        self.block_size, self.emit_skips, self.max_pixels = block_size, emit_skips, max_pixels
        # Replicated streams (every rank reads rank 0 of 1): crops still differ per rank.
        self.augment_rank = augment_rank
        self.rank_blocks = rank_blocks

    def configured(self, **changes: Any) -> ImageStream:
        """A shallow copy with some attributes replaced (e.g. ``start_position``)."""
        clone = copy.copy(self)
        for name, value in changes.items():
            if not hasattr(clone, name):
                raise AttributeError(f"ImageStream has no attribute {name!r}")
            setattr(clone, name, value)
        return clone

    def position_after(self, num_batches: int, batch_size: int) -> int:
        """Stream position after ``num_batches`` full batches from :func:`build_dataloader`."""
        return self.start_position + num_batches * batch_size

    def __repr__(self) -> str:
        return (
            f"ImageStream({self.source!r}, seed={self.seed}, rank={self.rank}/{self.world_size}, "
            f"start_position={self.start_position})"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        position, to_skip, skipped = self.start_position, self.start_position, 0
        # elastic layout: walk the global order (counted by ``walked``), keep this rank's blocks
        blocks, world = self.rank_blocks, self.world_size
        split = (0, 1) if blocks else (self.rank, world)
        walked = to_skip = self.start_position * world if blocks else self.start_position
        epoch = 0
        while self.max_epochs is None or epoch < self.max_epochs:
            epoch_items = mine = readable = 0
            for segment in self.source.segments(epoch, self.seed, *split, self.shuffle):
                n = segment.count()
                epoch_items += n
                if to_skip >= n:
                    to_skip -= n
                    continue
                refs, to_skip = segment.items(to_skip), 0
                for ref in refs:
                    if blocks:
                        walked += 1
                        global_block = (walked - 1) // blocks
                        if global_block % world != self.rank:
                            continue
                    position += 1
                    block = (position - 1 - self.start_position) // (blocks or self.block_size)
                    if block % num_workers != worker:
                        continue
                    mine += 1
                    key, error = ref.uid, None
                    try:
                        key, data = ref.fetch()
                        image = decode_image(data, self.max_pixels)
                        salt = (self.augment_rank,) if self.augment_rank else ()  # rank 0: as before
                        rng = random.Random(derive_seed("augment", self.seed, epoch, ref.uid, *salt))
                        if getattr(self.transform, "takes_uid", False):  # e.g. the latent-cache view
                            sample = self.transform(image, rng, ref.uid)
                        else:
                            sample = self.transform(image, rng)
                    except UnreadableImage as exc:
                        error = exc
                    meta = {"key": key, "position": position, "epoch": epoch}
                    if error is not None:
                        skipped += 1
                        level = logging.WARNING if skipped <= _LOGGED_SKIPS else logging.DEBUG
                        log.log(
                            level, "skipping unreadable image %s from %s: %s", key, self.source.path, error
                        )
                        if self.emit_skips:
                            yield {**meta, "skipped": skipped, "unreadable": True}
                        continue
                    readable += 1
                    yield {**sample, **meta, "skipped": skipped}
            if epoch_items == 0:
                raise UserError(
                    f"data source {self.source.path!r} gives rank {self.rank} of {self.world_size} no items; "
                    "use fewer processes or more data"
                )
            if mine and not readable:  # otherwise an all-bad source would spin forever
                raise UserError(
                    f"data source {self.source.path!r}: none of {mine} images read in epoch {epoch} "
                    "could be decoded; check the files"
                )
            epoch += 1


def collate(
    elements: list[dict[str, Any]],
    image_shape: tuple[int, ...] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Stack the per-image tensors, keep keys as a list, drop skip markers.

    Returns the stacked tensors ``[n, ...]`` (``pixel_values`` and ``vae_pixels``, or whatever the
    transform yields, e.g. ``latent_mean``/``latent_logvar`` from a latent cache), ``key`` (list of
    n str), ``position`` (int, stream position after the batch), ``skipped`` (int, unreadable items
    in this batch) and ``epoch`` (int). ``n`` may be 0 when every item was unreadable: the tensors
    then have shape ``[0, *shape]`` from ``shapes`` (the transform's ``output_shapes``), or
    ``[0, *image_shape]`` for ``pixel_values``/``vae_pixels`` without it.
    """
    images = [e for e in elements if not e.get("unreadable")]
    batch: dict[str, Any] = {}
    if images:
        for name, value in images[0].items():
            if isinstance(value, torch.Tensor):
                # numpy, not torch.stack: no intra-op thread pool to contend with (see transforms.py)
                batch[name] = torch.from_numpy(np.stack([e[name].numpy() for e in images]))
    else:
        empty = shapes or {name: image_shape or () for name in ("pixel_values", "vae_pixels")}
        for name, shape in empty.items():
            batch[name] = torch.empty((0, *shape))
    batch["key"] = [e["key"] for e in images]
    batch["position"] = max(e["position"] for e in elements)
    batch["skipped"] = len(elements) - len(images)
    batch["epoch"] = max(e["epoch"] for e in elements)
    return batch


def build_dataloader(
    stream: ImageStream,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader whose batches arrive in stream order for any ``num_workers``.

    Uses a copy of ``stream`` with ``block_size=batch_size`` and ``emit_skips=True`` (see the module
    docstring), and its own torch generator so creating it leaves the global RNG untouched.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if stream.rank_blocks and stream.rank_blocks != batch_size:
        raise ValueError(f"rank_blocks {stream.rank_blocks} must equal the batch size {batch_size}")
    stream = stream.configured(block_size=batch_size, emit_skips=True)
    resolution = getattr(stream.transform, "resolution", None)
    shapes = getattr(stream.transform, "output_shapes", None)
    generator = torch.Generator().manual_seed(derive_seed("dataloader", stream.seed, stream.rank))
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=partial(
            collate, image_shape=(3, resolution, resolution) if resolution else None, shapes=shapes
        ),
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )
