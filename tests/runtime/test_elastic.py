"""Elastic resume: a data position written by N processes maps onto M, by hand and on real streams.

``stream_start`` is checked on hand-computed cases; then the image stream with the elastic layout
(``ImageStream`` with ``rank_blocks``) is read on N ranks, cut at a step boundary
and continued on M ranks from the mapped position: the keys read, in global micro-batch order,
equal the one-process stream's, so no item is read twice or skipped (across an epoch boundary
too). The training runs are in ``tests/e2e/test_elastic_resume.py`` (slow).
"""

from __future__ import annotations

import pytest

from genhancer.runtime.errors import UserError
from genhancer.runtime.resume import stream_start


def test_stream_start_by_hand():
    # 2 ranks consumed 12 samples each (3 micro-batches of 4): 24 together -> 24 on 1 rank
    assert stream_start([12, 12], 2, 0, 1, elastic=True, block=4) == 24
    # 1 rank consumed 24 -> 12 per rank on 2 ranks
    assert [stream_start([24], 1, r, 2, elastic=True, block=4) for r in range(2)] == [12, 12]
    # 4 -> 2 and 2 -> 4 (global 32 samples)
    assert stream_start([8, 8, 8, 8], 4, 1, 2, elastic=True, block=4) == 16
    assert stream_start([16, 16], 2, 3, 4, elastic=True, block=4) == 8
    # a fresh run and a same-size resume of a per-rank stream
    assert stream_start([], 2, 1, 2, elastic=True, block=4) == 0
    assert stream_start([5, 7], 2, 1, 2, elastic=False, block=4) == 7


def test_stream_start_refuses_what_does_not_map():
    with pytest.raises(UserError, match="written by 2 processes, this run has 1"):
        stream_start([12, 12], 2, 0, 1, elastic=False, block=4)
    with pytest.raises(UserError, match="different data positions"):
        stream_start([12, 8], 2, 0, 1, elastic=True, block=4)
    with pytest.raises(UserError, match="do not split into micro-batches of 4 over 3"):
        stream_start([4], 1, 0, 3, elastic=True, block=4)  # 1 micro-batch over 3 processes


def _image_stream_keys(world: int, start: int, micro_batches: int, block: int = 4, workers: int = 0):
    """Keys per global micro-batch (g = m * world + rank) of ``micro_batches`` per rank."""
    from enhance.data.loading import ImageStream, build_dataloader, build_source
    from enhance.data.transforms import make_transform

    source = build_source("toyworld", "", toy_n=37, toy_seed=1, toy_image_size=16)  # 37: epochs cut blocks
    transform = make_transform(16, [0.5] * 3, [0.5] * 3, train=True)
    per_rank = []
    for rank in range(world):
        stream = ImageStream(
            source, transform, seed=3, rank=rank, world_size=world, start_position=start, rank_blocks=block
        )
        it = iter(build_dataloader(stream, block, num_workers=workers))
        per_rank.append([next(it) for _ in range(micro_batches)])
    ordered = [per_rank[r][m] for m in range(micro_batches) for r in range(world)]
    assert all(b["position"] == start + (i // world + 1) * block for i, b in enumerate(ordered))
    return [b["key"] for b in ordered]


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 4)])
def test_image_stream_resumes_on_another_world_size_without_repeats_or_gaps(before, after):
    block = 4
    one = _image_stream_keys(1, 0, 24, block)
    cut = 8 // before  # micro-batches per rank before the cut: 8 global micro-batches (32 samples)
    head = _image_stream_keys(before, 0, cut, block)
    start = stream_start([cut * block] * before, before, 0, after, elastic=True, block=block)
    tail = _image_stream_keys(after, start, 8 // after, block, workers=2 if after == 2 else 0)
    assert head + tail == one[:16]  # 64 samples: across the end of epoch 0 (37 items)
    seen = [k for batch in head + tail for k in batch]
    assert len(set(seen[:37])) == 37  # the first epoch: every item once
