"""The model picker: every per-step export of the enhanced run, each with its own denoiser.

``demo_run`` writes ``export/steps/1`` and ``export/steps/2`` (``stage2.export_every=1``), each with
``denoiser/`` (the tiny preset turns ``stage2.export_denoiser`` on; paper presets leave it off).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from testkit import load_test_module

from demo.models import ModelRegistry, Unavailable
from demo.reconstruct import reconstruction_views
from enhance.config import load_config


def _cfg(tmp_model_dirs, run, **overrides):
    conf = load_test_module("demo/conftest.py", "_genhancer_tests_demo_conftest")
    return conf.make_demo_cfg(tmp_model_dirs, run, **overrides)


def test_export_denoiser_is_on_for_tiny_and_off_for_paper_presets():
    assert load_config("tiny").stage2.export_denoiser is True
    assert load_config("openai-clip-l14-224").stage2.export_denoiser is False


def test_picker_lists_every_per_step_export(tmp_model_dirs, demo_run):
    for given in (demo_run, demo_run / "export", demo_run / "export" / "hf"):
        reg = ModelRegistry(_cfg(tmp_model_dirs, given))
        assert reg.variants() == ["final", "step 1", "step 2"]
    reg = ModelRegistry(_cfg(tmp_model_dirs, demo_run))
    step1 = reg.at("step 1")
    assert step1.encoder_spec("enhanced") == str(demo_run / "export" / "steps" / "1")
    assert step1.encoder_spec("original") == reg.encoder_spec("original")
    assert reg.at("final") is reg and reg.at(None) is reg
    with pytest.raises(Unavailable, match="step 9"):
        reg.at("step 9")


def _projector(rec) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in rec.projector.state_dict().items()}


def test_each_export_reconstructs_with_its_own_denoiser(tmp_model_dirs, demo_run, two_images):
    reg = ModelRegistry(_cfg(tmp_model_dirs, demo_run))
    final, step1 = reg.reconstructor(), reg.at("step 1").reconstructor()
    assert step1 is not final and reg.at("step 1").reconstructor() is step1  # loaded once
    saved = load_file(
        demo_run / "export" / "steps" / "1" / "denoiser" / "projector" / "diffusion_pytorch_model.safetensors"
    )
    assert all(torch.equal(saved[k], v) for k, v in _projector(step1).items())
    # stage2_all trains the projector: step 1's differs from the final one
    assert any(not torch.equal(v, _projector(final)[k]) for k, v in _projector(step1).items())
    # the enhanced tower is the step's too; the original tower is shared
    assert reg.at("step 1").encoder("enhanced") is not reg.encoder("enhanced")
    assert reg.at("step 1").encoder("original") is reg.encoder("original")
    shown, views, message = reconstruction_views(reg.at("step 1"), two_images[0])
    assert message == "" and [v.side for v in views] == ["original", "enhanced"]
    assert all(isinstance(v.image, Image.Image) and not v.error for v in views)


def test_a_step_export_without_denoiser_says_how_to_get_one(tmp_model_dirs, demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    shutil.rmtree(run / "export" / "steps" / "2" / "denoiser")
    reg = ModelRegistry(_cfg(tmp_model_dirs, run))
    with pytest.raises(Unavailable, match="stage2.export_denoiser"):
        reg.at("step 2").reconstructor()
    assert reg.at("step 1").reconstructor() is not None
