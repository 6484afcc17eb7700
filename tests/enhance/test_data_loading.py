"""Training data: source validation, transforms, bad-image skipping, exact resume, rank/worker splits."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from enhance.data import (
    CLIP_MEAN,
    CLIP_STD,
    ImageStream,
    UnreadableImage,
    build_dataloader,
    build_source,
    collate,
    decode_image,
    expand_braces,
    make_transform,
)
from enhance.data.transforms import random_resized_crop_box
from genhancer.runtime.errors import UserError
from genhancer.toyworld import ToyWorld

RES = 32


@pytest.fixture(scope="module")
def transform():
    return make_transform(RES, CLIP_MEAN, CLIP_STD)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wds")
    ToyWorld(seed=7).write_webdataset(root, n=30, shard_size=8)  # 4 shards: 8, 8, 8, 6
    return root


@pytest.fixture()
def bad_folder(tmp_path) -> Path:
    """Six good images plus a truncated JPEG and a zero-byte PNG."""
    root = ToyWorld(seed=8).write_image_folder(tmp_path / "imgs", n=6)
    good = (root / "000000002.jpg").read_bytes()
    (root / "000000003b_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "000000001b_empty.png").write_bytes(b"")
    return root


def _items(stream, limit=None):
    out = []
    for item in stream:
        out.append(item)
        if limit is not None and len(out) == limit:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"]
        and x["position"] == y["position"]
        and torch.equal(x["pixel_values"], y["pixel_values"])
        and torch.equal(x["vae_pixels"], y["vae_pixels"])
        for x, y in zip(a, b)
    )


# ------------------------------------------------------------------------------------------- sources


def test_build_source_errors_name_the_problem(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match="nope"):
        build_source("imagefolder", missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="empty.*no images"):
        build_source("imagefolder", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="'parquet'.*webdataset, imagefolder, hf, toyworld"):
        build_source("parquet", str(tmp_path))
    with pytest.raises(UserError, match="nope"):
        build_source("webdataset", missing + "/{00000..00003}.tar")
    with pytest.raises(UserError, match="without .tar"):
        build_source("webdataset", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="nope"):
        build_source("hf", missing)
    with pytest.raises(UserError, match="only local"):
        build_source("webdataset", "https://example.com/{00000..00001}.tar")


def test_build_source_rejects_shards_without_images(tmp_path):
    import tarfile

    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        info = tarfile.TarInfo("000000000.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(UserError, match="no sample .* has an image"):
        build_source("webdataset", str(tmp_path))


def test_hf_source_missing_column(tmp_path):
    ToyWorld(seed=0).to_hf_dataset(3).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(UserError, match="no column 'pixels'.*image"):
        build_source("hf", str(tmp_path / "hf"), image_column="pixels")


def test_expand_braces():
    assert expand_braces("/d/{00000..00002}.tar") == ["/d/00000.tar", "/d/00001.tar", "/d/00002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_source_accepts_dir_glob_and_braces(shards):
    for path in (str(shards), str(shards / "*.tar"), str(shards / "{00000..00003}.tar")):
        assert len(build_source("webdataset", path).shards) == 4


# ---------------------------------------------------------------------------------------- transforms


def test_transform_shapes_ranges_and_normalisation(transform):
    colour = (200, 100, 50)
    out = transform(Image.new("RGB", (80, 60), colour), random.Random(0))
    assert out["pixel_values"].shape == out["vae_pixels"].shape == (3, RES, RES)
    assert out["pixel_values"].dtype == torch.float32
    for c in range(3):
        unit = colour[c] / 255.0
        expected = (unit - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(out["pixel_values"][c], torch.full((RES, RES), expected), atol=1e-5)
        assert torch.allclose(out["vae_pixels"][c], torch.full((RES, RES), unit * 2 - 1), atol=1e-6)
    halves = np.zeros((50, 70, 3), dtype=np.uint8)
    halves[:, 35:] = 255  # bicubic overshoots at the edge; values must still stay in [-1, 1]
    vae = transform(Image.fromarray(halves), random.Random(1))["vae_pixels"]
    assert vae.min() == -1.0 and vae.max() == 1.0


def test_transform_is_driven_by_the_given_rng(transform):
    img = ToyWorld(seed=0).sample(0).image
    state = random.getstate()
    a, b = transform(img, random.Random(5)), transform(img, random.Random(5))
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert random.getstate() == state
    crops = {transform(img, random.Random(s))["vae_pixels"].sum().item() for s in range(8)}
    assert len(crops) > 1
    # Both views come from the same crop.
    unit_from_pixels = a["pixel_values"] * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(
        CLIP_MEAN
    ).view(3, 1, 1)
    assert torch.allclose(unit_from_pixels, (a["vae_pixels"] + 1) / 2, atol=1e-5)


def test_crop_box_respects_scale_and_bounds():
    rng = random.Random(0)
    for _ in range(200):
        w, h = rng.randint(20, 400), rng.randint(20, 400)
        left, top, right, bottom = random_resized_crop_box(w, h, rng, (0.9, 1.0))
        assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_eval_transform_resizes_and_centre_crops():
    tf = make_transform(RES, CLIP_MEAN, CLIP_STD, train=False)
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :20] = 255  # a white band on the far left is cropped away
    out = tf(Image.fromarray(arr))
    assert out["vae_pixels"].shape == (3, RES, RES)
    assert torch.equal(out["vae_pixels"], tf(Image.fromarray(arr), None)["vae_pixels"])
    assert out["vae_pixels"].max() < -0.9


# ---------------------------------------------------------------------------------- unreadable images


def test_decode_rejects_bombs_and_garbage(monkeypatch):
    buf = io.BytesIO()
    Image.new("RGB", (100, 100), (1, 2, 3)).save(buf, format="PNG")
    png = buf.getvalue()
    assert decode_image(png).size == (100, 100)
    with pytest.raises(UnreadableImage, match="max_pixels"):
        decode_image(png, max_pixels=5000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10000 px: a DecompressionBombWarning
    with pytest.raises(UnreadableImage):
        decode_image(png)
    for bad in (b"", b"not an image", png[:60]):
        with pytest.raises(UnreadableImage):
            decode_image(bad)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_corrupt_and_empty_files_are_skipped_and_counted(bad_folder, transform):
    source = build_source("imagefolder", str(bad_folder))
    assert len(source) == 8
    items = _items(ImageStream(source, transform, max_epochs=1, shuffle=False))
    assert [i["key"] for i in items] == [f"{k:09d}" for k in range(6)]
    assert [i["skipped"] for i in items] == [0, 0, 1, 1, 2, 2]  # running count
    assert items[-1]["position"] == 8
    batches = list(build_dataloader(ImageStream(source, transform, max_epochs=1), batch_size=3))
    assert sum(b["skipped"] for b in batches) == 2
    assert sorted(k for b in batches for k in b["key"]) == [f"{k:09d}" for k in range(6)]
    assert [b["position"] for b in batches] == [3, 6, 8]


def test_all_unreadable_source_raises_instead_of_spinning(tmp_path, transform):
    (tmp_path / "a.jpg").write_bytes(b"broken")
    with pytest.raises(UserError, match="none of 1 images"):
        next(iter(ImageStream(build_source("imagefolder", str(tmp_path)), transform)))


def test_collate_of_only_unreadable_items():
    batch = collate([{"key": "a", "position": 4, "epoch": 0, "skipped": 1, "unreadable": True}], (3, 8, 8))
    assert batch["pixel_values"].shape == (0, 3, 8, 8) and batch["key"] == []
    assert batch["position"] == 4 and batch["skipped"] == 1


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("kind", ["toyworld", "webdataset", "imagefolder"])
def test_resume_yields_exactly_the_uninterrupted_items(kind, shards, bad_folder, transform):
    path = {"toyworld": "", "webdataset": str(shards), "imagefolder": str(bad_folder)}[kind]
    source = build_source(kind, path, toy_n=12, toy_seed=3, toy_image_size=32)
    full = _items(ImageStream(source, transform, seed=11, max_epochs=3))
    assert len({i["epoch"] for i in full}) == 3
    for cut in (0, 5, len(full) // 3, len(full) - 4):
        position = full[cut - 1]["position"] if cut else 0
        resumed = _items(
            ImageStream(source, transform, seed=11, max_epochs=3, start_position=position), limit=4
        )
        assert _same(resumed, full[cut : cut + 4]), (kind, cut)


def test_epochs_reshuffle_and_seed_matters(transform):
    source = build_source("toyworld", toy_n=10)
    items = _items(ImageStream(source, transform, seed=0, max_epochs=2))
    first, second = [i["key"] for i in items[:10]], [i["key"] for i in items[10:]]
    assert sorted(first) == sorted(second) and first != second
    other = [i["key"] for i in _items(ImageStream(source, transform, seed=1, max_epochs=1))]
    assert other != first


# ------------------------------------------------------------------------------------- ranks, workers


@pytest.mark.parametrize(
    "kind,shard_glob", [("toyworld", ""), ("webdataset", "*.tar"), ("webdataset", "00003.tar")]
)
def test_ranks_see_disjoint_keys_covering_everything(kind, shard_glob, shards, transform):
    path = str(shards / shard_glob) if kind == "webdataset" else ""
    source = build_source(kind, path, toy_n=15)
    everything = sorted(i["key"] for i in _items(ImageStream(source, transform, seed=2, max_epochs=1)))
    for epoch in range(2):
        per_rank = [
            [
                i["key"]
                for i in _items(ImageStream(source, transform, seed=2, rank=r, world_size=2, max_epochs=2))
                if i["epoch"] == epoch
            ]
            for r in range(2)
        ]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == everything


def test_rank_keeps_augmentation_independent_of_world_size(transform):
    source = build_source("toyworld", toy_n=8)
    single = {i["key"]: i for i in _items(ImageStream(source, transform, seed=4, max_epochs=1))}
    for item in _items(ImageStream(source, transform, seed=4, rank=1, world_size=2, max_epochs=1)):
        assert torch.equal(item["vae_pixels"], single[item["key"]]["vae_pixels"])


def test_dataloader_workers_keep_stream_order_and_resume(shards, transform):
    source = build_source("webdataset", str(shards))
    reference = _items(ImageStream(source, transform, seed=5, max_epochs=2))
    state = torch.random.get_rng_state()
    runs = []
    for _ in range(2):
        loader = build_dataloader(
            ImageStream(source, transform, seed=5, max_epochs=2), batch_size=4, num_workers=2
        )
        runs.append(list(loader))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    for batches in runs:
        assert [k for b in batches for k in b["key"]] == [i["key"] for i in reference]
        assert torch.equal(
            torch.cat([b["pixel_values"] for b in batches]),
            torch.stack([i["pixel_values"] for i in reference]),
        )
        assert [b["position"] for b in batches] == [
            min(4 * (n + 1), len(reference)) for n in range(len(batches))
        ]
    # Resume after three batches, with workers again.
    stream = ImageStream(source, transform, seed=5, max_epochs=2)
    position = runs[0][2]["position"]
    assert position == stream.position_after(3, 4)
    resumed = list(build_dataloader(stream.configured(start_position=position), batch_size=4, num_workers=2))
    assert [k for b in resumed for k in b["key"]] == [i["key"] for i in reference[position:]]
    assert torch.equal(resumed[0]["vae_pixels"], runs[0][3]["vae_pixels"])
    # Batch size and worker count may change across a resume.
    other = build_dataloader(stream.configured(start_position=position), batch_size=5, num_workers=0)
    assert [k for b in other for k in b["key"]] == [i["key"] for i in reference[position:]]


def test_dataloader_with_skips_and_workers_resumes_exactly(bad_folder, transform):
    source = build_source("imagefolder", str(bad_folder))
    full = list(
        build_dataloader(ImageStream(source, transform, seed=9, max_epochs=3), batch_size=3, num_workers=2)
    )
    assert sum(b["skipped"] for b in full) == 6
    resumed = list(
        build_dataloader(
            ImageStream(source, transform, seed=9, max_epochs=3, start_position=full[2]["position"]),
            batch_size=3,
            num_workers=2,
        )
    )
    assert [b["key"] for b in resumed] == [b["key"] for b in full[3:]]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(resumed, full[3:]))


def test_hf_source_streams_and_skips_bad_rows(tmp_path, transform):
    import datasets

    ds = ToyWorld(seed=0).to_hf_dataset(5)
    ds.save_to_disk(str(tmp_path / "hf"))
    source = build_source("hf", str(tmp_path / "hf"))
    keys = sorted(i["key"] for i in _items(ImageStream(source, transform, max_epochs=1)))
    assert keys == [f"{k:09d}" for k in range(5)]
    bad = datasets.Dataset.from_dict(
        {"img": [{"bytes": b"garbage", "path": None}, ds[0]["image"]]},
        features=datasets.Features({"img": datasets.Image()}),
    )
    bad.save_to_disk(str(tmp_path / "bad"))
    items = _items(
        ImageStream(
            build_source("hf", str(tmp_path / "bad"), image_column="img"),
            transform,
            max_epochs=1,
            shuffle=False,
        )
    )
    assert [(i["key"], i["skipped"]) for i in items] == [("000000001", 1)]
