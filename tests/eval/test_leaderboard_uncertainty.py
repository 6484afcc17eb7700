"""Every board number with its bootstrap interval and every two towers with a paired test:
in results.json and leaderboard.md; old records without per-item results read n/a; runs of one
configuration averaged to mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import binomtest
from testkit import set_flags

from eval.cli import main
from eval.leaderboard import RECORD_VERSION, ResultsStore, aggregate_runs, annotate_uncertainty
from eval.report import render_markdown
from eval.stats import Items, items_interval

SMALL = set_flags(["progress=false", "fixtures.image_size=32", "fixtures.pairs_per_pattern=3"])


@pytest.fixture(scope="module")
def mmvp_board(tmp_model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uboard")
    argv = ["--preset", "tiny", "--clip", f"clip={tmp_model_dirs.clip}", f"siglip={tmp_model_dirs.siglip}"]
    argv += ["--benchmarks", "mmvp_vlm", "--output-dir", str(out), *SMALL]
    assert main(argv) == 0
    return out


def test_records_carry_items_intervals_and_paired_tests(mmvp_board):
    records = json.loads((mmvp_board / "results.json").read_text())
    by = {(r["model"], r["metric"]): r for r in records}
    avg = by["siglip", "average"]
    assert avg["record_version"] == RECORD_VERSION
    items = Items.from_json(avg["items"])
    assert items is not None and items.unit == "pair" and len(items.scores) == 27  # 9 patterns x 3
    assert items.value() == pytest.approx(avg["value"], abs=0.05)  # the record rounds to 0.1
    assert (avg["ci"]["low"], avg["ci"]["high"]) == pytest.approx(items_interval(items, 0.95, 2000, 0))
    assert avg["ci"]["low"] <= avg["value"] <= avg["ci"]["high"]
    assert avg["ci"]["unit"] == "pair" and avg["ci"]["n"] == 27
    # the paired test, recomputed by hand from both towers' pair results
    a = dict(
        zip(by["clip", "average"]["items"]["ids"], by["clip", "average"]["items"]["scores"], strict=True)
    )
    b = dict(zip(items.ids, items.scores, strict=True))
    better = sum(b[i] > a[i] for i in a)
    worse = sum(b[i] < a[i] for i in a)
    test = avg["paired"]["clip"]
    assert (test["better"], test["worse"], test["n"]) == (better, worse, 27)
    expected = binomtest(min(better, worse), better + worse, 0.5).pvalue if better + worse else 1.0
    assert test["p"] == pytest.approx(expected)
    assert by["clip", "average"]["paired"]["siglip"]["better"] == worse  # the other direction


def test_markdown_shows_intervals_and_paired_p_for_both_towers(mmvp_board):
    md = (mmvp_board / "leaderboard.md").read_text()
    records = json.loads((mmvp_board / "results.json").read_text())
    by = {(r["model"], r["metric"]): r for r in records}
    assert "95 % intervals (percentile bootstrap" in md and "average (pairs)" in md
    for model in ("clip", "siglip"):
        ci = by[model, "average"]["ci"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {model} | ") and "–" in line)
        assert f"{ci['low']:.1f}–{ci['high']:.1f}" in row
    t = by["siglip", "average"]["paired"]["clip"]
    row = next(line for line in md.splitlines() if line.startswith("| clip → siglip |"))
    assert f"+{t['better']}/−{t['worse']}" in row and "p " in row


def test_old_records_without_items_read_na_and_do_not_crash(tmp_path):
    old = [
        {
            "model": m,
            "benchmark": "mmvp_vlm",
            "metric": "average",
            "value": v,
            "dataset": "d",
            "revision": "r",
        }
        for m, v in (("a", 40.0), ("b", 50.0))
    ]
    (tmp_path / "results.json").write_text(json.dumps(old))
    store = ResultsStore(tmp_path / "results.json")
    assert all(r["record_version"] == RECORD_VERSION and r["migrated_from"] == 1 for r in store.records)
    annotate_uncertainty(store.records)
    assert all(r["ci"] is None and r["paired"] == {} for r in store.records)
    md = render_markdown(store.records)
    assert "Intervals and paired tests: n/a" in md
    # a mixed board: one model with items, one without -> n/a in that model's cells
    store.records[1]["items"] = Items("pair", [1, 2, 3, 4], [1, 0, 1, 0]).to_json()
    annotate_uncertainty(store.records)
    md = render_markdown(store.records)
    assert "| a | n/a |" in md and "| b | " in md


def _rec(model: str, metric: str, value: float, runs_of: str | None = None) -> dict:
    r = {"model": model, "benchmark": "mmvp_vlm", "metric": metric, "value": value, "dataset": "d"}
    r["revision"], r["model_kind"] = "r", "clip"
    return {**r, "runs_of": runs_of} if runs_of else r


def test_runs_of_one_configuration_aggregate_to_mean_and_std():
    recs = [_rec("orig", "average", 30.0)]
    recs += [_rec(f"enh#{i}", "average", v, "enh") for i, v in enumerate((40.0, 44.0, 48.0), start=1)]
    recs += [_rec("enh#1", "color", 10.0, "enh")]  # not every run has it: no mean
    out = aggregate_runs(recs)
    agg = [r for r in out if r["model"] == "enh"]
    assert len(agg) == 1 and agg[0]["value"] == pytest.approx(44.0)
    assert agg[0]["runs"] == {"n": 3, "std": pytest.approx(4.0), "members": ["enh#1", "enh#2", "enh#3"]}
    assert len([r for r in aggregate_runs(out) if r["model"] == "enh"]) == 1  # rerun replaces, no pile-up
    md = render_markdown(annotate_uncertainty(out))
    assert "| enh | – | 44.0 ± 4.0 |" in md.replace("**", "")


def test_cli_run_list_scores_each_run_and_the_mean(tmp_model_dirs, tmp_path):
    out = tmp_path / "b"
    argv = ["--preset", "tiny", "--clip", f"enh={tmp_model_dirs.clip},{tmp_model_dirs.clip}"]
    argv += ["--benchmarks", "mmvp_vlm", "--output-dir", str(out), *SMALL]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records} == {"enh#1", "enh#2", "enh"}
    avg = {r["model"]: r for r in records if r["metric"] == "average"}
    assert avg["enh"]["value"] == pytest.approx(avg["enh#1"]["value"])
    assert avg["enh"]["runs"]["std"] == 0.0  # the same tower twice
    assert avg["enh#2"]["paired"]["enh#1"]["better"] == 0 and avg["enh#2"]["paired"]["enh#1"]["p"] == 1.0
    assert main(["--clip", "enh=a,", "--output-dir", str(out)]) == 2


def test_intervals_are_reused_while_their_settings_match(monkeypatch):
    from eval import leaderboard
    from eval.config import UncertaintyConfig

    recs = [_rec("a", "average", 50.0), _rec("b", "average", 75.0)]
    recs[0]["items"] = Items("pair", [1, 2, 3, 4], [1, 0, 1, 0]).to_json()
    recs[1]["items"] = Items("pair", [1, 2, 3, 4], [1, 1, 1, 0]).to_json()
    annotate_uncertainty(recs)
    before = [dict(r["ci"]) for r in recs]

    def boom(*a, **k):
        raise AssertionError("interval recomputed")

    monkeypatch.setattr(leaderboard, "items_interval", boom)
    annotate_uncertainty(recs)
    assert [r["ci"] for r in recs] == before and recs[1]["paired"]["a"]["better"] == 1
    with pytest.raises(AssertionError, match="recomputed"):
        annotate_uncertainty(recs, UncertaintyConfig(seed=1))


def test_the_plan_decides_before_any_model_loads(mmvp_board, tmp_model_dirs, monkeypatch):
    """``plan_leaderboard`` prepares data and decides compute vs reuse without loading a model;
    on a board that already holds both towers' numbers it computes nothing."""
    from eval import leaderboard
    from eval.config import load_config

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded while planning")

    monkeypatch.setattr(leaderboard, "_load_model", no_load)
    cfg = load_config(
        "tiny", None, ["progress=false", "fixtures.image_size=32", "fixtures.pairs_per_pattern=3"]
    )
    models = [
        leaderboard.ModelSpec("clip", str(tmp_model_dirs.clip)),
        leaderboard.ModelSpec("siglip", str(tmp_model_dirs.siglip)),
    ]
    plan = leaderboard.plan_leaderboard(cfg, models, mmvp_board, ["mmvp_vlm"])
    assert plan.describe() == {"compute": [], "reuse": [["clip", "mmvp_vlm"], ["siglip", "mmvp_vlm"]]}
    forced = leaderboard.plan_leaderboard(cfg, models, mmvp_board, ["mmvp_vlm"], force=True)
    assert forced.describe()["compute"] == [["clip", "mmvp_vlm"], ["siglip", "mmvp_vlm"]]
    assert leaderboard.execute_plan(plan).computed == []  # reuses: still no model load


def test_a_tower_and_an_mllm_of_one_name_keep_their_own_benchmarks():
    """``--clip enhanced=... --mllm enhanced=...`` is the quickstart's shape: the CLIP tower must never
    be handed an MLLM benchmark because the MLLM of the same name has a key for it."""
    from eval import leaderboard
    from eval.benchmarks import get_benchmark

    clip, mllm = leaderboard.ModelSpec("enhanced", "a"), leaderboard.ModelSpec("enhanced", "b", kind="mllm")
    vlm, pope = get_benchmark("mmvp_vlm"), get_benchmark("pope")
    keys = {("enhanced", "mmvp_vlm"): "k1", ("enhanced", "pope"): "k2"}
    plan = leaderboard.LeaderboardPlan(
        None, [clip, mllm], [vlm, pope], None, None, {}, {}, keys, list(keys), {}, Path("."), None
    )
    assert [plan.applies(m, b) for m in (clip, mllm) for b in (vlm, pope)] == [True, False, False, True]
    assert plan.describe()["compute"] == [["enhanced", "mmvp_vlm"], ["enhanced", "pope"]]
