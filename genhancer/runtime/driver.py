"""The stage driver both training commands run on: run folder, resume plan, one loop per stage.

A command states its :class:`RunRules` once and opens its :class:`RunFolder` under them (refuses
to overwrite a run, checks a resumed config and the prerequisite stage), writes ``config.yaml``
once its inputs are known to be good, then runs a :class:`StageDriver` subclass. The subclass says how each stage is built (:meth:`StageDriver.setup_stage`)
and what happens around it (:meth:`StageDriver.stage_finished`, :meth:`StageDriver.end_stage`),
in the way a model-specific trainer overrides one step of a shared one. What each stage does on
resume comes from the pure plan in :mod:`genhancer.runtime.resume`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError
from genhancer.runtime.metrics import MetricsWriter
from genhancer.runtime.preempt import Preempted, PreemptionWatch, clear_marker, write_marker
from genhancer.runtime.resume import Action, StageRef, plan_stage, prerequisite_met
from genhancer.runtime.trainer import Loop, LoopSpec, start_stage

log = logging.getLogger("genhancer")


def check_run_dir(
    run_dir: Path,
    cfg: Any,
    resume: bool,
    allowed_changes: Sequence[str],
    first_stage: str,
    freed_after_first_stage: Sequence[str],
) -> Path | None:
    """Refuse to overwrite a run; on --resume return the latest complete checkpoint after checking
    that the config changed only in ``allowed_changes`` (plus ``freed_after_first_stage`` once
    ``first_stage`` has finished, since the next stage has not used its settings yet). A key the
    saved config lacks (added to the tree since) may hold its default."""
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    saved = run_dir / "config.yaml"
    if not resume:
        if latest is not None or saved.exists():
            raise UserError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --output-dir"
            )
        return None
    if latest is None:
        if saved.exists():
            return None  # started but never checkpointed: begin again with the same folder
        raise UserError(f"--resume: {run_dir} holds no run to resume (no config.yaml, no checkpoints)")
    if saved.exists():
        allowed = list(allowed_changes)
        meta = ckpt.read_meta(latest)
        if meta.stage == first_stage and meta.final:
            allowed += list(freed_after_first_stage)
        before, now = configtools.load_yaml(saved), configtools.to_dict(cfg)
        migrate = getattr(cfg, "migrate_saved", None)  # a tree written in an older shape
        if migrate is not None:
            before = migrate(before)
        defaults = configtools.to_dict(type(cfg)())
        changed = []
        for k in configtools.diff_keys(before, now):
            if any(k == a or k.startswith(a + ".") for a in allowed):
                continue
            if _lookup(before, k) is _MISSING and _lookup(now, k) == _lookup(defaults, k):
                # a key added since the run started, at its default: what the run did all along
                log.info("--resume: %s is not in %s; it takes its default %r", k, saved, _lookup(now, k))
                continue
            changed.append(k)
        if changed:
            raise UserError(
                f"--resume: the config differs from the run in {run_dir} at {', '.join(changed)}; "
                "resume with the original settings or start a new --output-dir"
            )
    return latest


_MISSING = object()


def _lookup(tree: Any, dotted: str) -> Any:
    """The value at ``dotted`` in a plain-data tree, or ``_MISSING``."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


@dataclass(frozen=True)
class RunRules:
    """What a command allows of its run folders, written once beside its stages: the stage names in
    order, the config keys a ``--resume`` may change (also left out of the checkpoints' config hash),
    and the keys freed once the first stage has finished (the next stage has not used them yet)."""

    stage_names: tuple[str, ...]
    allowed_changes: tuple[str, ...]
    freed_after_first_stage: tuple[str, ...] = ()


def make_accelerator(mixed_precision: str, **kwargs: Any):
    """The run's ``Accelerator``: ``mixed_precision`` on CUDA; CPU runs fall back to full precision."""
    from accelerate import Accelerator

    use_cuda = torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision if use_cuda else "no", cpu=not use_cuda, **kwargs)


@dataclass
class RunFolder:
    """``DIR`` of one run, checked: the checkpoint being resumed (if any) and its metadata."""

    path: Path
    resume: bool
    rules: RunRules
    latest: Path | None = None
    meta: ckpt.CheckpointMeta | None = None

    @classmethod
    def open(
        cls,
        accelerator,
        output_dir: str | Path,
        cfg: Any,
        resume: bool,
        rules: RunRules,
        run_stages: Sequence[str],
        prerequisite_error: str | None,
    ) -> RunFolder:
        """Check the folder (see :func:`check_run_dir`) and that a run starting at a later stage
        finds the stage before it finished there; ``prerequisite_error`` (None: not needed, e.g. the
        product comes from elsewhere) is the message when it does not."""
        path = Path(output_dir)
        first_stage = rules.stage_names[0]
        latest = check_run_dir(
            path, cfg, resume, rules.allowed_changes, first_stage, rules.freed_after_first_stage
        )
        folder = cls(path, resume, rules, latest, ckpt.read_meta(latest) if latest else None)
        first = folder.index(run_stages[0])
        if prerequisite_error is not None and not prerequisite_met(folder.meta, first):
            raise UserError(prerequisite_error)
        accelerator.wait_for_everyone()  # every rank checks the folder before the main process writes to it
        return folder

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Every stage of the command, in order (index = position + 1)."""
        return self.rules.stage_names

    def index(self, name: str) -> int:
        return self.stage_names.index(name) + 1

    def write_config(self, accelerator, cfg: Any) -> None:
        """``DIR/config.yaml``: the resolved tree (main process), then every rank goes on."""
        if accelerator.is_main_process:
            self.path.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.path / "config.yaml", configtools.dump_yaml(cfg))
        accelerator.wait_for_everyone()

    def metrics(self, accelerator, tensorboard: bool) -> MetricsWriter:
        """The run's metrics writer; on resume, rewound to the checkpoint being resumed."""
        metrics = MetricsWriter(self.path, accelerator.is_main_process, tensorboard)
        if self.resume:
            upto = (self.meta.stage_index, self.meta.step) if self.meta else (0, -1)
            order = {name: i + 1 for i, name in enumerate(self.stage_names)}
            metrics.rewind(lambda r: (order.get(r.get("stage"), 99), r.get("step", 0)) <= upto)
        return metrics


@dataclass
class StageSetup:
    """One stage as a command builds it for the driver."""

    module: torch.nn.Module  # what the accelerator prepares (the model, or a task wrapping it)
    params: Any  # parameters, or optimizer groups
    optim: Any  # the stage's section: lr, betas, weight_decay, per_device_batch_size, grad_clip
    steps: int
    grad_accum: int
    lr_fn: Callable[[int], float]
    batches: Callable[[int], Iterator[dict]]
    checkpoint_weights: Callable[[], dict[str, torch.Tensor]]
    load_weights: Callable[[dict[str, torch.Tensor]], None]
    # The product of an earlier stage this run does not visit (default: ``load_weights``).
    load_earlier: Callable[[dict[str, torch.Tensor]], None] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)
    on_checkpoint: Callable[[int], None] | None = None
    on_step: Callable[[int], None] | None = None
    # ``batches`` has the elastic layout (global micro-batch g = m * world + rank, positions count a
    # rank's samples; see resume.stream_start): a checkpoint resumes on another number of processes.
    elastic: bool = False


class StageDriver:
    """Runs the stages of one command over the shared loop. Subclasses implement
    :meth:`setup_stage` and may override the stage-end hooks."""

    def __init__(self, accelerator, cfg: Any, folder: RunFolder):
        self.accelerator = accelerator
        self.cfg = cfg
        self.folder = folder
        self.config_hash = configtools.config_hash(cfg, ignore=folder.rules.allowed_changes)
        self.protect: set[str] = set()  # checkpoints pruning must keep (finished stages)

    def setup_stage(self, name: str) -> StageSetup:
        """Build stage ``name``: set what trains, its data and schedule."""
        raise NotImplementedError

    def stage_finished(self, name: str) -> None:
        """Stage ``name`` was finished in the checkpoint being resumed (its weights are loaded)."""

    def end_stage(self, name: str, prepared: torch.nn.Module) -> None:
        """Stage ``name`` has trained (``prepared``: the accelerator's wrapper; every rank runs this)."""

    def run(self, run_stages: Sequence[str]) -> None:
        """Train ``run_stages`` in order, each as the resume plan says. SIGUSR1/SIGTERM checkpoint
        the run at the next step boundary and raise :class:`~genhancer.runtime.preempt.Preempted`
        (exit code 75) after the main process wrote ``DIR/preempted.json``."""
        accelerator, folder = self.accelerator, self.folder
        if accelerator.is_main_process:
            clear_marker(folder.path)
        metrics = folder.metrics(accelerator, self.cfg.logging.tensorboard)
        try:
            with PreemptionWatch(accelerator.num_processes) as watch:
                self._run_stages(run_stages, metrics, watch)
        except Preempted as stop:
            if accelerator.is_main_process:
                write_marker(folder.path, stop)
                log.warning("%s", stop)
            raise
        finally:
            metrics.close()

    def _run_stages(self, run_stages: Sequence[str], metrics: MetricsWriter, watch: PreemptionWatch) -> None:
        accelerator, folder = self.accelerator, self.folder
        indices = [folder.index(n) for n in run_stages]
        for name in run_stages:
            setup = self.setup_stage(name)
            stage = StageRef(name, folder.index(name), setup.steps)
            plan = plan_stage(stage, folder.meta, indices)
            if plan.action is Action.SKIP:
                log.info("%s: done in the checkpoint being resumed, skipped", name)
                continue
            if plan.action is Action.LOAD_WEIGHTS:
                setup.load_weights(ckpt.load_weights(folder.latest))
                self.protect.add(folder.latest.name)
                log.info("%s: finished at step %d in %s, skipped", name, folder.meta.step, folder.latest.name)
                self.stage_finished(name)
                continue
            if plan.load_earlier:
                (setup.load_earlier or setup.load_weights)(ckpt.load_weights(folder.latest))
                self.protect.add(folder.latest.name)
            prepared, optimizer, scheduler, start = start_stage(
                accelerator,
                setup.module,
                setup.params,
                setup.optim,
                setup.lr_fn,
                folder.latest if plan.action is Action.RESTORE else None,
                setup.load_weights,
                elastic=setup.elastic,
            )
            spec = LoopSpec.for_stage(
                self.cfg,
                name,
                stage.index,
                setup.steps,
                setup.grad_accum,
                setup.optim.grad_clip,
                self.config_hash,
            )
            spec.extra_state = dict(setup.extra_state)
            spec.elastic, spec.micro_batch = setup.elastic, setup.optim.per_device_batch_size
            Loop(
                accelerator,
                prepared,
                optimizer,
                scheduler,
                setup.batches,
                spec,
                folder.path,
                metrics,
                setup.checkpoint_weights,
                start,
                on_checkpoint=setup.on_checkpoint,
                protect=self.protect,
                on_step=setup.on_step,
                preempt=watch,
            ).run()
            self.end_stage(name, prepared)
            accelerator.free_memory()  # drop the wrappers; the module itself was trained in place
