"""Golden losses: the per-step losses of short tiny runs of every trainer, against a committed file.

A refactor that is meant to move no behaviour must leave these curves where they are. The runs use
the suite's config-built tiny models (seeded), one CPU thread's worth of work each, logging every
step: `enhance` (continuous denoiser, both stages), `enhance` with the discrete denoiser, and
`llava-train` (pretrain + finetune).

Tolerance: relative 1e-3 per step (``RTOL``). On one machine and one lock the runs are bit-identical;
the slack absorbs other CPUs' vector units summing in another order, not behaviour changes (a
changed mask, schedule or loss moves these values by far more).

A change that is *meant* to move the losses rewrites the file, and the commit says why:

    GENHANCER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/e2e/test_golden_losses.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent.parent / "assets" / "golden_losses.json"
RTOL = 1e-3
UPDATE = os.environ.get("GENHANCER_UPDATE_GOLDEN") == "1"


def _curve(run_dir: Path, key: str = "loss") -> list[list]:
    """``[stage, step, loss]`` for every logged step of a run folder's ``metrics.jsonl``."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [[r["stage"], r["step"], r[key]] for r in rows if key in r]


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory) -> Path:
    from diffusers import VQModel

    from genhancer.toyworld.models import TINY_VQ_RECIPE, tiny_vq_config

    root = tmp_path_factory.mktemp("golden_vq")
    recipe = {**TINY_VQ_RECIPE, "block_out_channels": [8, 8, 8], "codebook_size": 32, "image_size": 32}
    torch.manual_seed(0)
    VQModel(**tiny_vq_config(recipe)).save_pretrained(root / "vqvae", safe_serialization=True)
    return root


def _enhance(tiny_enhance_config, out: Path, *extra: str) -> list[list]:
    from enhance.train import run

    cfg = tiny_enhance_config("stage1.steps=4", "stage2.steps=4", "logging.every=1", *extra)
    run(cfg, out)
    return _curve(out)


def _llava(tmp_path: Path) -> list[list]:
    from testkit import load_test_module, tiny_llava_sets

    from llava_integration.config import load_config
    from llava_integration.train import run

    parts = load_test_module("llava_integration/conftest.py", "_genhancer_tests_llava_conftest")
    tower = parts.make_tower(tmp_path / "tower")
    llm = parts.make_llm(tmp_path / "llm")
    sets = tiny_llava_sets(llm, 8, 2, f"model.vision_tower={tower}", "logging.every=1")
    cfg = load_config("tiny", None, sets)
    run(cfg, tmp_path / "run")
    return _curve(tmp_path / "run")


def _dump(golden: dict) -> str:
    """One ``[stage, step, loss]`` row a line, so a diff of the file shows which steps moved."""
    blocks = [
        f"  {json.dumps(name)}: [\n" + ",\n".join(f"    {json.dumps(row)}" for row in rows) + "\n  ]"
        for name, rows in sorted(golden.items())
    ]
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def _check(name: str, curve: list[list]) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if UPDATE:
        golden[name] = curve
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(_dump(golden))
        return
    assert name in golden, f"{GOLDEN} has no '{name}' curve; write it with GENHANCER_UPDATE_GOLDEN=1"
    want = golden[name]
    assert [r[:2] for r in curve] == [r[:2] for r in want], f"{name}: logged steps differ"
    off = [
        (stage, step, got, exp)
        for (stage, step, got), (_, _, exp) in zip(curve, want)
        if not math.isclose(got, exp, rel_tol=RTOL)
    ]
    assert not off, f"{name}: losses moved beyond rel {RTOL} at (stage, step, now, golden): {off}"


def test_golden_enhance_continuous(tmp_path, tiny_enhance_config):
    _check("enhance_continuous", _enhance(tiny_enhance_config, tmp_path))


def test_golden_enhance_discrete(tmp_path, tiny_enhance_config, vq_dir):
    curve = _enhance(
        tiny_enhance_config,
        tmp_path,
        "method.denoiser.kind=discrete",
        f"method.denoiser.tokenizer={vq_dir}",
        "method.denoiser.num_layers=2",
        "method.denoiser.perceiver_hidden=32",
        "method.denoiser.perceiver_heads=2",
    )
    _check("enhance_discrete", curve)


def test_golden_llava_train(tmp_path):
    _check("llava_train", _llava(tmp_path))


@pytest.mark.parametrize("method", ["dcr", "diva", "naive-contrastive"])
def test_golden_enhance_method(tmp_path, tiny_method_config, method):
    """The frozen-SD methods' curves (4 + 4 steps; DIVA's one stage: 4)."""
    from enhance.train import run

    cfg = tiny_method_config(method, "stage1.steps=4", "stage2.steps=4", "logging.every=1")
    run(cfg, tmp_path / "run")
    _check(f"enhance_{method}", _curve(tmp_path / "run"))
