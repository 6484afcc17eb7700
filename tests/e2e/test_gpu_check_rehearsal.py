"""The GPU check rehearsed on the CPU with our locked torch: bench/gpu_check.sh installs a wheel
folder into a side directory (a wheel built here, so no index is needed), runs the tiny chain,
train_step at batch 2 and the largest batch, and the memory plan, and writes the JSON and markdown
report that a GPU run writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import subprocess_env

REPO = Path(__file__).resolve().parents[2]


def _dummy_wheel(tmp: Path) -> Path:
    """A one-module wheel built by pip from a local project (offline)."""
    proj = tmp / "proj"
    (proj / "gpucheck_probe").mkdir(parents=True)
    (proj / "gpucheck_probe" / "__init__.py").write_text("VALUE = 42\n")
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "gpucheck-probe"\nversion = "1.0"\n'
    )
    wheels = tmp / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(proj),
        ],
        check=True,
        capture_output=True,
    )
    return wheels


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu(tmp_path):
    wheels = _dummy_wheel(tmp_path)
    out = tmp_path / "out"
    env = subprocess_env() | {"PYTHON": sys.executable, "GPU_CHECK_SITE": str(tmp_path / "site")}
    proc = subprocess.run(
        [
            str(REPO / "bench" / "gpu_check.sh"),
            "--wheels",
            str(wheels),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--methods",
            "genhancer",
            "--budget-s",
            "1500",
            "--max-batch",
            "4",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=2700,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    failed = [s for s in report["steps"] if s["status"] != "ok"]
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-3000:])
    assert report["environment"]["wheels_installed"] == ["gpucheck_probe-1.0-py3-none-any.whl"]
    assert (tmp_path / "site" / "gpucheck_probe" / "__init__.py").is_file()
    names = [s["step"] for s in report["steps"]]
    assert names == [
        "memory plan (enhance --describe)",
        "train_step genhancer stage 1 batch 2",
        "train_step genhancer stage 1 batch 4",  # the plan's largest batch, capped by --max-batch
        "train_step genhancer stage 2 batch 2",
        "train_step genhancer stage 2 batch 4",
        "tiny enhance --method genhancer",
        "tiny llava-train",
        "tiny leaderboard",
    ]
    rows = report["train_and_memory"]
    assert {(r["stage"], r["batch"]) for r in rows} == {(1, 2), (1, 4), (2, 2), (2, 4)}
    assert all(r["planned_gib"] > 0 and r["images_per_s"] > 0 and r["plan_max_micro_batch"] > 4 for r in rows)
    board = json.loads((out / "work" / "board" / "results.json").read_text())
    assert {r["model"] for r in board} >= {"enhanced"}
    md = (out / "gpu_check.md").read_text()
    assert "| train_step genhancer stage 2 batch 4 | ok |" in md and "measured peak GiB" in md
