"""How many CPU threads torch uses in each process of a command.

Torch sizes its intra-op pool to every core of the machine in every process, so two processes
started by ``torchrun --nproc_per_node 2`` on a 2-core machine each run 2 threads on 2 cores and
spend their time waiting on each other (a tiny stage ran about 20 times slower than in one
process). Every command therefore gives each process ``cores // LOCAL_WORLD_SIZE`` threads
unless the user chose: ``--threads N`` first, then ``OMP_NUM_THREADS`` (torchrun's own default of 1,
which it sets only when the variable was unset, is not a choice: on a 64-core node it would leave
8 processes on 8 cores).

:func:`plan_threads` decides without importing torch (so bad input is still refused at once);
:func:`configure_threads` applies the plan and :func:`announce_threads` says it once per machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass

from genhancer.runtime.errors import UserError


@dataclass(frozen=True)
class ThreadPlan:
    """``threads`` for this process and where the number came from (``reason``, for the log line)."""

    threads: int
    reason: str


def add_threads_flag(p: argparse.ArgumentParser) -> None:
    """``--threads N``: a property of the process, not of the run, so it is a flag and not a config
    key (it is not saved in ``config.yaml`` and a resume may change it)."""
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads per process (default: OMP_NUM_THREADS, else cores / local processes)",
    )


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{name} must be a whole number >= 1, got '{text}'") from None
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")
    return value


def launcher_set_omp(env: dict[str, str] | None = None, parent_environ: bytes | None = None) -> bool:
    """Whether ``OMP_NUM_THREADS`` came from the launcher rather than the user: torchrun (and
    ``accelerate launch``, which runs it) sets it to 1 for its workers when it was unset. The
    launcher's start-up environment (``/proc/PPID/environ``, which its later changes do not touch)
    tells the two apart."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env or "OMP_NUM_THREADS" not in env:
        return False
    if parent_environ is None:
        try:
            with open(f"/proc/{os.getppid()}/environ", "rb") as f:
                parent_environ = f.read()
        except OSError:  # not Linux, or not ours to read: take the variable as the user's
            return False
    return not any(item.startswith(b"OMP_NUM_THREADS=") for item in parent_environ.split(b"\0"))


def plan_threads(
    requested: int | None = None, env: dict[str, str] | None = None, cores: int | None = None
) -> ThreadPlan:
    """The thread count for this process: ``--threads``, else ``OMP_NUM_THREADS`` the user set,
    else ``cores // LOCAL_WORLD_SIZE`` (at least 1). UserError on a bad ``--threads`` or environment."""
    env = os.environ if env is None else env
    if requested is not None:
        return ThreadPlan(_positive_int(str(requested), "--threads"), "--threads")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp and not launcher_set_omp(env):
        return ThreadPlan(_positive_int(omp, "OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    cores = available_cores() if cores is None else cores
    local = _positive_int(env.get("LOCAL_WORLD_SIZE", "1").strip() or "1", "LOCAL_WORLD_SIZE")
    return ThreadPlan(max(1, cores // local), f"{cores} cores / {local} local process{'es' * (local > 1)}")


def configure_threads(prog: str, requested: int | None = None, announce: bool = True) -> ThreadPlan:
    """Apply :func:`plan_threads` to torch (and to ``OMP_NUM_THREADS`` for child processes);
    with ``announce``, say so at once (:func:`announce_threads`). Returns the plan."""
    plan_threads(requested)  # refuse a bad value before the torch import
    import torch

    # torch's own default is the physical core count, which can be below the affinity count
    # (hyper-threads); the smaller one is the machine's real width. A torch started under an
    # OMP_NUM_THREADS already took that value instead, so it says nothing about the cores then.
    cores = available_cores()
    if "OMP_NUM_THREADS" not in os.environ:
        cores = min(cores, torch.get_num_threads())
    plan = plan_threads(requested, cores=cores)
    os.environ["OMP_NUM_THREADS"] = str(plan.threads)
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    if announce:
        announce_threads(prog, plan)
    return plan


def announce_threads(prog: str, plan: ThreadPlan) -> None:
    """One line per machine (local rank 0): through logging once the command has set it up (the
    training commands' log), else on stderr. Commands announce only once their input is
    validated, so an error stays a one-line message."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    text = f"torch threads per process: {plan.threads} ({plan.reason})"
    if logging.getLogger().handlers:
        logging.getLogger(prog).info(text)
    else:
        print(f"{prog}: {text}", file=sys.stderr)
