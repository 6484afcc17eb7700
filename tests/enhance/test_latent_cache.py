"""The on-disk latent cache: what it stores, that a build resumes shard by shard,
that it refuses a cache built for another setup, and that training from it is resumable and
follows the on-the-fly training curve."""

from __future__ import annotations

import io
import json
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from enhance import latent_cache as lc
from enhance.data.loading import ImageStream, build_dataloader, build_source
from enhance.data.transforms import make_transform
from enhance.model import encode_posterior
from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime.errors import UserError


@pytest.fixture()
def codec(tiny_genhancer_model):
    return tiny_genhancer_model.codec


def _spec(cfg, size, **changes):
    spec = lc.cache_spec(cfg, size)
    spec.update(changes)
    return spec


def _folder(tmp_path, n=10, bad=()):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"img{i:02d}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            w, h = 40 + 3 * i, 36 + 2 * i  # non-square, all different: crops differ
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return root


def _build(cfg, codec, source, out, **spec_changes):
    spec = _spec(cfg, 32, dtype="float32", crops=3, **spec_changes)
    return spec, lc.build_latent_cache(codec, source, out, spec, shard_size=4, batch_size=5, workers=2)


def test_cache_stores_each_crop_and_its_exact_posterior(tmp_path, tiny_cfg, codec):
    source = build_source("imagefolder", str(_folder(tmp_path, n=6)))
    spec, manifest = _build(tiny_cfg, codec, source, tmp_path / "cache")
    assert manifest["images"] == 6 and manifest["skipped"] == 0 and len(manifest["shards"]) == 2
    cache = lc.LatentCache(tmp_path / "cache", spec)
    for ref in source.segments(0, 0, 0, 1, False).__next__().items(0):
        image = Image.open(io.BytesIO(ref.fetch()[1]))
        entry = cache.get(ref.uid)
        assert entry.size == image.size and entry.mean.shape[0] == 3
        boxes = lc.crop_boxes(ref.uid, *image.size, 3, spec["seed"], (0.9, 1.0))
        assert [tuple(b.tolist()) for b in entry.boxes] == boxes
        assert len(set(boxes)) > 1  # three different crops
        # the stored posterior is the VAE's, on the crop's pixels made the on-the-fly way
        view = make_transform(32, train=True)
        vae_pixels = torch.stack([view.views(view.cut(image, box))["vae_pixels"] for box in boxes])
        mean, logvar = encode_posterior(codec, vae_pixels)
        # equal up to float reassociation (the build encodes other batch compositions)
        torch.testing.assert_close(entry.mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(entry.logvar, logvar, rtol=1e-5, atol=1e-5)


def test_training_stream_serves_cached_crops_and_their_latents(tmp_path, tiny_cfg, codec):
    source = build_source("imagefolder", str(_folder(tmp_path, n=6)))
    spec, _ = _build(tiny_cfg, codec, source, tmp_path / "cache")
    cache = lc.LatentCache(tmp_path / "cache", spec)
    view = make_transform(32, train=True)
    transform = lc.CachedCropTransform(view, cache)
    stream = ImageStream(source, transform, seed=3, max_epochs=2)
    batches = list(build_dataloader(stream, batch_size=4, num_workers=0))
    assert set(batches[0]) >= {"pixel_values", "latent_mean", "latent_logvar"}
    assert "vae_pixels" not in batches[0]
    chosen = {}
    for batch in batches:
        for i, key in enumerate(batch["key"]):
            uid = f"{key}.png"  # image-folder uids are relative paths
            entry = cache.get(uid)
            k = next(k for k in range(3) if torch.equal(entry.mean[k], batch["latent_mean"][i]))
            assert torch.equal(batch["latent_logvar"][i], entry.logvar[k])
            image = Image.open(tmp_path / "images" / uid)
            expected = view.normalise(view.cut(image, tuple(entry.boxes[k].tolist())))
            assert torch.equal(batch["pixel_values"][i], expected)  # tower sees the cached crop
            chosen.setdefault(uid, []).append(k)
    assert any(len(set(ks)) > 1 for ks in chosen.values())  # epochs visit different crops
    # DataLoader workers (the cache pickles into them without its open shard handles): same batches
    parallel = list(build_dataloader(stream, batch_size=4, num_workers=2))
    assert [b["key"] for b in parallel] == [b["key"] for b in batches]
    assert all(torch.equal(x["latent_mean"], y["latent_mean"]) for x, y in zip(parallel, batches))


def _shard_contents(path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    return load_file(path), meta


def test_interrupted_build_resumes_and_reuses_finished_shards(tmp_path, tiny_cfg, codec):
    source = build_source("imagefolder", str(_folder(tmp_path, n=10)))
    out = tmp_path / "cache"
    spec, first = _build(tiny_cfg, codec, source, out)
    shards = sorted(out.glob("shard-*.safetensors"))
    assert len(shards) == 3
    reference = {p.name: _shard_contents(p) for p in shards}
    # a build killed before the last shard and the manifest were written
    (out / lc.MANIFEST).unlink()
    shards[1].unlink()
    (out / ".shard-00002.safetensors.tmp").write_bytes(b"half written")
    kept_mtime = shards[0].stat().st_mtime_ns
    spec, second = _build(tiny_cfg, codec, source, out)
    assert second == first
    assert shards[0].stat().st_mtime_ns == kept_mtime  # finished shards are not re-encoded
    rebuilt = {p.name: _shard_contents(p) for p in sorted(out.glob("shard-*.safetensors"))}
    assert rebuilt.keys() == reference.keys()
    for name, (tensors, meta) in rebuilt.items():  # the re-encoded shard equals the lost one
        assert meta == reference[name][1]
        assert all(torch.equal(tensors[k], reference[name][0][k]) for k in tensors)
    assert not list(out.glob(".*.tmp"))


def test_cache_for_another_setup_is_refused_by_name(tmp_path, tiny_cfg, codec):
    source = build_source("imagefolder", str(_folder(tmp_path, n=4)))
    spec, _ = _build(tiny_cfg, codec, source, tmp_path / "cache")
    with pytest.raises(UserError, match=r"crops: cache has 3, run wants 5"):
        lc.LatentCache(tmp_path / "cache", {**spec, "crops": 5})
    with pytest.raises(UserError, match=r"resolution: cache has 32, run wants 48"):
        _build(tiny_cfg, codec, source, tmp_path / "cache", resolution=48)
    # a half-built cache of another setup is refused before anything is added to it
    (tmp_path / "cache" / lc.MANIFEST).unlink()
    with pytest.raises(UserError, match=r"crop_scale"):
        _build(tiny_cfg, codec, source, tmp_path / "cache", crop_scale=[0.5, 1.0])
    with pytest.raises(UserError, match=r"no finished latent cache"):
        lc.LatentCache(tmp_path / "cache")


def test_unreadable_images_are_skipped_and_counted_and_changed_images_refused(tmp_path, tiny_cfg, codec):
    root = _folder(tmp_path, n=6, bad=(2,))
    source = build_source("imagefolder", str(root))
    spec, manifest = _build(tiny_cfg, codec, source, tmp_path / "cache")
    assert manifest["images"] == 5 and manifest["skipped"] == 1
    cache = lc.LatentCache(tmp_path / "cache", spec)
    stream = ImageStream(source, lc.CachedCropTransform(make_transform(32), cache), max_epochs=1)
    batches = list(build_dataloader(stream, batch_size=3))
    assert sum(len(b["key"]) for b in batches) == 5 and sum(b["skipped"] for b in batches) == 1
    # an image replaced by one of another size after the build: a clear error, not a silent mismatch
    Image.new("RGB", (20, 20)).save(root / "img00.png")
    with pytest.raises(UserError, match=r"img00.png.*20x20.*rebuild the cache"):
        list(build_dataloader(stream, batch_size=3))


def test_enhance_trains_from_the_cache_and_resumes_exactly(tmp_path, tiny_enhance_config):
    from enhance.train import run

    common = ("train.stages=[1]", f"latent_cache.path={tmp_path / 'cache'}", "latent_cache.shard_size=16")
    straight = run(tiny_enhance_config(*common, "stage1.steps=3"), tmp_path / "straight")
    assert (tmp_path / "cache" / lc.MANIFEST).is_file()
    assert json.loads((tmp_path / "cache" / lc.MANIFEST).read_text())["images"] == 64
    assert straight["final_loss"] is not None and np.isfinite(straight["final_loss"])
    # stop after step 2, resume to step 3 with the same (now finished) cache
    run(tiny_enhance_config(*common, "stage1.steps=2"), tmp_path / "resumed")
    run(tiny_enhance_config(*common, "stage1.steps=3"), tmp_path / "resumed", resume=True)
    a = ckpt.load_weights(tmp_path / "straight" / "checkpoints" / "stage1_step0000003")
    b = ckpt.load_weights(tmp_path / "resumed" / "checkpoints" / "stage1_step0000003")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_discrete_denoiser_rejects_a_latent_cache(tiny_enhance_config):
    with pytest.raises(UserError, match=r"latent_cache.path.*discrete"):
        tiny_enhance_config("method.denoiser.kind=discrete", "latent_cache.path=/tmp/x")


@pytest.mark.slow
def test_cached_training_curve_matches_on_the_fly_within_noise(tmp_path, tiny_enhance_config):
    """Stage 1 on the tiny setup, 40 steps: the cached run (4 crops, bfloat16 posteriors) ends at
    the same loss as the on-the-fly run, within 4 standard errors of the per-step loss noise."""
    from enhance.train import run

    common = ("train.stages=[1]", "stage1.steps=40", "stage1.lr=1e-3", "logging.preview_count=0")
    common += ("checkpoint.every=1000",)
    run(tiny_enhance_config(*common), tmp_path / "fly")
    run(tiny_enhance_config(*common, f"latent_cache.path={tmp_path / 'cache'}"), tmp_path / "cached")

    def losses(d):
        return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]

    fly, cached = losses(tmp_path / "fly"), losses(tmp_path / "cached")
    assert len(fly) == len(cached) == 40
    assert statistics.mean(fly[-10:]) < 0.8 * statistics.mean(fly[:5])  # it learns at all
    tail_fly, tail_cached = fly[-20:], cached[-20:]
    se = (statistics.variance(tail_fly) / 20 + statistics.variance(tail_cached) / 20) ** 0.5
    assert abs(statistics.mean(tail_fly) - statistics.mean(tail_cached)) <= 4 * se, (tail_fly, tail_cached)


def test_build_latent_cache_command(tmp_path, capsys, tmp_model_dirs):
    from testkit import tiny_enhance_flags

    from enhance.cli import main

    flags = tiny_enhance_flags(tmp_model_dirs, f"latent_cache.path={tmp_path / 'c'}")
    code = main([*flags, "--build-latent-cache"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 64 and summary["skipped"] == 0
    assert lc.read_manifest(tmp_path / "c")["spec"]["resolution"] == 32
    assert not (tmp_path / "out").exists()  # nothing trained
    assert main(["--preset", "tiny", "--build-latent-cache"]) == 2  # names the missing option
    assert "latent_cache.path" in capsys.readouterr().err


def test_index_is_compact_and_open_shards_are_bounded(tmp_path, tiny_cfg, codec):
    source = build_source("imagefolder", str(_folder(tmp_path, n=10, bad=(7,))))
    spec, _ = _build(tiny_cfg, codec, source, tmp_path / "cache")  # 3 shards of 4
    wide, narrow = (
        lc.LatentCache(tmp_path / "cache", spec),
        lc.LatentCache(tmp_path / "cache", spec, max_open=1),
    )
    uids = [f"img{i:02d}.png" for i in (0, 9, 1, 8, 4, 0)]  # hops between shards
    for uid in uids:
        a, b = wide.get(uid), narrow.get(uid)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.boxes, b.boxes)
        assert len(narrow._files) == 1
    keys, where = narrow._load_index()
    assert keys.dtype == np.uint64 and len(keys) == 10 and bool((keys[1:] > keys[:-1]).all())
    assert "img03.png" in narrow and "img07.png" not in narrow and "nope.png" not in narrow
    with pytest.raises(lc.UnreadableImage):
        narrow.get("img07.png")
