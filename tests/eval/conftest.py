"""Fixtures for the eval tests: small generated benchmark folders, an open_clip export, and a
fake encoder whose embeddings a test chooses (to check wiring without a model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.clip.encoders import DualEncoder

TEST_IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def toy_mmvp_root(tmp_path_factory) -> Path:
    """A 2-pattern toy MMVP-VLM (colour, count; 3 pairs each) in the published layout."""
    from eval.clip.fixtures import write_toy_mmvp_vlm

    root = tmp_path_factory.mktemp("mmvp") / "mmvp_vlm"
    return write_toy_mmvp_vlm(
        root, seed=3, image_size=TEST_IMAGE_SIZE, pairs_per_pattern=3, patterns=("color", "quantity")
    )


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory) -> Path:
    """A full fixture data root (9 patterns x 2 pairs, 6 colours x 3 images, 6 retrieval images)."""
    from eval.clip.fixtures import FixtureRecipe, ensure_toy_fixtures

    recipe = FixtureRecipe(
        seed=0, image_size=TEST_IMAGE_SIZE, pairs_per_pattern=2, class_images=3, retrieval_images=6
    )
    return ensure_toy_fixtures(tmp_path_factory.mktemp("data") / "fixtures", recipe)


@pytest.fixture(scope="session")
def open_clip_export(tmp_path_factory) -> Path:
    """A random-init open_clip model saved like ``enhance``'s ``export/open_clip/`` folder.

    The text tower keeps open_clip's default BPE vocabulary size so its default tokenizer works.
    """
    import open_clip
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": TEST_IMAGE_SIZE,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "mlp_ratio": 2.0,
            "patch_size": 8,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    root = tmp_path_factory.mktemp("openclip")
    cfg_path = root / "genhancer-eval-openclip.json"
    cfg_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model("genhancer-eval-openclip")
    out = root / "open_clip"
    out.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_name": "genhancer-eval-openclip", "model_cfg": cfg})
    )
    return out


class FakeEncoder(DualEncoder):
    """Embeddings from lookup tables: ``image_vec(image) -> list[float]``, ``text_vec(text)``."""

    kind = "clip"

    def __init__(self, image_vec, text_vec, scale: float = 1.0, bias: float = 0.0):
        super().__init__(
            "fake", torch.nn.Identity(), lambda px: px, TEST_IMAGE_SIZE, "fake", torch.device("cpu")
        )
        self.image_vec, self.text_vec = image_vec, text_vec
        self.scale, self.bias = scale, bias
        self.text_calls = 0

    def preprocess(self, images):
        return torch.tensor([self.image_vec(im) for im in images], dtype=torch.float32)

    def _text_batch(self, texts):
        self.text_calls += len(texts)
        return torch.tensor([self.text_vec(t) for t in texts], dtype=torch.float32)

    def logit_scale_bias(self):
        return self.scale, self.bias


@pytest.fixture()
def fake_encoder():
    """Factory for :class:`FakeEncoder`."""
    return FakeEncoder


# --- MLLM benchmarks ------------------------------------------------------------------------------

SMALL_MLLM_RECIPE = dict(
    seed=0,
    image_size=TEST_IMAGE_SIZE,
    mmvp_pairs=3,
    cv_bench_per_source=2,
    naturalbench_groups=2,
    pope_per_split=4,
    hallusion_sets=2,
    scienceqa=4,
)


@pytest.fixture(scope="session")
def mllm_recipe() -> dict:
    return dict(SMALL_MLLM_RECIPE)


@pytest.fixture(scope="session")
def mllm_fixture_root(tmp_path_factory) -> Path:
    """The six toy MLLM benchmarks, small (6 MMVP rows, 6 CV-Bench, 8 NaturalBench, 3x4 POPE, 8 Hallusion, 4 SciQA)."""
    from eval.mllm.fixtures import MllmFixtureRecipe, ensure_mllm_fixtures

    return ensure_mllm_fixtures(tmp_path_factory.mktemp("mllm_data"), MllmFixtureRecipe(**SMALL_MLLM_RECIPE))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A random-weight tiny LLaVA saved like ``llava-train``'s ``final/`` (built from the
    llava_integration test factories; seconds)."""
    import importlib.util

    here = Path(__file__).resolve().parents[1] / "llava_integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_llava_test_factories", here)
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    from llava_integration.config import ModelConfig
    from llava_integration.model import build, save

    root = tmp_path_factory.mktemp("tiny_llava")
    tower, llm = factories.make_tower(root / "tower"), factories.make_llm(root / "llm")
    model, processor = build(
        ModelConfig(vision_tower=str(tower), llm=str(llm), gradient_checkpointing=False), seed=0
    )
    return save(model, processor, root / "final")
