"""LLaVA-1.5 training (pretrain, then finetune) from a resolved :class:`LlavaTrainConfig`.

Reads top to bottom: compute, run folder and resume checks, data, model, one pass of
``enhance``'s shared loop per stage, save ``DIR/final``, the toy accuracy report.
``llava_integration.cli`` is the command-line front end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path

import torch

from genhancer.runtime import checkpoint as ckpt
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError
from genhancer.runtime.seeding import derive_seed
from genhancer.runtime.trainer import (
    LoopSpec,
    MetricsWriter,
    cosine_lambda,
    grad_accum_steps,
    is_deepspeed,
    run_loop,
    start_stage,
)
from genhancer.runtime.trainer import check_run_dir as trainer_check_run_dir
from llava_integration.config import RESUME_ALLOWED_CHANGES, STAGES, LlavaTrainConfig, StageConfig

log = logging.getLogger("llava_integration")


def stage_index(name: str) -> int:
    return STAGES.index(name) + 1


# --- run folder -------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, cfg: LlavaTrainConfig, resume: bool) -> Path | None:
    """See :func:`genhancer.runtime.trainer.check_run_dir`; finetune settings are free once pretraining finished
    (the LR schedule depends on the step count, so steps and batch sizes may not change mid-stage)."""
    return trainer_check_run_dir(run_dir, cfg, resume, RESUME_ALLOWED_CHANGES, "pretrain", ["finetune"])


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
    from llava_integration.toydata import write_toy_llava

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
    import copy

    out = copy.deepcopy(image_processor)
    out.do_pad = st.image_aspect_ratio == "pad"
    return out


def pretrain_saved(run_dir: Path) -> bool:
    """DIR/pretrain is complete (``save_projector`` writes its meta file last)."""
    from llava_integration.model import PROJECTOR_META

    return (run_dir / "pretrain" / PROJECTOR_META).is_file()


# --- the run ----------------------------------------------------------------------------------


def run(cfg: LlavaTrainConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Train the configured stages and save ``DIR/final``. Returns paths and the toy report."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from torch.utils.data import DataLoader

    from llava_integration import model as llava_model
    from llava_integration.data import LlavaStream, RowReport, load_records
    from llava_integration.stages import (
        LlavaTask,
        cast_floating,
        configure_stage,
        keep_trainable_fp32,
        load_trainable_state,
        merge_lora,
        trainable_state,
    )
    from llava_integration.templates import check_tokenizer, get_template

    # --- compute
    use_cuda = torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision if use_cuda else "no",
        cpu=not use_cuda,
        # A micro-batch of text-only samples never calls the projector. Under DDP a rank without
        # images would skip the projector's all-reduce (a collective mismatch with the other ranks),
        # and an all-text step fails the next one; unused-parameter detection reduces zeros for it
        # on that rank and leaves a globally unused gradient untouched, as one process does.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if use_cuda:
        enable_tf32()
    world, rank = accelerator.num_processes, accelerator.process_index
    zero3 = is_deepspeed(accelerator)  # the shipped DeepSpeed config for llava-train is ZeRO-3
    if zero3 and any(getattr(cfg, s).trainable == "lora" for s in cfg.train.stages):
        raise UserError(
            "trainable=lora under DeepSpeed is not supported yet (the LoRA merge needs gathered weights); "
            "launch the LoRA recipe without DeepSpeed"
        )

    # --- run folder
    run_dir = Path(output_dir)
    latest = check_run_dir(run_dir, cfg, resume)
    resume_meta = ckpt.read_state(latest) if latest is not None else None
    first = cfg.train.stages[0]
    if first == "finetune" and not cfg.model.pretrained_projector:
        has_pretrain = resume_meta is not None and (
            resume_meta["stage"] == "finetune" or resume_meta.get("final")
        )
        if not has_pretrain:
            raise UserError(
                "finetune needs a pretrained projector: pass --projector DIR/pretrain of a pretrain run, "
                f"or run --stage pretrain first in {run_dir} (then --stage finetune --resume)"
            )
    accelerator.wait_for_everyone()  # every rank checks the folder before the main process writes to it
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.yaml", configtools.dump_yaml(cfg))
    accelerator.wait_for_everyone()
    config_hash = configtools.config_hash(cfg, ignore=RESUME_ALLOWED_CHANGES)

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
    tokenizer = processor.tokenizer
    n_image = llava_model.num_image_tokens(llava.config)
    vc = llava.config.vision_config
    if cfg.data.source == "toyworld":
        if accelerator.is_main_process:
            prepare_toy_data(cfg, run_dir, vc.image_size)
        accelerator.wait_for_everyone()
    task = LlavaTask(llava, vision_every_step=zero3, autocast_dtype=load_dtype if master_fp32 else None).to(
        accelerator.device
    )
    metrics = MetricsWriter(run_dir, accelerator.is_main_process, cfg.logging.tensorboard)
    if resume:  # drop log lines the checkpoint does not cover (see MetricsWriter.rewind)
        upto = (resume_meta["stage_index"], resume_meta["step"]) if resume_meta else (0, -1)
        metrics.rewind(
            lambda r: (
                (STAGES.index(r["stage"]) + 1 if r.get("stage") in STAGES else 99, r.get("step", 0)) <= upto
            )
        )
    protect: set[str] = set()
    report: dict = {"stages": {}}
    gathered: dict | None = None  # ZeRO-3 only: the full weights, gathered after each stage

    for name in cfg.train.stages:
        idx = stage_index(name)
        st: StageConfig = getattr(cfg, name)
        template = get_template(st.template)
        check_tokenizer(tokenizer, template, f"model.llm '{cfg.model.llm}'")
        json_path, image_root = stage_paths(cfg, st, name, run_dir)
        rows = RowReport()
        records = load_records(json_path, n_image, rows)
        if rows.tolerated or rows.skipped:
            log.warning("%s: %s: %s", name, json_path, rows.summary())
        steps = stage_steps(st, len(records))
        grad_accum = grad_accum_steps(name, st.global_batch_size, st.per_device_batch_size, world)
        groups = configure_stage(llava, name, st, cfg.train.seed)
        if master_fp32:
            cast = keep_trainable_fp32(llava)
            if cast:
                log.info(
                    "%s: %d trainable weights kept in float32 (compute in %s)", name, cast, cfg.model.dtype
                )
        image_processor = stage_image_processor(processor.image_processor, st)

        # --- resume bookkeeping
        if resume_meta is not None:
            ck = resume_meta["stage_index"]
            if ck > idx:
                log.info("%s: done in the checkpoint being resumed, skipped", name)
                continue
            if ck < idx or (resume_meta["step"] >= steps and resume_meta.get("final")):
                load_trainable_state(task, ckpt.load_weights(latest))  # earlier stage's product
                protect.add(latest.name)
                if ck == idx:
                    log.info("%s: finished at step %d in %s, skipped", name, resume_meta["step"], latest.name)
                    if name == "pretrain" and accelerator.is_main_process and not pretrain_saved(run_dir):
                        # a crash between pretrain's last checkpoint and DIR/pretrain: write it now
                        llava_model.save_projector(llava, run_dir / "pretrain", cfg.model.vision_tower)
                    continue
                resume_meta = None

        here = resume_meta is not None and resume_meta["stage_index"] == idx
        prepared, optimizer, scheduler, start = start_stage(
            accelerator,
            task,
            groups,
            st,
            cosine_lambda(math.ceil(st.warmup_ratio * steps), steps),
            latest if here else None,
            lambda w: load_trainable_state(task, w),
        )
        resume_meta = None if here else resume_meta

        spec = LoopSpec.for_stage(cfg, name, idx, steps, grad_accum, st.grad_clip, config_hash)
        spec.extra_state = {"data": rows.as_dict()}  # in every metrics.jsonl record of the stage
        counts: dict[str, int] = {}

        def factory(
            start_position: int,
            _st=st,
            _records=records,
            _root=image_root,
            _t=template,
            _n=name,
            _c=counts,
            _ip=image_processor,
        ):
            stream = LlavaStream(
                _records,
                _root,
                tokenizer,
                _ip,
                _t,
                llava.config.image_token_id,
                n_image,
                cfg.data.max_length,
                _st.per_device_batch_size,
                seed=derive_seed("data", cfg.train.seed, _n),
                rank=rank,
                world_size=world,
                start=start_position,
                group_by_modality=cfg.data.group_by_modality_length,
            )
            loader = DataLoader(
                stream, batch_size=None, num_workers=cfg.data.num_workers, pin_memory=use_cuda
            )
            return _tally(iter(loader), _c)

        log.info(
            "%s: %d samples, %d steps of %d (template %s)",
            name,
            len(records),
            steps,
            st.global_batch_size,
            st.template,
        )
        run_loop(
            accelerator,
            prepared,
            optimizer,
            scheduler,
            factory,
            spec,
            run_dir,
            metrics,
            lambda: trainable_state(task),
            start,
            protect=protect,
        )
        if zero3:  # parameters are partitioned across ranks: gather them (collective) before saving
            full = accelerator.get_state_dict(prepared)
            gathered = {k.removeprefix("llava."): v for k, v in (full or {}).items()}
        accelerator.free_memory()
        totals = {
            k: int(accelerator.reduce(torch.tensor(v, device=accelerator.device), "sum").item())
            for k, v in sorted(counts.items())
        }
        report["stages"][name] = {"samples": len(records), "steps": steps, "rows": rows.as_dict(), **totals}
        if totals.get("truncated") or totals.get("dropped"):
            log.info(
                "%s: %d samples truncated to %d tokens, %d dropped",
                name,
                totals.get("truncated", 0),
                cfg.data.max_length,
                totals.get("dropped", 0),
            )
        if name == "pretrain" and accelerator.is_main_process:
            llava_model.save_projector(llava, run_dir / "pretrain", cfg.model.vision_tower, gathered)

    metrics.close()
    out: dict = {}
    if accelerator.is_main_process:
        merge_lora(llava)
        if master_fp32:
            cast_floating(llava, load_dtype)  # DIR/final in the dtype the model was loaded in
        llava.eval()
        final = llava_model.save(llava, processor, run_dir / "final", state_dict=gathered)
        out["final"] = str(final)
        if cfg.data.source == "toyworld" and cfg.train.eval_toy and not zero3:
            from llava_integration.inference import LlavaRunner
            from llava_integration.toydata import toy_accuracy

            runner = LlavaRunner(llava, processor, device=accelerator.device)
            report["toy_eval"] = toy_accuracy(runner, run_dir / "data" / "eval.json", run_dir / "data")
            out["toy_eval"] = report["toy_eval"]
        (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    accelerator.wait_for_everyone()
    return out
