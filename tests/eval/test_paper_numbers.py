"""Published numbers copied as data: internal consistency and model matching."""

from __future__ import annotations

import json

import pytest

from eval.clip.mmvp_vlm import PATTERN_KEYS
from eval.paper_numbers import MMVP_VLM, ZEROSHOT, match_paper_row


@pytest.mark.parametrize("row", [k for k, v in MMVP_VLM.items() if len(v) > 1])
def test_table1_average_is_the_mean_of_its_patterns(row):
    nums = MMVP_VLM[row]
    # each pattern has 15 pairs: snap to k/15 (the paper prints one "13.0"), then average
    exact = [round(nums[k] * 15 / 100) * 100 / 15 for k in PATTERN_KEYS]
    assert abs(sum(exact) / 9 - nums["average"]) <= 0.05 + 1e-9


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
