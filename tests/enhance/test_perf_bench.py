"""bench/ scripts run end to end at tiny size on CPU (the GPU runs use the same code paths)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(mod, capsys, *args) -> dict:
    assert mod.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture()
def train_step(monkeypatch, tiny_enhance_config):
    """The bench module, building the tiny model from this session's test model dirs."""
    from enhance.train import build_model

    mod = _load("train_step")

    def build_preset(preset, cache_dir=""):
        cfg = tiny_enhance_config()
        return build_model(cfg), cfg

    monkeypatch.setattr(mod, "build_preset", build_preset)
    return mod


def test_train_step_profile_names_the_phases(train_step, capsys):
    common = ("--preset", "tiny", "--steps", "1", "--warmup", "0")
    res = _run(train_step, capsys, *common, "--stage", "1", "--batch", "2", "--profile")
    assert res["images_per_s"] > 0 and res["tflops_per_step"] > 0
    assert res["vs_paper_table7"]["paper_s_per_100"] == 20.55
    assert {"vae_encode", "tower_projector", "denoiser", "backward", "optimizer"} <= set(res["profile_ms"])


def test_train_step_batch_sweep_and_ab(train_step, capsys):
    common = ("--preset", "tiny", "--steps", "1", "--warmup", "0")
    sweep = _run(train_step, capsys, *common, "--batches", "2,max", "--max-batch", "4")["sweep"]
    assert [r["batch"] for r in sweep] == [2, 4] and sweep[-1]["largest_batch_that_fits"]
    ab = _run(train_step, capsys, *common, "--batch", "2", "--ab", "base,gc,latent_cache", "--rounds", "1")[
        "ab"
    ]
    assert ab["base"]["ratio_vs_base"] == 1.0
    assert ab["gc"]["final_loss"] == pytest.approx(ab["base"]["final_loss"], rel=1e-5)
    assert ab["latent_cache"]["final_loss"] == pytest.approx(ab["base"]["final_loss"], rel=1e-5)


def test_eval_speed_reports_cache_speedup(tmp_model_dirs, capsys):
    mod = _load("eval_speed")
    args = ("--model", str(tmp_model_dirs.clip), "--images", "8", "--texts", "8", "--batch", "4")
    res = _run(mod, capsys, *args, "--rounds", "1")
    assert res["images_per_s"] > 0 and res["texts_per_s_cold"] > 0
    # The ratio is the bench's output, not a target checked here: one round of 8 texts on a loaded
    # machine can come out either way (BENCHMARKS.md has the measured ratio).
    assert math.isfinite(res["zeroshot_cache_speedup"]) and res["zeroshot_cache_speedup"] > 0


def test_latent_cache_bench_compares_speed_and_curves(tmp_path, tmp_model_dirs, capsys):
    from testkit import tiny_enhance_flags

    flags = tiny_enhance_flags(tmp_model_dirs, "stage1.global_batch_size=8", "stage1.per_device_batch_size=8")
    args = ["--steps", "6", "--out", str(tmp_path / "b"), *flags]  # flags carry --preset tiny
    res = _run(_load("latent_cache"), capsys, *args)
    assert res["cache_images"] == 64 and res["cache_bytes"] > 0
    assert res["images_per_s_cached"] > 0 and res["speedup"] > 0
    assert res["curve"]["tail_steps"] == 3 and res["curve"]["standard_error"] > 0
    assert (tmp_path / "b" / "latent_cache.json").is_file()
