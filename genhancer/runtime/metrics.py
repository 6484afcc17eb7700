"""What a run reports: ``metrics.jsonl`` (and TensorBoard) and the sums of a logging window.

:class:`MetricsWriter` writes one JSON object per logged step on the main process and rewinds the
file on resume; :class:`LogWindow` keeps the sums since the last log on the device, so the loop
syncs with the host once per log, not once per step.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from genhancer.runtime.errors import UserError


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step) and optional TensorBoard, main process only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool = False):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError as exc:
                raise UserError(
                    "logging.tensorboard=true needs `pip install genhancer[tensorboard]`"
                ) from exc

    def rewind(self, keep: Callable[[dict], bool]) -> None:
        """On resume, drop records the checkpoint does not cover (a crash between logging a step and
        committing its checkpoint would otherwise log it twice) and any half-written last line."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if keep(record):
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(f"{record.get('stage', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class LogWindow:
    """Sums since the last logged step, kept on the device (no host sync until the log)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.loss_count = 0
        self.images = 0
        self.extra_sums: dict[str, torch.Tensor] = {}
        self.t0 = time.perf_counter()

    def add_extras(self, out: dict[str, torch.Tensor]) -> None:
        """Extra scalars a task reports beside the loss (e.g. masked_acc)."""
        for key, value in out.items():
            if key not in ("loss", "loss_terms"):
                self.extra_sums[key] = self.extra_sums.get(key, 0.0) + value.detach().float()
