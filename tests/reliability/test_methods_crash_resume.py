"""SIGKILL a real ``enhance --method dcr|diva`` subprocess at seeded moments (while checkpoints are
half written, and at random), resume, repeat: the final checkpoint, the exports and the logged
losses are bit-identical to an uninterrupted run -- the guarantee GenHancer has, for the methods
that train through a frozen SD (their checkpoints hold no UNet; it reloads)."""

from __future__ import annotations

import pytest
from testkit import load_test_module

crash = load_test_module("reliability/test_reliability_crash_resume.py", "_genhancer_tests_crash_resume")
root = load_test_module("conftest.py", "_genhancer_tests_root_conftest")


def method_cli_args(tmp_model_dirs, tiny_sd_dirs, method: str, *overrides: str) -> list[str]:
    sd = tiny_sd_dirs["epsilon" if method == "diva" else "v_prediction"]
    sets = [*root.tiny_method_sets(tmp_model_dirs, method, sd), "logging.preview_count=0", *overrides]
    out = ["--method", method, "--preset", "tiny"]
    for s in sets:
        out += ["--set", s]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dcr", "diva"])
def test_method_sigkill_at_random_moments_then_resume_is_identical(
    tmp_path, tmp_model_dirs, tiny_sd_dirs, method
):
    last_stage = ["stage1", "stage2"] if method == "dcr" else ["stage2"]
    args = method_cli_args(
        tmp_model_dirs, tiny_sd_dirs, method, "stage1.steps=3", "stage2.steps=3", "checkpoint.keep_last=20"
    )
    wall = crash.run_straight("enhance", args, tmp_path / "straight")
    plan = [("tmp", 2), *crash.make_plan(0, 3, wall)]
    stats = crash.run_with_kills("enhance", args, tmp_path / "killed", plan)
    assert stats["kills"] >= 1 and stats["tmp_kills"] >= 1, stats
    a, b = tmp_path / "straight", tmp_path / "killed"
    assert [k[0] for k in crash._losses(a)] == [s for s in last_stage for _ in range(3)]
    crash._assert_enhance_identical(a, b, "stage2_step0000003")
