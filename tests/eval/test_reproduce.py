"""The small-scale study (``python -m eval.study``, also ``python -m eval.reproduce``) end to end
at smoke sizes (two seeds, seconds per run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval.study.cli import main
from eval.study.config import GENHANCER_VARIANTS, HEAD_TO_HEAD


@pytest.mark.slow
def test_reproduce_smoke_writes_table_json_and_figures(tmp_model_dirs, tmp_path):
    out = tmp_path / "run"
    argv = ["--protocol", "smoke", "--seeds", "0", "1", "--output-dir", str(out), "--threads", "1"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--vae", str(tmp_model_dirs.vae)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    for variant in GENHANCER_VARIANTS:
        table = results["table"][variant]
        for key in ("mmvp/average", "mmvp/orientation", "probe/count", "zeroshot/color", "probe/rare"):
            assert len(table[key]["per_seed_delta"]) == 2
        assert results["tower_change"][variant][0] > 0  # stage 2 moved the image side
    for name in ("fig_attributes.png", "fig_trend_local.png", "fig_trend_stages.png", "results.md"):
        assert (out / name).stat().st_size > 0
    assert "| probe/orientation |" in (out / "results.md").read_text()
    # a rerun reuses the per-seed scores instead of training again
    before = (out / "seed0" / "scores.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "seed0" / "scores.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_reproduce_head_to_head_and_control_smoke(tmp_model_dirs, tiny_sd_dirs, tmp_path):
    """The head to head plus DCR at its own lr ratio and the positive control: each trains on the
    same world and seeds, gets the clustering rows, and the table and figure are written."""
    out = tmp_path / "run"
    variants = [*HEAD_TO_HEAD, "dcr-own-lr", "supervised-rare"]
    argv = ["--protocol", "smoke", "--seeds", "0", "1", "--output-dir", str(out), "--threads", "1"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--vae", str(tmp_model_dirs.vae)]
    argv += ["--methods", *variants]
    for s in (
        f"sd.path={tiny_sd_dirs['v_prediction']}",
        "sd.allow_target_mismatch=true",
        "sd.cross_attention_dim=32",
        "diva:diva.num_tokens=16",
    ):
        argv += ["--method-set", s]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == variants
    for v in variants:
        row = results["table"][v]["cluster/acc_mean"]
        assert len(row["per_seed_delta"]) == 2 and 0 <= row[v][0] <= 100
        assert results["tower_change"][v][0] > 0
    text = (out / "results.md").read_text()
    assert "Head to head" in text and "| cluster/digits_acc |" in text
    assert (out / "fig_methods.png").stat().st_size > 0


def test_old_entry_point_and_bad_input():
    help_text = subprocess.run(
        [sys.executable, "-m", "eval.reproduce", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--preset" in help_text and "--part" in help_text
    bad = subprocess.run(
        [sys.executable, "-m", "eval.reproduce", "--set", "methods=[nope]"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "methods" in bad.stderr and bad.stderr.count("\n") == 1
