"""Toy world: determinism, controllable variation, captions and the on-disk formats."""

from __future__ import annotations

import io
import json
import random
import tarfile

import numpy as np
import pytest
from PIL import Image

from genhancer.toyworld import world as tw


def _pixels(img: Image.Image) -> bytes:
    return img.tobytes()


def test_same_seed_and_index_give_identical_samples():
    a, b = tw.ToyWorld(seed=3).sample(12), tw.ToyWorld(seed=3).sample(12)
    assert a.key == "000000012"
    assert _pixels(a.image) == _pixels(b.image)
    assert a.caption == b.caption and a.attributes == b.attributes and a.scene == b.scene
    assert a.image.mode == "RGB" and a.image.size == (64, 64)


def test_different_indices_and_seeds_differ():
    world = tw.ToyWorld(seed=0)
    images = {_pixels(world.sample(i).image) for i in range(20)}
    assert len(images) == 20
    assert tw.ToyWorld(seed=1).scene(0) != world.scene(0) or tw.ToyWorld(seed=1).scene(1) != world.scene(1)


def test_render_scales_to_224():
    scene = tw.ToyWorld(seed=0).scene(4)
    big = tw.render(scene, 224)
    assert big.size == (224, 224) and big.mode == "RGB"
    # Roughly the same picture at both sizes.
    small = np.asarray(tw.render(scene, 64), dtype=np.float32)
    down = np.asarray(big.resize((64, 64), Image.BILINEAR), dtype=np.float32)
    assert np.abs(small - down).mean() < 12


def test_attributes_are_plain_single_labels():
    labels = tw.ToyWorld(seed=0).sample(0).attributes
    assert tuple(labels) == tw.ATTRIBUTES
    assert isinstance(labels["count"], int)
    assert all(isinstance(v, str) for k, v in labels.items() if k != "count")


def test_every_attribute_value_appears_in_200_samples():
    world = tw.ToyWorld(seed=0, max_count=3)
    seen: dict[str, set] = {a: set() for a in tw.ATTRIBUTES}
    for i in range(200):
        for name, value in world.sample(i).attributes.items():
            seen[name].add(value)
    assert seen["shape"] == set(tw.SHAPES)
    assert seen["color"] == set(tw.COLORS)
    assert seen["size"] == set(tw.SIZES)
    assert seen["orientation"] == set(tw.ORIENTATIONS)
    assert seen["position"] == set(tw.POSITIONS)
    assert seen["count"] == {1, 2, 3}
    assert seen["text"] == set(tw.WORDS) | {tw.NO_TEXT}


def test_captions_use_only_vocabulary_words():
    vocab = tw.vocabulary()
    assert vocab == sorted(set(vocab)) and all(w == w.lower() for w in vocab)
    world = tw.ToyWorld(seed=5, max_count=5, text_prob=0.7)
    rng = random.Random(0)
    for i in range(150):
        scene = world.scene(i)
        for text in (tw.caption(scene), tw.caption(world.vary(scene, rng.choice(tw.ATTRIBUTES), rng))):
            assert set(tw.caption_words(text)) <= set(vocab), text


def test_caption_example():
    scene = tw.Scene.build("triangle", "red", 2, "large", "up", "left", text="sun")
    assert tw.caption(scene) == "two large red triangles pointing up on the left, with the word 'sun'"
    assert tw.caption(tw.Scene.build("circle", "blue", 1, "small", "down", "center")) == (
        "one small blue circle pointing down in the center"
    )


@pytest.mark.parametrize("attribute", tw.ATTRIBUTES)
def test_vary_changes_exactly_one_attribute(attribute):
    world = tw.ToyWorld(seed=2, max_count=3)
    rng = random.Random(attribute)
    for index in range(12):
        scene = world.scene(index)
        varied = world.vary(scene, attribute, rng)
        before, after = tw.attributes(scene), tw.attributes(varied)
        assert [k for k in tw.ATTRIBUTES if before[k] != after[k]] == [attribute]
        assert varied.background == scene.background
        assert tw.caption(varied) != tw.caption(scene)
        new_value = after[attribute]
        words = tw.caption_words(tw.caption(varied))
        if attribute == "count":
            assert tw.NUMBER_WORDS[new_value - 1] in words
        elif attribute == "shape":
            assert new_value in words or new_value + "s" in words
        else:
            assert str(new_value) in words
        rebuilt = tw.Scene.build(**after, background=scene.background)
        assert tw.caption(rebuilt) == tw.caption(varied)
        assert _pixels(tw.render(varied)) != _pixels(tw.render(scene))


def test_vary_is_deterministic_given_rng():
    world = tw.ToyWorld(seed=0)
    scene = world.scene(3)
    assert world.vary(scene, "count", random.Random(1)) == world.vary(scene, "count", random.Random(1))


def test_scene_rejects_mixed_groups_and_unknown_values():
    a = tw.Shape("circle", "red", "small", "up", "left")
    b = tw.Shape("square", "red", "small", "up", "left")
    with pytest.raises(ValueError):
        tw.Scene((a, b))
    with pytest.raises(ValueError):
        tw.Shape("hexagon", "red", "small", "up", "left")
    with pytest.raises(ValueError):
        tw.Scene((a,), text="not-a-word")


def test_webdataset_shards_follow_img2dataset_layout(tmp_path):
    world = tw.ToyWorld(seed=4)
    paths = world.write_webdataset(tmp_path / "a", n=10, shard_size=4)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(paths[1]) as tar:
        names = tar.getnames()
        assert names == [f"{k:09d}.{ext}" for k in range(4, 8) for ext in ("jpg", "txt", "json")]
        meta = json.loads(tar.extractfile("000000005.json").read())
        text = tar.extractfile("000000005.txt").read().decode()
        image = Image.open(io.BytesIO(tar.extractfile("000000005.jpg").read()))
    sample = world.sample(5)
    assert text == sample.caption == meta["caption"]
    assert meta["key"] == "000000005" and meta["status"] == "success"
    assert (meta["width"], meta["height"]) == image.size == (64, 64)
    assert meta["attributes"] == sample.attributes
    # Deterministic bytes.
    again = world.write_webdataset(tmp_path / "b", n=10, shard_size=4)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_webdataset_shards_readable_by_webdataset(tmp_path):
    import webdataset as wds

    world = tw.ToyWorld(seed=4)
    paths = world.write_webdataset(tmp_path, n=6, shard_size=4, start=100)
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False).decode("pil")
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(100, 106)]
    for s in samples:
        assert s["txt"] == world.sample(int(s["__key__"])).caption
        assert s["jpg"].size == (64, 64)
        assert s["json"]["key"] == s["__key__"]


def test_image_folder_round_trip(tmp_path):
    world = tw.ToyWorld(seed=1)
    root = world.write_image_folder(tmp_path / "folder", n=5, start=3)
    assert sorted(p.name for p in root.glob("*.jpg")) == [f"{i:09d}.jpg" for i in range(3, 8)]
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i:09d}.jpg" for i in range(3, 8)]
    for row in rows:
        sample = world.sample(int(row["key"]))
        assert row["caption"] == sample.caption
        assert {a: row[a] for a in tw.ATTRIBUTES} == sample.attributes
        decoded = np.asarray(Image.open(root / row["file_name"]).convert("RGB"), dtype=np.float32)
        assert np.abs(decoded - np.asarray(sample.image, dtype=np.float32)).mean() < 4  # JPEG, q=95


def test_hf_dataset_round_trip(tmp_path):
    import datasets

    world = tw.ToyWorld(seed=6)
    ds = world.to_hf_dataset(4, start=2)
    assert set(ds.column_names) == {"image", "caption", "key", *tw.ATTRIBUTES}
    assert isinstance(ds.features["image"], datasets.Image)
    ds.save_to_disk(str(tmp_path / "hf"))
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    for row in loaded:
        sample = world.sample(int(row["key"]))
        assert _pixels(row["image"].convert("RGB")) == _pixels(sample.image)  # stored losslessly
        assert row["caption"] == sample.caption
        assert {a: row[a] for a in tw.ATTRIBUTES} == sample.attributes
