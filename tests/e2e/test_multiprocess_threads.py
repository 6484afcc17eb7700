"""Two processes on one machine share its cores: ``torchrun --nproc_per_node 2`` without
``OMP_NUM_THREADS`` gives each ``enhance`` process cores // 2 torch threads (torchrun's own default
of 1, which it sets when the variable is unset, is not taken for the user's choice), and the
choice is logged once; ``--threads`` wins over everything."""

from __future__ import annotations

import subprocess
import sys

import pytest
from testkit import subprocess_env, tiny_enhance_flags, torchrun

pytestmark = pytest.mark.slow

_PROBE = """
import os, sys
from pathlib import Path
import torch
from enhance.cli import main
rc = main(sys.argv[1:])
Path(os.environ["THREADS_OUT"], os.environ["LOCAL_RANK"]).write_text(str(torch.get_num_threads()))
sys.exit(rc)
"""


def _env() -> dict[str, str]:
    env = subprocess_env()
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(key)
    return env


def _machine_width() -> int:
    """Cores as the helper counts them: the affinity set, capped by torch's physical-core default."""
    code = "import os, torch; print(min(len(os.sched_getaffinity(0)), torch.get_num_threads()))"
    return int(
        subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True).stdout
    )


def _two(tmp_path, tmp_model_dirs, name: str, *extra: str) -> tuple[dict[str, int], str]:
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE)
    flags = tiny_enhance_flags(
        tmp_model_dirs,
        "train.stages=[1]",
        "stage1.steps=2",
        "stage1.global_batch_size=8",
        "stage1.per_device_batch_size=4",
        "logging.progress=false",
        "logging.preview_count=0",
    )
    cmd = [*torchrun(2), str(probe), *flags, *extra, "--output-dir", str(tmp_path / name)]
    out = tmp_path / f"{name}_threads"
    out.mkdir()
    proc = subprocess.run(
        cmd, env={**_env(), "THREADS_OUT": str(out)}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {p.name: int(p.read_text()) for p in out.iterdir()}
    return ranks, proc.stderr


def test_two_processes_split_the_cores_and_say_so_once(tmp_path, tmp_model_dirs):
    ranks, err = _two(tmp_path, tmp_model_dirs, "auto")
    want = max(1, _machine_width() // 2)
    assert ranks == {"0": want, "1": want}
    said = [line for line in err.splitlines() if "torch threads per process" in line]
    assert len(said) == 1 and f"per process: {want} (" in said[0] and "2 local processes" in said[0], said

    ranks, err = _two(tmp_path, tmp_model_dirs, "flag", "--threads", "1")
    assert ranks == {"0": 1, "1": 1}
    assert "torch threads per process: 1 (--threads)" in err
