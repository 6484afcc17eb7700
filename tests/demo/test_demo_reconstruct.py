"""Reconstruction from the global token: the exported denoiser rebuilt, seeded, one view per side."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from demo.models import ModelRegistry, Unavailable
from demo.reconstruct import Reconstructor, reconstruction_views
from eval.clip.encoders import load_encoder
from genhancer.runtime.errors import UserError

SIZE = 32  # tests/conftest.py TINY_IMAGE_SIZE


def test_views_for_both_sides(registry, two_images):
    shown, views, message = reconstruction_views(registry, two_images[0])
    assert message == "" and shown.size == (SIZE, SIZE)
    assert [v.side for v in views] == ["original", "enhanced"]
    for v in views:
        assert v.error == "" and v.image.size == (SIZE, SIZE)
    again = reconstruction_views(registry, two_images[0])[1]
    assert all(
        np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(views, again)
    )  # seeded
    # different tokens condition the same denoiser differently
    assert not np.array_equal(np.asarray(views[0].image), np.asarray(views[1].image))


def test_matches_the_training_model(demo_run, two_images):
    """The rebuilt pieces equal the run's exported ones: same output as GenHancerModel.reconstruct
    with the exported tower as its backbone."""
    from PIL import Image

    from enhance.backbones.hf import load_hf_backbone
    from enhance.model import GenHancerModel

    rec = Reconstructor.load(demo_run / "export" / "denoiser", steps=3)
    enc = load_encoder(str(demo_run), device="cpu")
    image = Image.open(two_images[1]).convert("RGB")
    ours = np.asarray(rec.reconstruct(enc, image, seed=3))
    backbone = load_hf_backbone("openai-clip", str(demo_run / "export" / "hf"), SIZE)
    model = GenHancerModel(backbone, rec.projector, rec.denoiser, rec.codec)
    pixels = enc.preprocess([image])
    ref = model.reconstruct(pixels, torch.Generator().manual_seed(3), steps=3)[0]
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_without_a_denoiser_the_page_says_what_to_pass(demo_cfg, two_images, tmp_model_dirs):
    reg = ModelRegistry(demo_cfg(enhanced=str(tmp_model_dirs.clip)))
    shown, views, message = reconstruction_views(reg, two_images[0])
    assert shown is None and views == []
    assert "--enhanced RUN_DIR" in message and "no export/denoiser" in message


def test_an_export_in_the_first_layout_still_reconstructs(demo_run, tmp_path, two_images, tmp_model_dirs):
    """``genhancer.json`` as the first writer wrote it (the method's settings in top-level
    ``denoiser``/``vae``/``flow`` keys, no ``format``) loads through the layout's migration and
    reconstructs exactly as the current layout does."""
    den = tmp_path / "denoiser_v1"
    shutil.copytree(demo_run / "export" / "denoiser", den)
    meta = json.loads((den / "genhancer.json").read_text())
    mc = meta["method_config"]
    v1 = {"denoiser": mc["denoiser"], "vae": mc["vae"], "flow": mc["flow"], "backbone": meta["backbone"]}
    (den / "genhancer.json").write_text(json.dumps({**v1, "method": "genhancer"}))
    old = Reconstructor.load(den)
    new = Reconstructor.load(demo_run / "export" / "denoiser")
    assert old.export.meta.method_config["denoiser"] == mc["denoiser"] and old.steps == new.steps
    encoder = load_encoder(str(tmp_model_dirs.clip), device="cpu")
    from PIL import Image

    img = Image.open(two_images[0])
    assert np.array_equal(
        np.asarray(old.reconstruct(encoder, img)), np.asarray(new.reconstruct(encoder, img))
    )


def test_unknown_and_mismatched_runs_are_explained(demo_run, tmp_path, tmp_model_dirs, two_images):
    den = tmp_path / "denoiser"
    shutil.copytree(demo_run / "export" / "denoiser", den)
    meta = json.loads((den / "genhancer.json").read_text())
    mc = meta["method_config"]

    def with_kind(kind: str) -> str:
        return json.dumps({**meta, "method_config": {**mc, "denoiser": {**mc["denoiser"], "kind": kind}}})

    with pytest.raises(Unavailable, match="'autoregressive' is not one of"):
        (den / "genhancer.json").write_text(with_kind("autoregressive"))
        Reconstructor.load(den)
    with pytest.raises(Unavailable, match="no perceiver/"):  # continuous weights, discrete meta
        (den / "genhancer.json").write_text(with_kind("discrete"))
        Reconstructor.load(den)
    (den / "genhancer.json").write_text(json.dumps(meta))
    rec = Reconstructor.load(den)
    siglip = load_encoder(str(tmp_model_dirs.siglip), device="cpu")  # a 32-d token, not the CLIP's 24-d one
    from PIL import Image

    with pytest.raises(UserError, match="global token is 32-d; the denoiser was trained on 24-d"):
        rec.reconstruct(siglip, Image.open(two_images[0]))
    shutil.rmtree(den / "transformer")
    with pytest.raises(Unavailable, match="no transformer/"):
        Reconstructor.load(den)


@pytest.fixture(scope="module")
def discrete_run(tmp_path_factory, tmp_model_dirs):
    """A tiny discrete GenHancer run (random 32-code VQ tokenizer), trained 1 + 1 steps and exported."""
    from diffusers import VQModel
    from testkit import root_conftest

    from enhance.train import run
    from genhancer.toyworld.models import TINY_VQ_RECIPE, tiny_vq_config

    root = tmp_path_factory.mktemp("discrete_demo")
    recipe = {**TINY_VQ_RECIPE, "block_out_channels": [8, 8, 8], "codebook_size": 32, "image_size": 32}
    torch.manual_seed(0)
    VQModel(**tiny_vq_config(recipe)).save_pretrained(root / "vq" / "vqvae", safe_serialization=True)
    overrides = [
        "method.denoiser.kind=discrete",
        f"method.denoiser.tokenizer={root / 'vq'}",
        "method.denoiser.num_layers=1",
        "method.denoiser.perceiver_hidden=32",
        "method.denoiser.perceiver_heads=2",
        "stage1.steps=1",
        "stage2.steps=1",
        "logging.preview_count=0",
    ]
    run(root_conftest().build_tiny_enhance_config(tmp_model_dirs, overrides), root / "run")
    return root / "run"


def test_discrete_run_reconstructs_from_the_global_token(discrete_run, two_images):
    """The exported Perceiver + VQ tokenizer rebuilt by the demo give the training model's picture
    (every code masked: the image from the global token alone)."""
    from PIL import Image

    from enhance.backbones.hf import load_hf_backbone
    from enhance.model import DiscreteGenHancerModel

    assert (discrete_run / "export" / "denoiser" / "perceiver" / "config.json").is_file()
    rec = Reconstructor.load(discrete_run / "export" / "denoiser")
    assert rec.kind == "discrete"
    enc = load_encoder(str(discrete_run), device="cpu")
    image = Image.open(two_images[1]).convert("RGB")
    ours = rec.reconstruct(enc, image, seed=0)
    assert ours.size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(ours), np.asarray(rec.reconstruct(enc, image, seed=5)))  # argmax
    backbone = load_hf_backbone("openai-clip", str(discrete_run / "export" / "hf"), SIZE)
    model = DiscreteGenHancerModel(backbone, rec.projector, rec.denoiser, rec.codec)
    ref = model.reconstruct(enc.preprocess([image]), torch.Generator().manual_seed(0))[0]
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(ours), ref)
