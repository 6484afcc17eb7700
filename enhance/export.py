"""Export: merge LoRA into the tower and write what downstream tools load.

``DIR/export/hf/``            whole dual encoder + processor (``AutoModel`` / ``AutoProcessor``)
``DIR/export/vision_tower/``  image encoder alone + image processor (what LLaVA loads)
``DIR/export/open_clip/``     state dict + model config (open_clip sources)
``DIR/export/denoiser/``      projector and denoiser (``transformer/`` or, discrete,
                              ``perceiver/``) with ``genhancer.json`` (the demo's reconstruction view)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from enhance import configtools
from enhance.model import GenHancerModel
from enhance.stages import merge_lora


def export_model(model: GenHancerModel, cfg, out_dir: Path) -> dict[str, str]:
    """Write every export; returns {kind: path}. Writes into ``export.tmp`` then renames."""
    tmp = out_dir.parent / (out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    merge_lora(model)
    written = model.backbone.export(tmp)
    den_dir = tmp / "denoiser"
    model.projector.save_pretrained(den_dir / "projector", safe_serialization=True)
    transformer = getattr(model.denoiser, "transformer", None)
    if transformer is not None:  # continuous: the FLUX transformer inside ContinuousDenoiser
        transformer.save_pretrained(den_dir / "transformer", safe_serialization=True)
    elif hasattr(model.denoiser, "save_pretrained"):  # discrete: the Perceiver itself
        model.denoiser.save_pretrained(den_dir / "perceiver", safe_serialization=True)
    meta = {
        "denoiser": configtools.to_dict(cfg.denoiser),
        "vae": configtools.to_dict(cfg.vae),
        "flow": configtools.to_dict(cfg.flow),
        "backbone": configtools.to_dict(cfg.backbone),
    }
    (den_dir / "genhancer.json").write_text(json.dumps(meta, indent=2))
    written["denoiser"] = str(den_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return {k: str(out_dir / Path(v).name) for k, v in written.items()}
