"""LLaVA-1.5 training (pretrain, then finetune) from a resolved :class:`LlavaTrainConfig`.

Reads top to bottom: compute, run folder and resume checks, model, the stages on the shared
driver (:class:`LlavaStages`: data and trainable weights per stage, the ZeRO-3 gather and
``DIR/pretrain`` at stage end), save ``DIR/final``, the toy accuracy report.
``llava_integration.cli`` is the command-line front end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from pathlib import Path

import torch

from genhancer.runtime.deepspeed_compat import is_deepspeed
from genhancer.runtime.driver import RunFolder, RunRules, StageDriver, StageSetup, make_accelerator
from genhancer.runtime.errors import UserError
from genhancer.runtime.lora_state import merge_lora_state
from genhancer.runtime.optim import grad_accum_steps, lr_schedule
from genhancer.runtime.seeding import derive_seed
from llava_integration import model as llava_model
from llava_integration.config import RESUME_ALLOWED_CHANGES, STAGES, LlavaTrainConfig, StageConfig
from llava_integration.data import LlavaStream, RowReport, load_records
from llava_integration.inference import LlavaRunner
from llava_integration.model import PROJECTOR_META
from llava_integration.stages import (
    LlavaTask,
    cast_floating,
    configure_stage,
    has_lora,
    keep_trainable_fp32,
    load_trainable_state,
    merge_lora,
    trainable_state,
)
from llava_integration.templates import check_tokenizer, get_template
from llava_integration.toydata import toy_accuracy, write_toy_llava

log = logging.getLogger("llava_integration")

RUN_RULES = RunRules(
    STAGES,
    RESUME_ALLOWED_CHANGES,
    # the LR schedule depends on the step count, so pretrain's steps and batches stay fixed
    freed_after_first_stage=("finetune",),
)


# --- data -------------------------------------------------------------------------------------


def stage_paths(cfg: LlavaTrainConfig, st: StageConfig, name: str, run_dir: Path) -> tuple[Path, Path]:
    """(JSON file, image folder) of a stage; toyworld data lives in ``DIR/data``."""
    if cfg.data.source == "toyworld":
        root = run_dir / "data"
        return root / f"{name}.json", root
    if not cfg.data.root and not Path(st.data_path).is_absolute():
        raise UserError(f"data.root is empty: point --data-root at the LLaVA data for {name}")
    root = Path(cfg.data.root)
    return root / st.data_path, root / st.image_folder


def prepare_toy_data(cfg: LlavaTrainConfig, run_dir: Path, image_size: int) -> None:

    d = cfg.data
    write_toy_llava(
        run_dir / "data",
        d.toy_seed,
        image_size,
        d.toy_pretrain_size,
        d.toy_finetune_size,
        d.toy_eval_size,
        d.toy_text_only_fraction,
    )


def stage_steps(st: StageConfig, n_records: int) -> int:
    return st.steps or max(1, math.ceil(st.epochs * n_records / st.global_batch_size))


def _tally(stream, counts: dict):
    """Pass batches through while summing their data counters (workers cannot share a counter)."""
    for batch in stream:
        for k in ("skipped", "truncated", "dropped", "num_samples"):
            counts[k] = counts.get(k, 0) + int(batch.get(k, 0))
        yield batch


@contextlib.contextmanager
def _no_zero3_init(accelerator):
    """Build the model whole, as ``zero3_init_flag: false`` in ds_zero3.yaml intends: accelerate 1.15
    registers its DeepSpeed config with transformers whatever that flag says, and transformers then
    partitions every model it constructs (``zero.Init``), which breaks the assembly on the meta
    device (``model.assemble``). The engine partitions the parameters in ``accelerator.prepare``."""
    plugin = accelerator.state.deepspeed_plugin if accelerator is not None else None
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on CUDA (LLaVA-1.5's scripts pass ``--tf32 True``)."""
    torch.set_float32_matmul_precision("high")  # fp32 matmuls may use TF32
    torch.backends.cudnn.allow_tf32 = True


def stage_image_processor(image_processor, st: StageConfig):
    """The processor a stage reads images with: ``image_aspect_ratio`` pad or crop (see StageConfig)."""

    out = copy.deepcopy(image_processor)
    out.do_pad = st.image_aspect_ratio == "pad"
    return out


def pretrain_saved(run_dir: Path) -> bool:
    """DIR/pretrain is complete (``save_projector`` writes its meta file last)."""

    return (run_dir / "pretrain" / PROJECTOR_META).is_file()


# --- the run ----------------------------------------------------------------------------------


class LlavaStages(StageDriver):
    """Pretrain and finetune on the shared driver. Stage ends: under ZeRO-3 gather the partitioned
    weights (collective), tally the data counters, and after pretrain write ``DIR/pretrain``."""

    def __init__(
        self, accelerator, cfg: LlavaTrainConfig, folder: RunFolder, llava, processor, task, master_fp32
    ):
        super().__init__(accelerator, cfg, folder)
        self.llava, self.processor, self.task, self.master_fp32 = llava, processor, task, master_fp32
        self.zero3 = is_deepspeed(accelerator)
        self.report: dict = {"stages": {}}
        self.gathered: dict | None = None  # ZeRO-3 only: the full weights, gathered after each stage
        # per stage: the data counters its stream tallies, and what its report entry starts with
        self._counts: dict[str, dict[str, int]] = {}
        self._summary: dict[str, dict] = {}

    def setup_stage(self, name: str) -> StageSetup:
        from torch.utils.data import DataLoader

        cfg, llava, task, accelerator = self.cfg, self.llava, self.task, self.accelerator
        tokenizer = self.processor.tokenizer
        n_image = llava_model.num_image_tokens(llava.config)
        world, rank = accelerator.num_processes, accelerator.process_index
        st: StageConfig = getattr(cfg, name)
        template = get_template(st.template)
        check_tokenizer(tokenizer, template, f"model.llm '{cfg.model.llm}'")
        json_path, image_root = stage_paths(cfg, st, name, self.folder.path)
        rows = RowReport()
        records = load_records(json_path, n_image, rows)
        if rows.tolerated or rows.skipped:
            log.warning("%s: %s: %s", name, json_path, rows.summary())
        steps = stage_steps(st, len(records))
        grad_accum = grad_accum_steps(name, st.global_batch_size, st.per_device_batch_size, world)
        groups = configure_stage(llava, name, st, cfg.train.seed)
        if self.master_fp32:
            cast = keep_trainable_fp32(llava)
            if cast:
                log.info(
                    "%s: %d trainable weights kept in float32 (compute in %s)", name, cast, cfg.model.dtype
                )
        image_processor = stage_image_processor(self.processor.image_processor, st)
        counts: dict[str, int] = {}
        self._counts[name] = counts
        self._summary[name] = {"samples": len(records), "steps": steps, "rows": rows.as_dict()}

        def batches(start_position: int):
            stream = LlavaStream(
                records,
                image_root,
                tokenizer,
                image_processor,
                template,
                llava.config.image_token_id,
                n_image,
                cfg.data.max_length,
                st.per_device_batch_size,
                seed=derive_seed("data", cfg.train.seed, name),
                rank=rank,
                world_size=world,
                start=start_position,
                group_by_modality=cfg.data.group_by_modality_length,
            )
            loader = DataLoader(
                stream,
                batch_size=None,
                num_workers=cfg.data.num_workers,
                pin_memory=accelerator.device.type == "cuda",
            )
            return _tally(iter(loader), counts)

        log.info(
            "%s: %d samples, %d steps of %d (template %s)",
            name,
            len(records),
            steps,
            st.global_batch_size,
            st.template,
        )
        return StageSetup(
            module=task,
            params=groups,
            optim=st,
            steps=steps,
            grad_accum=grad_accum,
            lr_fn=lr_schedule(st.lr_schedule, steps, st.warmup_steps, st.warmup_ratio),
            batches=batches,
            checkpoint_weights=lambda: trainable_state(task),
            load_weights=lambda w: load_trainable_state(task, w),
            extra_state={"data": rows.as_dict()},  # in every metrics.jsonl record of the stage
            # LlavaStream's layout maps across world sizes, unless modality groups span all ranks
            # (their size, B x processes, shapes the epoch order)
            elastic=not cfg.data.group_by_modality_length,
        )

    def stage_finished(self, name: str) -> None:

        run_dir = self.folder.path
        if name == "pretrain" and self.accelerator.is_main_process and not pretrain_saved(run_dir):
            # a crash between pretrain's last checkpoint and DIR/pretrain: write it now
            llava_model.save_projector(self.llava, run_dir / "pretrain", self.cfg.model.vision_tower)

    def end_stage(self, name: str, prepared: torch.nn.Module) -> None:

        accelerator, cfg = self.accelerator, self.cfg
        if self.zero3:  # parameters are partitioned across ranks: gather them (collective) before saving
            full = accelerator.get_state_dict(prepared)
            self.gathered = {k.removeprefix("llava."): v for k, v in (full or {}).items()}
        totals = {
            k: int(accelerator.reduce(torch.tensor(v, device=accelerator.device), "sum").item())
            for k, v in sorted(self._counts[name].items())
        }
        self.report["stages"][name] = {**self._summary[name], **totals}
        if totals.get("truncated") or totals.get("dropped"):
            log.info(
                "%s: %d samples truncated to %d tokens, %d dropped",
                name,
                totals.get("truncated", 0),
                cfg.data.max_length,
                totals.get("dropped", 0),
            )
        if name == "pretrain" and accelerator.is_main_process:
            llava_model.save_projector(
                self.llava, self.folder.path / "pretrain", cfg.model.vision_tower, self.gathered
            )


def merged_final_state(llava, gathered: dict) -> dict:
    """Under DeepSpeed: LoRA merged into the gathered weights (the module's own may be ZeRO-3
    partitions, which peft cannot merge in place), and the adapters unloaded from the module, so
    ``DIR/final`` is a plain ``LlavaForConditionalGeneration`` either way."""

    if not has_lora(llava):
        return gathered
    from peft.tuners.lora import LoraLayer

    scalings = {
        name: module.scaling["default"]
        for name, module in llava.named_modules()
        if isinstance(module, LoraLayer) and "default" in module.scaling
    }
    merged = merge_lora_state(
        gathered, scalings, unwrap={"model.language_model.base_model.model.": "model.language_model."}
    )
    llava.model.language_model = llava.model.language_model.unload()  # structure only, no arithmetic
    return merged


def run(cfg: LlavaTrainConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Train the configured stages and save ``DIR/final``. Returns paths and the toy report."""
    from accelerate import DistributedDataParallelKwargs

    # --- compute
    accelerator = make_accelerator(
        cfg.train.mixed_precision,
        # A micro-batch of text-only samples never calls the projector. Under DDP a rank without
        # images would skip the projector's all-reduce (a collective mismatch with the other ranks),
        # and an all-text step fails the next one; unused-parameter detection reduces zeros for it
        # on that rank and leaves a globally unused gradient untouched, as one process does.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if torch.cuda.is_available():
        enable_tf32()
    # DeepSpeed (ZeRO-2, or the shipped ZeRO-3 configs): stage ends gather the weights, and LoRA is
    # merged into the gathered copy (see merged_final_state)
    zero3 = is_deepspeed(accelerator)

    # --- run folder
    run_dir = Path(output_dir)
    no_projector = (
        "finetune needs a pretrained projector: pass --projector DIR/pretrain of a pretrain run, "
        f"or run --stage pretrain first in {run_dir} (then --stage finetune --resume)"
    )
    prerequisite = None if cfg.model.pretrained_projector else no_projector
    folder = RunFolder.open(accelerator, run_dir, cfg, resume, RUN_RULES, cfg.train.stages, prerequisite)
    folder.write_config(accelerator, cfg)

    # --- model
    last = getattr(cfg, cfg.train.stages[-1])  # DIR/final's processor reads images as it trained last
    with _no_zero3_init(accelerator if zero3 else None):
        llava, processor = llava_model.build(
            cfg.model, cfg.cache_dir or None, seed=cfg.train.seed, pad=last.image_aspect_ratio == "pad"
        )
    llava.model.vision_tower.requires_grad_(False)
    load_dtype = llava_model.DTYPES[cfg.model.dtype]
    # Outside DeepSpeed (which keeps fp32 master weights itself) half-precision trainable weights are
    # kept in fp32 and the forward runs under autocast in the load dtype (see keep_trainable_fp32).
    master_fp32 = load_dtype != torch.float32 and not zero3
    vc = llava.config.vision_config
    if cfg.data.source == "toyworld":
        if accelerator.is_main_process:
            prepare_toy_data(cfg, run_dir, vc.image_size)
        accelerator.wait_for_everyone()
    task = LlavaTask(llava, vision_every_step=zero3, autocast_dtype=load_dtype if master_fp32 else None).to(
        accelerator.device
    )
    stages = LlavaStages(accelerator, cfg, folder, llava, processor, task, master_fp32)
    stages.run(cfg.train.stages)
    report, gathered = stages.report, stages.gathered

    out: dict = {}
    if accelerator.is_main_process:
        if gathered is None:
            merge_lora(llava)
        else:
            gathered = merged_final_state(llava, gathered)
        if master_fp32:
            cast_floating(llava, load_dtype)  # DIR/final in the dtype the model was loaded in
        llava.eval()
        final = llava_model.save(llava, processor, run_dir / "final", state_dict=gathered)
        out["final"] = str(final)
        if cfg.data.source == "toyworld" and cfg.train.eval_toy and not zero3:
            runner = LlavaRunner(llava, processor, device=accelerator.device)
            report["toy_eval"] = toy_accuracy(runner, run_dir / "data" / "eval.json", run_dir / "data")
            out["toy_eval"] = report["toy_eval"]
        (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    accelerator.wait_for_everyone()
    return out
