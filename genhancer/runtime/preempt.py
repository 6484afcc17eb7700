"""Stop cleanly when a cluster scheduler is about to kill the job, so it can be requeued.

Slurm sends a signal before it kills a job (``--signal=USR1@SECONDS``, or SIGTERM at the time
limit and on preemption, followed by SIGKILL after a grace period). While a run trains,
:class:`PreemptionWatch` turns SIGUSR1 and SIGTERM into a request; the loop asks at every step
boundary, writes a checkpoint at the first boundary where any rank has one, and raises
:class:`Preempted` (exit code :data:`REQUEUE_EXIT_CODE`). ``--resume`` continues from that
checkpoint exactly as from any other. ``docs/cluster.md`` has the sbatch template that requeues.

Ranks must agree on the step they stop at (``save_state`` and the checkpoint are collective, and a
signal may reach one rank only, or reach the ranks on either side of a boundary). Each boundary
starts a non-blocking max-reduction of the local flag on a CPU (gloo) group and reads the one
started at the boundary before, so the ranks decide on the same step without a host sync on the
accelerator; a run stops at most one step after the first rank saw the signal.

``torchrun`` and ``accelerate launch`` report any failed worker as exit code 1, so the main
process also writes :data:`MARKER` (``DIR/preempted.json``) just before exiting; the template
requeues on either, and a run that starts removes a marker left by the previous one.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import torch

log = logging.getLogger("genhancer")

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "try again later"
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM)
MARKER = "preempted.json"


class Preempted(SystemExit):
    """The run checkpointed after a scheduler's signal and stops; exits the process with
    :data:`REQUEUE_EXIT_CODE` (a ``SystemExit``, so every command exits with it unchanged)."""

    def __init__(self, stage: str, step: int, checkpoint: str, signal_name: str):
        super().__init__(REQUEUE_EXIT_CODE)
        self.stage, self.step, self.checkpoint, self.signal_name = stage, step, checkpoint, signal_name

    def __str__(self) -> str:
        return (
            f"{self.signal_name}: checkpointed {self.stage} at step {self.step} ({self.checkpoint}); "
            f"exit {REQUEUE_EXIT_CODE}, continue with --resume"
        )


class PreemptionWatch:
    """Signal handlers for one run (a context manager) and the ranks' agreement on when to stop.

    ``with PreemptionWatch(world_size) as watch:`` installs handlers for :data:`SIGNALS` (main
    thread only; elsewhere it watches nothing), and restores the previous ones on exit. Every rank
    must call :meth:`should_stop` at every step boundary (it is collective when ``world_size > 1``)."""

    def __init__(self, world_size: int = 1, signals: tuple[signal.Signals, ...] = SIGNALS):
        self.world_size = world_size
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._group = None
        self._pending: tuple[torch.Tensor, object] | None = None

    # --- handlers

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            # logging from a handler is not async-signal-safe in C, but Python runs the handler
            # between bytecodes of the main thread, where it is fine
            log.warning(
                "%s received: checkpointing at the next step boundary, then exit %d",
                self.received.name,
                REQUEUE_EXIT_CODE,
            )

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                # the flag travels on CPU: a gloo group beside an NCCL one (collective creation)
                cpu = dist.get_backend() == "gloo"
                self._group = None if cpu else dist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pending is not None and exc_info[0] is None:
            self._pending[1].wait()  # keep every rank's collectives in step
        self._pending = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    # --- agreement

    def should_stop(self) -> bool:
        """At a step boundary: True when the ranks agree to stop here (the same answer on every rank)."""
        local = self.received is not None
        if self.world_size <= 1:
            return local
        import torch.distributed as dist

        if not dist.is_initialized():
            return local
        if self._pending is not None:
            flag, work = self._pending
            self._pending = None
            work.wait()
            if flag.item() > 0:  # every rank read the same reduction: all stop here
                return True
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (flag, work)
        return False

    @property
    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "another rank's signal"


def write_marker(run_dir: Path, stop: Preempted) -> Path:
    """``DIR/preempted.json`` (main process): what stopped the run and where it can resume."""
    path = Path(run_dir) / MARKER
    data = {
        "exit_code": REQUEUE_EXIT_CODE,
        "signal": stop.signal_name,
        "stage": stop.stage,
        "step": stop.step,
        "checkpoint": stop.checkpoint,
    }
    tmp = path.with_name(f".{MARKER}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def clear_marker(run_dir: Path) -> None:
    """A run that starts (or resumes) is no longer preempted."""
    (Path(run_dir) / MARKER).unlink(missing_ok=True)
