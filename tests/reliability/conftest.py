"""Helpers for the reliability tests: the tiny models of ``tests/conftest.py`` and
``tests/llava_integration/conftest.py`` (loaded by path, since ``tests/`` is not a package), and
command lines that run ``enhance`` / ``llava-train`` as real subprocesses on them.

Fixtures:

* ``llava_parts`` (session): ``{"tower": DIR, "llm": DIR}`` built by the llava_integration factories.
* ``enhance_cli_args`` (session): ``(*overrides) -> list[str]``, the ``enhance`` flags of
  :func:`build_tiny_enhance_config` (``--preset tiny`` plus ``--set`` pairs) on ``tmp_model_dirs``.
* ``llava_cli_args`` (session): ``(*overrides) -> list[str]``, a tiny ``llava-train`` command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import load_test_module, subprocess_env, tiny_llava_sets  # noqa: F401 (re-exported)

TESTS = Path(__file__).resolve().parents[1]


def as_sets(items) -> list[str]:
    out: list[str] = []
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture(scope="session")
def enhance_cli_args(tmp_model_dirs):
    root = load_test_module("conftest.py", "_genhancer_tests_root_conftest")
    d = tmp_model_dirs
    base = [
        "backbone.family=openai-clip",
        f"backbone.name_or_path={d.clip}",
        f"backbone.image_size={root.TINY_IMAGE_SIZE}",
        f"method.vae.name_or_path={d.vae}",
        "method.vae.subfolder=vae",
        f"method.vae.latent_channels={root.TINY_LATENT_CHANNELS}",
        *root.TINY_DENOISER_OVERRIDES,
        "method.flow.preview_steps=2",
        "data.source=toyworld",
        "data.toyworld_size=64",
        "data.num_workers=0",
        "stage1.global_batch_size=4",
        "stage1.per_device_batch_size=4",
        "stage2.global_batch_size=4",
        "stage2.per_device_batch_size=4",
        "checkpoint.every=1",
        "logging.every=1",
        "logging.preview_count=0",
        "logging.progress=false",
        "train.mixed_precision='no'",
        f"cache_dir={d.cache}",
    ]

    def make(*overrides: str) -> list[str]:
        return ["--preset", "tiny", *as_sets([*base, *overrides])]

    return make


@pytest.fixture(scope="session")
def llava_parts(tmp_path_factory) -> dict[str, Path]:
    parts = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    root = tmp_path_factory.mktemp("reliability_llava")
    return {"tower": parts.make_tower(root / "tower"), "llm": parts.make_llm(root / "llm")}


@pytest.fixture(scope="session")
def llava_cli_args(llava_parts):
    base = tiny_llava_sets(llava_parts["llm"], 8, 4, "checkpoint.every=1", "logging.every=1")

    def make(*overrides: str) -> list[str]:
        return [
            "--preset",
            "tiny",
            "--vision-tower",
            str(llava_parts["tower"]),
            *as_sets([*base, *overrides]),
        ]

    return make
