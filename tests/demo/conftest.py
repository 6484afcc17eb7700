"""Tiny models for the demo tests: an original tower, a seconds-long ``enhance`` run on it, and two
tiny LLaVAs, all built from configs in the session's temp folder (no hub, no cached models).

Fixtures:

* ``demo_run`` (session): run dir of ``enhance.train.run`` on the tiny CLIP of ``tmp_model_dirs``
  (``export/hf``, ``export/denoiser``, ``export/steps/{1,2}/`` each with its ``denoiser/``).
* ``llava_dirs`` (session): ``{"original": DIR, "enhanced": DIR}``, saved tiny LLaVAs.
* ``toy_gallery`` (session): the toy-world gallery, written once.
* ``demo_cfg`` (session): ``(**overrides) -> DemoConfig`` wired to the above (CPU).
* ``registry``: a :class:`demo.models.ModelRegistry` over ``demo_cfg()`` (session, so models load once).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import load_test_module

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_run(tmp_model_dirs, tmp_path_factory) -> Path:
    from enhance.train import run

    root_conftest = load_test_module("conftest.py", "_genhancer_tests_root_conftest")
    # a per-step export (with its denoiser: the tiny preset's stage2.export_denoiser) after each of
    # the 2 stage-2 steps, for the model picker
    sets = ["logging.preview_count=0", "stage2.export_every=1", "stage2.export_keep=0"]
    cfg = root_conftest.build_tiny_enhance_config(tmp_model_dirs, sets)
    out = tmp_path_factory.mktemp("demo_run") / "run"
    run(cfg, out)
    return out


@pytest.fixture(scope="session")
def llava_dirs(tmp_path_factory) -> dict[str, Path]:
    from llava_integration.config import ModelConfig
    from llava_integration.model import build, save

    parts = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    root = tmp_path_factory.mktemp("demo_llava")
    llm = parts.make_llm(root / "llm")
    out = {}
    for seed, side in enumerate(("original", "enhanced")):
        tower = parts.make_tower(root / f"tower_{side}", seed=seed)
        cfg = ModelConfig(vision_tower=str(tower), llm=str(llm), gradient_checkpointing=False)
        model, processor = build(cfg, seed=seed)
        out[side] = save(model, processor, root / side / "final")
    return out


@pytest.fixture(scope="session")
def toy_gallery(tmp_path_factory):
    from demo.gallery import load_gallery

    return load_gallery("", 9, toy_dir=tmp_path_factory.mktemp("demo_gallery"))


def make_demo_cfg(tmp_model_dirs, demo_run, llava_dirs=None, **overrides):
    from demo.config import load_config

    flags = {
        "original": str(tmp_model_dirs.clip),
        "enhanced": str(demo_run),
        "device": "cpu",
        "prompt_prefix": "a photo of ",
    }
    if llava_dirs:
        flags |= {
            "llava_original": str(llava_dirs["original"]),
            "llava_enhanced": str(llava_dirs["enhanced"]),
        }
    return load_config(flags={**flags, **overrides})


@pytest.fixture(scope="session")
def demo_cfg(tmp_model_dirs, demo_run, llava_dirs):
    def make(**overrides):
        return make_demo_cfg(tmp_model_dirs, demo_run, llava_dirs, **overrides)

    return make


@pytest.fixture(scope="session")
def registry(tmp_model_dirs, demo_run, llava_dirs):
    from demo.models import ModelRegistry

    return ModelRegistry(make_demo_cfg(tmp_model_dirs, demo_run, llava_dirs))


@pytest.fixture()
def two_images(tmp_path) -> tuple[str, str]:
    """Two PNG files: a red and a blue square (paths, as Gradio hands them over)."""
    from PIL import Image

    paths = []
    for colour in ("red", "blue"):
        p = tmp_path / f"{colour}.png"
        Image.new("RGB", (40, 40), colour).save(p)
        paths.append(str(p))
    return paths[0], paths[1]
