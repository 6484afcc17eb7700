"""Two-stage GenHancer training from a resolved :class:`~enhance.config.EnhanceConfig`.

Reads top to bottom: compute, run folder and resume checks, model, data, the stages on the
shared driver (:class:`EnhanceStages`: what trains per stage, previews, stage 2's per-step
exports), export. ``enhance.cli`` is the command-line front end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from enhance import latent_cache as lc
from enhance.backbones import build_backbone
from enhance.config import RESUME_ALLOWED_CHANGES, EnhanceConfig
from enhance.data.loading import ImageStream, build_dataloader, build_source
from enhance.data.sources import IndexSource
from enhance.data.transforms import make_transform
from enhance.diagnostics import plot_grad_conflict
from enhance.export import export_model, export_step
from enhance.latent_cache import CachedCropTransform
from enhance.methods import get_method
from enhance.model import (
    GenHancerModel,
    cast_vae,
    compile_modules,
    enable_gradient_checkpointing,
    set_vae_dtype,
)
from enhance.preview import save_preview
from enhance.stages import checkpoint_state, configure_stage, load_checkpoint_state
from enhance.vae import build_codec
from genhancer.runtime.driver import RunFolder, RunRules, StageDriver, StageSetup, make_accelerator
from genhancer.runtime.errors import UserError
from genhancer.runtime.optim import grad_accum_steps, lr_schedule
from genhancer.runtime.seeding import derive_seed

log = logging.getLogger("enhance")

STAGE_NAMES = {1: "stage1", 2: "stage2"}
RUN_RULES = RunRules(
    tuple(STAGE_NAMES.values()),
    RESUME_ALLOWED_CHANGES,
    freed_after_first_stage=("stage2", "train.one_stage"),  # stage 2 has not used them yet
)


# --- building ---------------------------------------------------------------------------------


def build_model(cfg: EnhanceConfig) -> GenHancerModel:
    """Tower, target codec, random-init projector and denoiser (seeded by train.seed)."""

    cache_dir = cfg.cache_dir or None
    method = get_method(cfg.method.name)
    method.precheck(cfg, cache_dir)  # config-only checks before any weight is loaded
    return method.build(cfg, build_backbone(cfg.backbone, cache_dir), cache_dir)


def check_data_path(cfg: EnhanceConfig) -> None:
    """Fail before anything is built when a file-based source has no path."""
    if cfg.data.source != "toyworld" and not cfg.data.path:
        raise UserError(f"data.path is empty: point it at your {cfg.data.source} data (--set data.path=...)")


def build_data_source(cfg: EnhanceConfig, image_size: int):
    """The configured image source, validated (a path without images fails here, by name)."""

    d = cfg.data
    return build_source(
        d.source,
        d.path,
        image_column=d.image_column,
        split=d.split,
        toy_n=d.toyworld_size,
        toy_seed=d.toyworld_seed,
        toy_image_size=image_size,
    )


def count_images(source) -> int:
    """Items in a data source (readable or not): its length, or the sum of its tar shards."""
    if hasattr(source, "__len__"):
        return len(source)
    return sum(source.shard_size(s) for s in source.shards)


def resolve_schedule(cfg: EnhanceConfig, source, world: int) -> None:
    """``train.schedule=one_epoch``: set ``stageN.steps`` to one pass over ``source`` (distinct images
    per step: the global batch, or global batch / ranks when ``data.replicate_across_ranks``)."""
    if cfg.train.schedule != "one_epoch":
        return
    n = count_images(source)
    for name in ("stage1", "stage2"):
        scfg = getattr(cfg, name)
        distinct = scfg.global_batch_size
        if cfg.data.replicate_across_ranks:
            distinct = max(1, scfg.global_batch_size // world)
        scfg.steps = -(-n // distinct)
        log.info("train.schedule=one_epoch: %s runs %d steps (%d images)", name, scfg.steps, n)


def elastic_stream(cfg: EnhanceConfig, source) -> bool:
    """The elastic layout (a checkpoint resumes on another number of processes) for sources
    read by index; webdataset shards stay split across ranks (each rank reads its own shards), and
    a replicated stream gives every rank the same order."""

    return isinstance(source, IndexSource) and not cfg.data.replicate_across_ranks


def build_stream_factory(
    cfg: EnhanceConfig,
    model: GenHancerModel,
    source,
    stage: int,
    rank: int,
    world: int,
    batch_size: int,
    pin_memory: bool,
    cache=None,
):
    """``start_position -> iterator of micro-batches`` for this rank and stage (crops and latents
    from ``cache``, a :class:`~enhance.latent_cache.LatentCache`, when given).

    With ``data.replicate_across_ranks`` every rank reads the one-rank stream (same images, same
    order) and only the crops are drawn per rank (noise and timesteps already are, see genhancer.runtime.trainer.Loop)."""

    b = model.backbone
    transform = make_transform(
        b.image_size, b.image_mean, b.image_std, scale=tuple(cfg.data.crop_scale), train=True
    )
    if cache is not None:
        transform = CachedCropTransform(transform, cache)
    seed = derive_seed("data", cfg.train.seed, stage)
    replicate = cfg.data.replicate_across_ranks
    split = (
        {"rank": 0, "world_size": 1, "augment_rank": rank}
        if replicate
        else {"rank": rank, "world_size": world}
    )
    if elastic_stream(cfg, source):
        split["rank_blocks"] = batch_size

    def factory(start_position: int):
        stream = ImageStream(source, transform, seed=seed, start_position=start_position, **split)
        return iter(
            build_dataloader(stream, batch_size, num_workers=cfg.data.num_workers, pin_memory=pin_memory)
        )

    return factory


def preview_batch(cfg: EnhanceConfig, model: GenHancerModel, source) -> dict | None:
    """A fixed, centre-cropped batch of the first images, for the preview grids."""
    if cfg.logging.preview_count <= 0:
        return None

    b = model.backbone
    transform = make_transform(b.image_size, b.image_mean, b.image_std, train=False)
    stream = ImageStream(source, transform, seed=0, rank=0, world_size=1, start_position=0)
    return next(iter(build_dataloader(stream, cfg.logging.preview_count, num_workers=0)))


def prepare_latent_cache(cfg: EnhanceConfig, codec, image_size: int, source, accelerator):
    """The run's :class:`~enhance.latent_cache.LatentCache` (None without ``latent_cache.path``),
    built first when the folder holds no finished cache: every process encodes its share of the
    shards, then the main process writes the manifest."""
    if not cfg.latent_cache.path:
        return None

    c, path = cfg.latent_cache, Path(cfg.latent_cache.path)
    spec = lc.cache_spec(cfg, image_size)
    manifest = lc.read_manifest(path)
    if manifest is None:
        log.info("building the latent cache in %s (%d crops per image)", path, c.crops)
        num_shards, total = lc.build_shards(
            codec,
            source,
            path,
            spec,
            shard_size=c.shard_size,
            batch_size=c.batch_size,
            workers=max(1, cfg.data.num_workers),
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            progress=cfg.logging.progress and accelerator.is_local_main_process,
        )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            lc.finish_latent_cache(path, spec, num_shards, total)
        accelerator.wait_for_everyone()
    return lc.LatentCache(path, spec)


def build_latent_cache_only(cfg: EnhanceConfig) -> dict:
    """``enhance --build-latent-cache``: encode the configured data into ``latent_cache.path``."""
    from accelerate import Accelerator

    if not cfg.latent_cache.path:
        raise UserError("--build-latent-cache needs --set latent_cache.path=DIR")
    check_data_path(cfg)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    codec = build_codec(cfg.method.vae, cfg.cache_dir or None).to(accelerator.device)
    cast_vae(codec, cfg.perf.vae_dtype, accelerator.device.type)
    source = build_data_source(cfg, cfg.backbone.image_size)
    cache = prepare_latent_cache(cfg, codec, cfg.backbone.image_size, source, accelerator)
    return lc.read_manifest(cache.path) if accelerator.is_main_process else {}


def apply_stage_perf(model: GenHancerModel, cfg: EnhanceConfig) -> None:
    """``perf.*`` switches that must follow :func:`configure_stage` (LoRA changes the tower)."""
    if cfg.perf.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.perf.compile:
        compile_modules(model, cfg.perf.compile_backend)


# --- the run ----------------------------------------------------------------------------------


class EnhanceStages(StageDriver):
    """The two GenHancer stages on the shared driver: stage 2 adds LoRA, exports every
    ``stage2.export_every`` steps, and both write preview grids at their checkpoints."""

    def __init__(
        self,
        accelerator,
        cfg: EnhanceConfig,
        folder: RunFolder,
        model: GenHancerModel,
        source,
        cache,
        preview,
    ):
        super().__init__(accelerator, cfg, folder)
        self.model, self.source, self.cache, self.preview = model, source, cache, preview

    def setup_stage(self, name: str) -> StageSetup:

        cfg, model, accelerator = self.cfg, self.model, self.accelerator
        stage = int(name.removeprefix("stage"))
        scfg = cfg.stage1 if stage == 1 else cfg.stage2
        world = accelerator.num_processes
        grad_accum = grad_accum_steps(name, scfg.global_batch_size, scfg.per_device_batch_size, world)
        params = configure_stage(model, stage, cfg)
        apply_stage_perf(model, cfg)
        run_dir = self.folder.path

        on_step = None
        if stage == 2 and cfg.stage2.export_every > 0 and accelerator.is_main_process:

            def on_step(step: int) -> None:
                if step % cfg.stage2.export_every == 0:
                    export_step(model, cfg, run_dir / "export", step)

        def on_checkpoint(step: int) -> None:
            if self.preview is not None:
                save_preview(
                    model,
                    self.preview,
                    run_dir / "previews" / f"{name}_step{step:07d}.png",
                    seed=cfg.train.seed,
                    steps=get_method(cfg.method.name).preview_steps(cfg),
                )

        return StageSetup(
            module=model,
            params=params,
            optim=scfg,
            steps=scfg.steps,
            grad_accum=grad_accum,
            lr_fn=lr_schedule(scfg.lr_schedule, scfg.steps, scfg.warmup_steps, scfg.warmup_ratio),
            batches=build_stream_factory(
                cfg,
                model,
                self.source,
                stage,
                accelerator.process_index,
                world,
                scfg.per_device_batch_size,
                accelerator.device.type == "cuda",
                self.cache,
            ),
            checkpoint_weights=lambda: checkpoint_state(model),
            load_weights=lambda w: load_checkpoint_state(model, w),
            # stage 1's product into a model that already carries stage 2's fresh LoRA
            load_earlier=lambda w: load_checkpoint_state(model, w, partial=True),
            on_checkpoint=on_checkpoint,
            on_step=on_step,
            elastic=elastic_stream(cfg, self.source),
        )


def run(cfg: EnhanceConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Train the configured stages, then export. Returns {"export": {...}, "final_loss": ...}."""
    check_data_path(cfg)

    # --- compute
    accelerator = make_accelerator(cfg.train.mixed_precision)
    world = accelerator.num_processes
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        raise UserError(
            "enhance runs under DeepSpeed ZeRO-1/2 (enhance/accelerate/ds_zero2.yaml), not ZeRO-3: its "
            "stages rebuild the tower (LoRA) and export it whole from the main process"
        )

    # --- run folder
    run_dir = Path(output_dir)
    run_stages = [STAGE_NAMES[s] for s in cfg.train.stages]
    needs_stage1 = not cfg.train.one_stage and 1 in get_method(cfg.method.name).stages
    no_stage1 = (
        f"stage 2 needs the finished stage 1 of this run in {run_dir}/checkpoints; run stage 1 "
        "first (then --stage 2 --resume), or set train.one_stage=true for the end-to-end ablation"
    )
    folder = RunFolder.open(
        accelerator, run_dir, cfg, resume, RUN_RULES, run_stages, no_stage1 if needs_stage1 else None
    )
    # --- model and data, before anything is written: a bad path fails with nothing on disk
    model = build_model(cfg).to(accelerator.device)
    set_vae_dtype(model, cfg.perf.vae_dtype, accelerator.device.type)
    source = build_data_source(cfg, model.backbone.image_size)
    resolve_schedule(cfg, source, world)
    preview = preview_batch(cfg, model, source) if accelerator.is_main_process else None
    folder.write_config(accelerator, cfg)
    cache = prepare_latent_cache(cfg, model.codec, model.backbone.image_size, source, accelerator)

    EnhanceStages(accelerator, cfg, folder, model, source, cache, preview).run(run_stages)

    exported: dict = {}
    final_loss = None
    if accelerator.is_main_process:
        stage2_step = cfg.stage2.steps if 2 in cfg.train.stages else None
        exported = export_model(model, cfg, run_dir / "export", stage2_step)
        final_loss = _last_loss(run_dir / "metrics.jsonl")
        if cfg.logging.grad_conflict:
            plot_grad_conflict(run_dir / "metrics.jsonl", run_dir / "grad_conflict.png")
    accelerator.wait_for_everyone()
    return {"export": exported, "final_loss": final_loss}


def _last_loss(path: Path) -> float | None:

    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["loss"] if lines else None
