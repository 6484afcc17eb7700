"""``leaderboard --mllm``: the six MLLM benchmarks through lmms-eval on toy fixtures, Table 2
layout, audit logs, caching, resume after an interruption, bad input."""

from __future__ import annotations

import json

import pytest

from eval.cli import main

SIX = "mmvp,cv_bench,naturalbench,pope,hallusion_bench,scienceqa_img"
SMALL = ["--set", "progress=false", "--set", "lmms.max_new_tokens=4", "--set", "lmms.batch_size=4"]


@pytest.fixture(scope="module")
def board(tiny_llava_dir, mllm_recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("mllm_board")
    small = [*SMALL, *[a for k, v in mllm_recipe.items() for a in ("--set", f"lmms.fixtures.{k}={v}")]]
    argv = [
        "--preset",
        "tiny",
        "--mllm",
        f"tiny={tiny_llava_dir}",
        "--benchmarks",
        SIX,
        "--output-dir",
        str(out),
        *small,
    ]
    assert main(argv) == 0
    return out, argv


def test_all_six_benchmarks_are_recorded_with_provenance(board):
    out, _ = board
    records = json.loads((out / "results.json").read_text())
    assert {r["benchmark"] for r in records} == set(SIX.split(","))
    metrics = {(r["benchmark"], r["metric"]) for r in records}
    for want in [
        ("mmvp", "pair_accuracy"),
        ("cv_bench", "overall"),
        ("naturalbench", "G_Acc"),
        ("naturalbench", "gen_Acc"),
        ("pope", "adversarial/f1"),
        ("pope", "random/yes_ratio"),
        ("hallusion_bench", "avg"),
        ("scienceqa_img", "accuracy"),
    ]:
        assert want in metrics
    for r in records:
        assert (
            r["model_kind"] == "mllm"
            and r["lmms_eval_version"] == "0.7.3"
            and r["dataset"].startswith("toy:")
        )
        assert 0.0 <= r["value"] <= 100.0 and r["tasks"][0].startswith("genhancer_")
    mmvp = next(r for r in records if r["benchmark"] == "mmvp")
    assert mmvp["answer_key"] == "lmms-lab-eval" and mmvp["counts"]["questions"] == 6
    # HallusionBench over both splits; every record says how many rows of the official size it holds.
    hb = next(r for r in records if r["benchmark"] == "hallusion_bench")
    assert hb["tasks"] == ["genhancer_hallusion_bench_image", "genhancer_hallusion_bench_non_image"]
    assert hb["rows_per_task"] == {
        "genhancer_hallusion_bench_image": 8,
        "genhancer_hallusion_bench_non_image": 2,
    }
    assert hb["counts"]["questions"] == 10 and hb["official_rows"] == 1129
    assert all(r["complete"] is False and r["row_problems"] == [] for r in records)  # toy sizes, clean rows
    nb = {r["metric"]: r for r in records if r["benchmark"] == "naturalbench"}
    assert nb["G_Acc"]["rows_per_task"] == {"genhancer_naturalbench_lik": 8}
    assert nb["gen_G_Acc"]["rows_per_task"] == {"genhancer_naturalbench": 8}
    md = (out / "leaderboard.md").read_text()
    assert "Coverage: tiny: partial: 10 of 1129 rows" in md and "† = partial run" in md


def test_audit_logs_and_table2_layout(board):
    out, _ = board
    md = (out / "leaderboard.md").read_text()
    assert "| model | MMVP | NB Acc | NB Q | NB I | NB G | CV-2D ADE" in md
    assert "| *paper (GenHancer Tab. 2, DCR Tab. 3): LLaVA-1.5 Vicuna-7B, GenHancer tower* | *30.7* |" in md
    assert (
        "| *paper (DCR Tab. 3): LLaVA-1.5 Vicuna-7B, un2CLIP tower* | *31.3* | – | – | – | – | *53.9* |" in md
    )
    audit = out / "mllm" / "tiny" / "pope"
    (key_dir,) = list(audit.iterdir())
    names = {p.name for p in key_dir.iterdir()}
    assert {"responses.jsonl", "harness.json", "samples_genhancer_pope_adv.jsonl"} <= names
    row = json.loads((key_dir / "samples_genhancer_pope_adv.jsonl").read_text().splitlines()[0])
    assert (
        row["doc"]["category"] == "adversarial"
        and row["doc"]["question_id"]
        and row["input"].startswith("Is there")
    )


def test_mmvp_per_pattern_table_intervals_and_recorded_judge(board):
    """The fixture's pair-to-pattern map gives MMVP a per-pattern table; MLLM numbers carry
    intervals over their units; the HallusionBench judge is recorded (rule: the offline default)."""
    out, _ = board
    records = json.loads((out / "results.json").read_text())
    by = {(r["benchmark"], r["metric"]): r for r in records}
    patterns = {m for b, m in by if b == "mmvp" and m.startswith("pattern/")}
    assert patterns == {"pattern/color", "pattern/quantity", "pattern/position"}  # 3 toy pairs, one each
    for m in patterns:
        assert by["mmvp", m]["value"] in (0.0, 100.0) and by["mmvp", m]["ci"]["unit"] == "pair"
        assert by["mmvp", m]["pattern_map"].endswith("patterns.csv")
    assert by["naturalbench", "G_Acc"]["ci"]["unit"] == "group"
    assert by["hallusion_bench", "fAcc"]["ci"]["unit"] == "figure"
    assert by["pope", "adversarial/f1"]["ci"] is None  # F1 is not a mean over units: n/a
    assert all(r["judge"] == "rule" for r in records if r["benchmark"] == "hallusion_bench")
    md = (out / "leaderboard.md").read_text()
    assert "## mmvp_patterns: MMVP per visual pattern" in md
    assert "| model | quantity | position | color |" in md  # paper Table 1 order
    assert "Judge: tiny: rule (rule = first yes/no word, the offline default)." in md
    assert "G_Acc (groups)" in md and "pair_accuracy (pairs)" in md


def test_rerun_reuses_cached_results(board, capsys):
    out, argv = board
    assert main(argv) == 0
    assert "reused cached results for tiny/mmvp" in capsys.readouterr().err


def test_interrupted_benchmark_resumes_from_the_response_log(board, monkeypatch):
    """Results lost (as after a crash before the benchmark finished): the rerun does not call the model."""
    from llava_integration.inference import LlavaRunner

    out, argv = board
    before = {
        (r["benchmark"], r["metric"]): r["value"] for r in json.loads((out / "results.json").read_text())
    }
    (out / "results.json").unlink()

    def boom(*a, **k):
        raise AssertionError("model called for a logged reply")

    monkeypatch.setattr(LlavaRunner, "generate", boom)
    monkeypatch.setattr(LlavaRunner, "choice_likelihood", boom)
    assert main([*argv[:5], "pope,naturalbench", *argv[6:]]) == 0
    after = {
        (r["benchmark"], r["metric"]): r["value"] for r in json.loads((out / "results.json").read_text())
    }
    assert after and all(before[k] == v for k, v in after.items())


def _expect_2(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_input(tiny_llava_dir, mllm_fixture_root, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "o")]
    err = _expect_2(["--mllm", f"m={tiny_llava_dir}", "--benchmarks", "pope,mme", *out], capsys)
    assert "unknown benchmark 'mme'" in err and "hallusion_bench" in err and "mmvp_vlm" in err
    err = _expect_2(["--mllm", f"m={tmp_path}", "--benchmarks", "pope", *out], capsys)
    assert "is not a LLaVA checkpoint" in err
    err = _expect_2(["--clip", "c=genhancer-tiny:clip", "--benchmarks", "pope", *out], capsys)
    assert "needs a mllm model" in err
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mllm_fixture_root / "mmvp", root / "mmvp")
    (root / "mmvp" / "train.parquet").rename(root / "mmvp" / "other.parquet")
    err = _expect_2(
        ["--mllm", f"m={tiny_llava_dir}", "--benchmarks", "mmvp", "--data-root", str(root), *out], capsys
    )
    assert "mmvp/train.parquet" in err
