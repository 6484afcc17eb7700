"""Published numbers copied as data: internal consistency and model matching."""

from __future__ import annotations

import json

import pytest

from eval.clip.mmvp_vlm import PATTERN_KEYS
from eval.paper_numbers import (
    CLUSTERING_DATASETS,
    CLUSTERING_METRICS,
    DCR_CLUSTERING,
    DCR_MMVP_VLM,
    LLAVA_ROWS,
    MMVP_VLM,
    TABLE2_COLUMNS,
    ZEROSHOT,
    match_paper_row,
    match_paper_rows,
)


def _pattern_mean(nums: dict) -> float:
    """The mean of a Table-1 row's nine patterns, each snapped to k/15 first (15 pairs a pattern;
    the paper prints one "13.0")."""
    return sum(round(nums[k] * 15 / 100) * 100 / 15 for k in PATTERN_KEYS) / 9


@pytest.mark.parametrize("row", [k for k, v in MMVP_VLM.items() if len(v) > 1])
def test_table1_average_is_the_mean_of_its_patterns(row):
    nums = MMVP_VLM[row]
    assert abs(_pattern_mean(nums) - nums["average"]) <= 0.05 + 1e-9


@pytest.mark.parametrize("row", [k for k, v in DCR_MMVP_VLM.items() if len(v) > 1])
def test_dcr_table1_average_is_within_a_print_step_of_its_patterns(row):
    nums = DCR_MMVP_VLM[row]
    # the DCR paper sometimes rounds down (19.26 printed 19.2, 31.85 as 31.8), sometimes not (41.48: 41.5)
    assert abs(_pattern_mean(nums) - nums["average"]) < 0.1 + 1e-9


def test_dcr_reprints_genhancer_table1_patterns():
    for row, nums in DCR_MMVP_VLM.items():
        backbone, res, method = row
        ours = {"GenHancer": "GenHancer (continuous)"}.get(method, method)
        if (backbone, res, ours) in MMVP_VLM:
            theirs = MMVP_VLM[backbone, res, ours]
            assert [nums[k] for k in PATTERN_KEYS] == [theirs[k] for k in PATTERN_KEYS], row


@pytest.mark.parametrize("row", [k for k, v in DCR_CLUSTERING.items() if len(v) > 3])
def test_dcr_table2_average_is_the_mean_of_its_six_datasets(row):
    nums = DCR_CLUSTERING[row]
    assert len(nums) == 3 * 7
    for m in CLUSTERING_METRICS:
        mean = sum(nums[f"{d}/{m}"] for d in CLUSTERING_DATASETS) / 6
        assert abs(mean - nums[f"average/{m}"]) <= 0.01 + 1e-9, (row, m)


def test_dcr_o1_is_openai_vit_l_224():
    # Tables 4 and 7 (ViT-L@224 ablations) print the same DCR averages as Table 2's O-1 row
    assert DCR_CLUSTERING["OpenAI ViT-L/14", 224, "DCR"]["average/acc"] == 0.67
    assert DCR_MMVP_VLM["OpenAI ViT-L/14", 224, "DCR"]["average"] == 33.3


def test_llava_rows_follow_the_table2_columns():
    assert all(len(nums) == len(TABLE2_COLUMNS) for _, _, nums in LLAVA_ROWS)
    un2clip = dict((t, n) for t, _, n in LLAVA_ROWS)["un2CLIP"]
    assert un2clip[1:5] == (None,) * 4 and un2clip[0] == 31.3  # NaturalBench not reported


def test_every_original_row_has_published_numbers():
    for (label, res, method), nums in MMVP_VLM.items():
        if method == "original":
            assert set(nums) == {*PATTERN_KEYS, "average"}, (label, res)
    assert len(ZEROSHOT[("OpenAI ViT-L/14", 224, "original")]) == 8


def test_matching(tmp_path):
    assert match_paper_row("openai/clip-vit-large-patch14").method == "original"
    assert match_paper_row("google/siglip-so400m-patch14-384").resolution == 384
    assert match_paper_row("genhancer-tiny:clip") is None
    run = tmp_path / "run"
    (run / "export" / "denoiser").mkdir(parents=True)
    (run / "export" / "denoiser" / "genhancer.json").write_text(
        json.dumps(
            {
                "backbone": {"name_or_path": "google/siglip-so400m-patch14-224"},
                "denoiser": {"kind": "discrete"},
            }
        )
    )
    row = match_paper_row(str(run / "export" / "hf"))
    assert row.method == "GenHancer (discrete)" and row.numbers["mmvp_vlm"] == {"average": 45.2}
    assert match_paper_row(str(run)).method == "GenHancer (discrete)"


def _export(tmp_path, method=None, backbone="openai/clip-vit-large-patch14"):
    run = tmp_path / "run"
    (run / "export" / "denoiser").mkdir(parents=True)
    (run / "export" / "denoiser" / "genhancer.json").write_text(
        json.dumps({"backbone": {"name_or_path": backbone}, "denoiser": {"kind": "continuous"}})
    )
    if method:
        (run / "export" / "genhancer_export.json").write_text(json.dumps({"method": method}))
    return str(run / "export" / "hf")


@pytest.mark.parametrize(
    "method, want",
    [
        (None, [("GenHancer", "GenHancer (continuous)"), ("DCR", "GenHancer")]),
        ("genhancer", [("GenHancer", "GenHancer (continuous)"), ("DCR", "GenHancer")]),
        ("diva", [("GenHancer", "DIVA"), ("DCR", "DIVA")]),
        ("dcr", [("DCR", "DCR")]),
        ("naive-contrastive", [("DCR", "Naive")]),
    ],
)
def test_the_export_method_picks_each_papers_row(tmp_path, method, want):
    rows = match_paper_rows(_export(tmp_path, method))
    assert [(r.paper, r.method) for r in rows] == want
    if method == "dcr":
        assert set(rows[0].numbers) == {"mmvp_vlm", "clustering"}
        assert rows[0].sourced_label == "paper (DCR): OpenAI ViT-L/14@224 DCR"
    if method == "naive-contrastive":
        assert rows[0].numbers == {"mmvp_vlm": {"average": 22.96}, "clustering": DCR_CLUSTERING[rows[0].key]}


def test_original_towers_match_both_papers():
    rows = match_paper_rows("openai/clip-vit-large-patch14")
    assert [(r.paper, r.numbers["mmvp_vlm"]["average"]) for r in rows] == [("GenHancer", 19.3), ("DCR", 19.2)]
    assert "clustering" in rows[1].numbers and "zeroshot" in rows[0].numbers
    assert match_paper_rows("genhancer-tiny:clip") == []
