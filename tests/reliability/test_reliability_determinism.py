"""Determinism: the same seed and config on the same CPU give identical metrics."""

from __future__ import annotations

import json

from enhance.train import run


def _losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"], r["grad_norm"]) for r in rows]


def test_two_tiny_enhance_runs_log_identical_losses(tmp_path, tiny_enhance_config):
    overrides = ("logging.preview_count=0", "stage2.lora_dropout=0.5")
    run(tiny_enhance_config(*overrides), tmp_path / "a")
    run(tiny_enhance_config(*overrides), tmp_path / "b")
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 4 and a == b


def test_leaderboard_mmvp_vlm_numbers_are_identical_on_a_forced_rerun(tmp_path, tmp_model_dirs, capsys):
    """The toy MMVP-VLM of tests/eval/conftest.py (``toy_mmvp_root``), scored twice: the second
    time with ``--force`` (recomputed, not read from the cache)."""
    from eval.cli import main
    from eval.clip.fixtures import write_toy_mmvp_vlm

    root = write_toy_mmvp_vlm(
        tmp_path / "mmvp_vlm", seed=3, image_size=32, pairs_per_pattern=3, patterns=("color", "quantity")
    )
    argv = [
        "--preset", "tiny",
        "--clip", f"clip={tmp_model_dirs.clip}", f"siglip={tmp_model_dirs.siglip}",
        "--benchmarks", "mmvp_vlm",
        "--output-dir", str(tmp_path / "board"),
        "--set", f"mmvp_vlm.source={root}",
        "--set", "mmvp_vlm.pairs_per_pattern=3",
        "--set", "progress=false",
    ]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "board" / "results.json").read_text())
    assert main([*argv, "--force"]) == 0
    assert "reused cached results" not in capsys.readouterr().err
    second = json.loads((tmp_path / "board" / "results.json").read_text())

    def numbers(records):
        return sorted((r["model"], r["metric"], r["value"]) for r in records if r["benchmark"] == "mmvp_vlm")

    assert numbers(first) and numbers(first) == numbers(second)
    assert {m for m, _, _ in numbers(first)} == {"clip", "siglip"}
