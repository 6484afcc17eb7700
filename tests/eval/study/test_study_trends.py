"""``--part trends``: the knobs' points (shared base, overrides), correlations and aggregation by hand,
and one smoke sweep end to end that a rerun reuses (slow)."""

from __future__ import annotations

import json
import math

import pytest

from eval.study import trends
from eval.study import trends_report as report
from eval.study.config import load_study_config
from eval.study.protocol import enhance_overrides
from genhancer.runtime.errors import UserError


def test_knobs_sweep_around_one_shared_base_point():
    cfg = load_study_config("smoke")  # stage 1: 2 steps; fractions 0.5, 1.0; depths 1, 2; local 0, 0.25
    settings = trends.knob_settings(cfg)
    assert list(settings) == ["stage1", "depth", "local", "stages"]
    base = trends.Point(2, 2, 0.0, False)
    assert [s.point for s in settings["stage1"]] == [trends.Point(1, 2, 0.0, False), base]
    assert [s.point for s in settings["depth"]] == [trends.Point(2, 1, 0.0, False), base]
    assert [s.point for s in settings["local"]] == [base, trends.Point(2, 2, 0.25, False)]
    assert [(s.label, s.point) for s in settings["stages"]] == [
        ("two-stage", base),
        ("one-stage", trends.Point(2, 2, 0.0, True)),
    ]
    points = {s.point for knob in settings.values() for s in knob}
    assert len(points) == 5  # the base is one run, not four
    key = cfg.trends.depth_key
    assert base.name(key) == "s1-2_num_single_layers-2_local-0_two-stage"
    assert base.sets(key) == [f"{key}=2", "backbone.local_token_ratio=0.0"]


def test_stage1_fractions_round_and_deduplicate():
    cfg = load_study_config(
        "smoke", overrides=["trends.stage1_fractions=[0.4, 0.5, 1.0]", "trends.knobs=[stage1]"]
    )
    assert [s.value for s in trends.knob_settings(cfg)["stage1"]] == [1.0, 2.0]  # 0.8 and 1.0 -> 1 step


def test_a_point_overrides_come_last(tmp_path):
    cfg = load_study_config("smoke")
    point = trends.Point(2, 3, 0.5, True)
    sets = enhance_overrides(cfg, tmp_path, 0, point.variant, str(tmp_path), "vae", point.sets("k.depth"))
    assert sets[-2:] == ["k.depth=3", "backbone.local_token_ratio=0.5"]
    assert "train.one_stage=true" in sets and "stage2.steps=4" in sets  # 2 + 2 steps in one stage


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trends.knobs=[size]", "knobs"),
        ("trends.depths=[0]", "depths"),
        ("trends.local_ratios=[1.5]", "local_ratios"),
        ("trends.stage1_fractions=[]", "stage1_fractions"),
    ],
)
def test_bad_trend_values_name_their_key(override, key):
    with pytest.raises(UserError, match=key):
        load_study_config("smoke", overrides=[override])


def _pearson(xs, ys):
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def test_correlation_by_hand():
    xs, ys = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 10.0]
    c = report.correlation(xs, ys)
    assert c["n"] == 5 and c["pearson_r"] == pytest.approx(_pearson(xs, ys))
    assert c["spearman_rho"] == pytest.approx(_pearson([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]))  # ranks
    assert 0 < c["pearson_p"] < 1 and 0 < c["spearman_p"] < 1
    assert report.correlation([1.0, 2.0], [1.0, 2.0])["pearson_r"] is None  # n < 3
    assert report.correlation([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])["spearman_rho"] is None  # constant


def _point(recon, clip, mmvp, rare):
    return {
        "generation": {"recon_loss": recon, "clip_score": clip},
        "metrics": {"mmvp/average": mmvp, "probe/rare": rare},
    }


def test_aggregate_gains_are_against_the_seeds_own_original():
    originals = {0: {"metrics": {"mmvp/average": 10.0, "probe/rare": 40.0}}}
    originals[1] = {"metrics": {"mmvp/average": 20.0, "probe/rare": 50.0}}
    points = {
        0: {
            "a": _point(0.5, 20.0, 11.0, 41.0),
            "b": _point(0.4, 22.0, 10.0, 43.0),
            "c": _point(0.3, 24.0, 9.0, 44.0),
        },
        1: {
            "a": _point(0.6, 19.0, 23.0, 50.0),
            "b": _point(0.5, 21.0, 21.0, 52.0),
            "c": _point(0.2, 25.0, 20.0, 55.0),
        },
    }
    records = {s: {"original": originals[s], "points": points[s]} for s in (0, 1)}
    settings = {"knob": [{"label": x, "value": i, "point": x} for i, x in enumerate("abc")]}
    out = report.aggregate(settings, records)
    row = out["knobs"]["knob"]["settings"][0]
    assert row["per_seed"][0]["Δ mmvp/average"] == 1.0 and row["per_seed"][1]["Δ mmvp/average"] == 3.0
    assert row["mean_std"]["Δ mmvp/average"] == pytest.approx((2.0, math.sqrt(2.0)))
    assert row["mean_std"]["recon_loss"][0] == pytest.approx(0.55)
    corr = {(c["generation"], c["representation"]): c for c in out["knobs"]["knob"]["correlations"]}
    xs = [0.5, 0.6, 0.4, 0.5, 0.3, 0.2]  # setting by setting, seed by seed
    ys = [1.0, 0.0, 3.0, 2.0, 4.0, 5.0]
    assert corr["recon_loss", "Δ probe/rare"]["pearson_r"] == pytest.approx(_pearson(xs, ys))
    assert out["all"]["points"] == 6 and out["original"]["mmvp/average"] == pytest.approx(
        (15.0, math.sqrt(50))
    )
    assert "| a | 0.5500 ± 0.0707 |" in report.markdown(report._json_safe(out | {"seeds": [0, 1]}))


@pytest.mark.slow
def test_trends_smoke_writes_json_table_figures_and_reuses_points(tmp_model_dirs, tmp_path):
    from eval.study.cli import main

    out = tmp_path / "trends"
    argv = [
        "--preset",
        "smoke",
        "--part",
        "trends",
        "--seeds",
        "0",
        "--threads",
        "1",
        "--output-dir",
        str(out),
    ]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--vae", str(tmp_model_dirs.vae)]
    argv += ["--set", f"trends.judge={tmp_model_dirs.clip}"]
    assert main(argv) == 0
    result = json.loads((out / "trends.json").read_text())
    assert set(result["knobs"]) == {"stage1", "depth", "local", "stages"}
    for knob in result["knobs"].values():
        assert len(knob["settings"]) == 2
        for s in knob["settings"]:
            m = s["mean_std"]
            assert m["recon_loss"][0] > 0 and -100 <= m["clip_score"][0] <= 100 and "Δ probe/rare" in m
    assert result["all"]["points"] == 5
    records = sorted((out / "seed0").glob("s1-*.json"))
    assert len(records) == 5 and (out / "seed0" / "original.json").is_file()  # the base trained once
    text = (out / "trends.md").read_text()
    assert "## local-token ratio" in text and "| recon_loss | Δ probe/rare |" in text
    for knob in result["knobs"]:
        assert (out / f"trends_{knob}.png").read_bytes()[:4] == b"\x89PNG"
    before = {p: p.stat().st_mtime_ns for p in records}
    assert main(argv) == 0  # a finished point is reused, not trained or scored again
    assert {p: p.stat().st_mtime_ns for p in records} == before
