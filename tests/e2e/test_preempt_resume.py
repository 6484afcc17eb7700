"""Preemption: a signal to a running job checkpoints it at the next step boundary; ``--resume``
then finishes it exactly as if nothing had happened.

Two CPU processes under ``torchrun`` (started, like the sbatch template in ``docs/cluster.md``
does, with SIGUSR1 ignored by the launcher, so only the workers act on it). SIGUSR1 goes to rank 1
alone, mid-run: both ranks must stop at the same step (their agreement is the collective in
``genhancer.runtime.preempt``), rank 0 writes ``DIR/preempted.json``, the launcher exits non-zero.
The resumed run's metrics and exported tower equal an uninterrupted run's bit for bit.

One process receiving SIGTERM exits with the requeue code 75 itself; it is then resumed on two
processes (elastic resume, see ``test_elastic_resume.py``: same curve within rounding).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from testkit import STEPWISE_SETS, TOWER_WEIGHTS, stage1_command, subprocess_env

pytestmark = pytest.mark.slow

STEPS = 12
SETS = [
    f"stage1.steps={STEPS}",
    "stage1.global_batch_size=8",
    "stage1.per_device_batch_size=4",
    "checkpoint.every=100",  # only the checkpoints a signal asks for, and the final one
    *STEPWISE_SETS,
]


def _cmd(dirs, out: Path, procs: int, resume: bool = False) -> list[str]:
    return stage1_command(dirs, out, procs, SETS, resume)


def _ignore_usr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the template's `trap '' USR1` for the launcher


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def _signal_after(proc: subprocess.Popen, run: Path, sig: int, target) -> None:
    """Once step 2 is logged, send ``sig`` to ``target(proc)`` (a pid); wait for the run to end."""
    deadline = time.monotonic() + 300
    while not any(r["step"] >= 2 for r in _metrics(run)):
        assert proc.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(target(proc), sig)
    proc.wait(timeout=300)


def _rank_pid(rank: int):
    def find(proc: subprocess.Popen) -> int:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "enhance" in child.cmdline():
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        raise AssertionError(f"no worker with RANK={rank}")

    return find


def _same(a: Path, b: Path) -> None:
    def timeless(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in _metrics(run)]

    assert timeless(a) == timeless(b)
    wa, wb = load_file(a / TOWER_WEIGHTS), load_file(b / TOWER_WEIGHTS)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_signal_checkpoints_and_resume_is_exact(tmp_path, tmp_model_dirs):
    env = subprocess_env()
    whole = tmp_path / "whole"
    subprocess.run(_cmd(tmp_model_dirs, whole, 2), check=True, timeout=600, env=env)

    # SIGUSR1 to rank 1 only
    run = tmp_path / "preempted"
    proc = subprocess.Popen(
        _cmd(tmp_model_dirs, run, 2), env=env, preexec_fn=_ignore_usr1, stderr=subprocess.PIPE, text=True
    )
    _signal_after(proc, run, signal.SIGUSR1, _rank_pid(1))
    err = proc.stderr.read()
    assert proc.returncode != 0, err[-2000:]
    marker = json.loads((run / "preempted.json").read_text())
    step = marker["step"]
    assert marker["exit_code"] == 75 and marker["stage"] == "stage1" and 2 <= step < STEPS, marker
    assert marker["signal"] == "another rank's signal"  # rank 0 writes it; rank 1 got the signal
    assert "SIGUSR1 received" in err and "exitcode  : 75" in err  # torchrun's report of the workers
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [marker["checkpoint"]] == [f"stage1_step{step:07d}"]
    assert [r["step"] for r in _metrics(run)] == list(range(1, step + 1))
    assert not (run / "export").exists()

    subprocess.run(_cmd(tmp_model_dirs, run, 2, resume=True), check=True, timeout=600, env=env)
    assert not (run / "preempted.json").exists()  # a run that starts clears it
    _same(run, whole)

    # SIGTERM to a single process: exit code 75 itself; resumed on two processes
    single = tmp_path / "single"
    proc = subprocess.Popen(_cmd(tmp_model_dirs, single, 1), env=env)
    _signal_after(proc, single, signal.SIGTERM, lambda p: p.pid)
    assert proc.returncode == 75
    marker = json.loads((single / "preempted.json").read_text())
    assert marker["signal"] == "SIGTERM" and marker["exit_code"] == 75
    subprocess.run(_cmd(tmp_model_dirs, single, 2, resume=True), check=True, timeout=600, env=env)
    a, b = _metrics(single), _metrics(whole)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(y["loss"]), (x, y)
