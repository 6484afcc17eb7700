"""``python -m eval.reproduce`` end to end at smoke sizes (two seeds, seconds), and its statistics."""

from __future__ import annotations

import json
import math

from eval import reproduce


def test_reproduce_smoke_writes_table_json_and_figures(tmp_model_dirs, tmp_path):
    out = tmp_path / "run"
    argv = ["--protocol", "smoke", "--seeds", "0", "1", "--output-dir", str(out), "--threads", "1"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--vae", str(tmp_model_dirs.vae)]
    assert reproduce.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    for variant in reproduce.VARIANTS:
        table = results["table"][variant]
        for key in ("mmvp/average", "mmvp/orientation", "probe/count", "zeroshot/color", "probe/rare"):
            assert len(table[key]["per_seed_delta"]) == 2
        assert results["tower_change"][variant][0] > 0  # stage 2 moved the image side
    for name in ("fig_attributes.png", "fig_trend_local.png", "fig_trend_stages.png", "results.md"):
        assert (out / name).stat().st_size > 0
    assert "| probe/orientation |" in (out / "results.md").read_text()
    # a rerun reuses the per-seed scores instead of training again
    before = (out / "seed0" / "scores.json").stat().st_mtime_ns
    assert reproduce.main(argv) == 0
    assert (out / "seed0" / "scores.json").stat().st_mtime_ns == before


def test_sign_test_and_paired_t_by_hand():
    up, down, p = reproduce.sign_test([False] * 6 + [True], [True] * 6 + [False])
    assert (up, down) == (6, 1)
    assert math.isclose(p, 2 * (1 + 7) / 2**7)
    assert reproduce.sign_test([True], [True]) == (0, 0, 1.0)
    assert math.isclose(reproduce.paired_t([1.0, 2.0, 3.0]), 0.07417990022744858, rel_tol=1e-6)
    assert math.isnan(reproduce.paired_t([1.0]))


def test_reproduce_head_to_head_smoke(tmp_model_dirs, tiny_sd_dirs, tmp_path):
    """``--methods enhanced diva dcr naive-contrastive`` trains each on the same world and seeds,
    adds the clustering rows and writes the head-to-head table and figure."""
    out = tmp_path / "run"
    argv = ["--protocol", "smoke", "--seeds", "0", "1", "--output-dir", str(out), "--threads", "1"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--vae", str(tmp_model_dirs.vae)]
    argv += ["--methods", *reproduce.HEAD_TO_HEAD]
    for s in (
        f"sd.path={tiny_sd_dirs['v_prediction']}",
        "sd.allow_target_mismatch=true",
        "sd.cross_attention_dim=32",
        "diva.num_tokens=16",
    ):
        argv += ["--method-set", s]
    assert reproduce.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == list(reproduce.HEAD_TO_HEAD)
    for v in reproduce.HEAD_TO_HEAD:
        row = results["table"][v]["cluster/acc_mean"]
        assert len(row["per_seed_delta"]) == 2 and 0 <= row[v][0] <= 100
        assert results["tower_change"][v][0] > 0
    text = (out / "results.md").read_text()
    assert "Head to head" in text and "| cluster/digits_acc |" in text
    assert (out / "fig_methods.png").stat().st_size > 0
