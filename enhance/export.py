"""Export: merge LoRA into the tower and write what downstream tools load (the layout is
:mod:`enhance.layout`'s; each method writes and reads its own ``denoiser/`` part).

:func:`load_denoiser_export` reads ``export/denoiser/`` back through the method that wrote it, so
consumers (the demo's reconstruction view) never rebuild the model themselves.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from enhance.denoiser_export import DenoiserExport
from enhance.export_meta import DenoiserMeta, ExportMeta
from enhance.layout import (
    DENOISER_DIR,
    STEPS_DIR,
    list_step_exports,
    read_denoiser_meta,
    read_export_meta,
)
from enhance.methods import get_method
from enhance.stages import merge_lora
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError, first_line

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _meta(cfg, stage2_step: int | None, final: bool) -> ExportMeta:
    s2 = cfg.stage2
    return ExportMeta(
        method=cfg.method.name,
        stage2_step=stage2_step,
        final=final,
        dtype=s2.export_dtype,
        lora_targets=s2.lora_targets,
        lora_target_modules=list(s2.lora_target_modules),
        lora_bias=s2.lora_bias,
    )


def write_denoiser_export(model, cfg, folder: Path) -> Path:
    """Write the projector, the method's generator weights and ``genhancer.json`` into ``folder``
    (what :func:`load_denoiser_export` reads back); used by the final and the per-step exports.
    Reads the model, never changes it."""
    folder = Path(folder)
    model.projector.save_pretrained(folder / "projector", safe_serialization=True)
    get_method(cfg.method.name).export_extras(model, cfg, folder)
    DenoiserMeta(cfg.method.name, configtools.to_dict(cfg.method), configtools.to_dict(cfg.backbone)).write(
        folder
    )
    return folder


def export_model(model, cfg, out_dir: Path, stage2_step: int | None = None) -> dict[str, str]:
    """Write every export; returns {kind: path}. Writes into ``export.tmp`` then renames, keeping
    the per-step exports already under ``export/steps/``."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / (out_dir.name + ".tmp")
    _rescue_steps(out_dir, tmp)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    merge_lora(model)
    model.backbone.model.to(_DTYPES[cfg.stage2.export_dtype])
    written = model.backbone.export(tmp)
    den_dir = write_denoiser_export(model, cfg, tmp / DENOISER_DIR)
    _meta(cfg, stage2_step, True).write(tmp)
    written["denoiser"] = str(den_dir)
    if (out_dir / STEPS_DIR).exists():  # a rename within the same folder: a crash leaves it in tmp
        (out_dir / STEPS_DIR).rename(tmp / STEPS_DIR)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return {k: str(out_dir / Path(v).name) for k, v in written.items()}


def _rescue_steps(out_dir: Path, tmp: Path) -> None:
    """A crash between moving ``steps/`` into ``export.tmp`` and the final rename leaves the
    per-step exports there: put them back before ``export.tmp`` is cleared."""
    if (tmp / STEPS_DIR).is_dir() and not (out_dir / STEPS_DIR).exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        (tmp / STEPS_DIR).rename(out_dir / STEPS_DIR)


def export_step(model, cfg, out_dir: Path, step: int) -> Path:
    """Write the tower as it is at stage-2 ``step`` to ``out_dir/steps/<step>/``, merged, without
    touching the model being trained (a CPU copy is merged), with ``denoiser/`` too when
    ``stage2.export_denoiser`` is on; then keep the newest ``stage2.export_keep``. Returns the folder."""
    steps_dir = Path(out_dir) / STEPS_DIR
    target = steps_dir / str(step)
    tmp = steps_dir / f".{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    backbone = copy.deepcopy(model.backbone).cpu()
    merge_lora(SimpleNamespace(backbone=backbone))  # merge_lora only reads and writes .backbone
    backbone.model.to(_DTYPES[cfg.stage2.export_dtype])
    backbone.export(tmp)
    if cfg.stage2.export_denoiser:
        write_denoiser_export(model, cfg, tmp / DENOISER_DIR)
    _meta(cfg, step, False).write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    del backbone
    prune_step_exports(steps_dir, cfg.stage2.export_keep)
    return target


def prune_step_exports(steps_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` per-step exports (0 keeps all); returns what was removed."""
    found = list_step_exports(steps_dir)
    if keep <= 0 or len(found) <= keep:
        return []
    removed = [p for _, p in found[:-keep]]
    for p in removed:
        shutil.rmtree(p)
    return removed


# --- reading export/denoiser/ back ---------------------------------------------------------------


def load_denoiser_export(folder: str | Path, cache_dir: str | None = None) -> DenoiserExport:
    """Rebuild ``export/denoiser/`` (what :func:`export_model` wrote) through the method that wrote
    it; errors name what is missing."""
    folder = Path(folder)
    try:
        meta = read_denoiser_meta(folder)
    except (OSError, KeyError) as exc:
        raise UserError(f"{folder / 'genhancer.json'}: {first_line(exc)}") from None
    return get_method(meta.method).load_export(folder, meta, cache_dir)


__all__ = [
    "DENOISER_DIR",
    "STEPS_DIR",
    "DenoiserExport",
    "export_model",
    "export_step",
    "list_step_exports",
    "load_denoiser_export",
    "prune_step_exports",
    "read_export_meta",
    "write_denoiser_export",
]
