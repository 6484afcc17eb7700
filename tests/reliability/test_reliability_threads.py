"""The thread plan every command applies (``genhancer.runtime.threads``), decided without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genhancer.runtime.errors import UserError
from genhancer.runtime.threads import launcher_set_omp, plan_threads


def test_cores_are_split_between_the_local_processes():
    assert plan_threads(env={}, cores=8).threads == 8
    assert plan_threads(env={"LOCAL_WORLD_SIZE": "2"}, cores=8).threads == 4
    assert plan_threads(env={"LOCAL_WORLD_SIZE": "3"}, cores=2).threads == 1  # never 0
    assert "8 cores / 2 local processes" in plan_threads(env={"LOCAL_WORLD_SIZE": "2"}, cores=8).reason


def test_the_users_choice_wins_threads_flag_first():
    env = {"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}
    assert plan_threads(env=env, cores=8).threads == 3
    assert plan_threads(5, env=env, cores=8).threads == 5
    assert plan_threads(5, env=env, cores=8).reason == "--threads"


def test_torchruns_default_is_not_the_users_choice():
    worker = {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}
    assert launcher_set_omp(worker, parent_environ=b"PATH=/bin\0HOME=/root\0")
    assert not launcher_set_omp(worker, parent_environ=b"PATH=/bin\0OMP_NUM_THREADS=1\0")
    assert not launcher_set_omp({"OMP_NUM_THREADS": "1"}, parent_environ=b"")  # not under torchrun
    # plan_threads reads /proc/PPID/environ for real: under pytest the parent is no launcher
    assert plan_threads(env={"OMP_NUM_THREADS": "2", "LOCAL_WORLD_SIZE": "2"}, cores=8).threads == 2


@pytest.mark.parametrize(("requested", "env"), [(0, {}), (None, {"OMP_NUM_THREADS": "many"})])
def test_bad_values_are_one_line_errors(requested, env):
    with pytest.raises(UserError, match="must be"):
        plan_threads(requested, env=env, cores=2)


def test_the_plan_needs_no_torch():
    code = "import sys; from genhancer.runtime.threads import plan_threads; plan_threads(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
