"""Export: merge LoRA into the tower and write what downstream tools load.

``DIR/export/hf/``            whole dual encoder + processor (``AutoModel`` / ``AutoProcessor``)
``DIR/export/vision_tower/``  image encoder alone + image processor (what LLaVA loads)
``DIR/export/open_clip/``     state dict + model config (open_clip sources)
``DIR/export/denoiser/``      projector and denoiser (``transformer/`` or, discrete,
                              ``perceiver/``) with ``genhancer.json`` (the demo's reconstruction view)
``DIR/export/steps/<step>/``  the merged tower every ``stage2.export_every`` stage-2 steps, in the
                              tower layouts above (checkpoint selection), and ``denoiser/`` when
                              ``stage2.export_denoiser`` is on (the demo's per-step reconstructions)
``genhancer_export.json``     in each export folder: the method, stage-2 step, dtype, LoRA settings

:func:`load_denoiser_export` reads ``export/denoiser/`` back into the classes that wrote it, so
consumers (the demo's reconstruction view) never rebuild the model themselves.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from enhance.model import GenHancerModel
from enhance.stages import merge_lora
from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError, first_line

DENOISER_META = "genhancer.json"
DENOISER_DIR = "denoiser"
STEPS_DIR = "steps"
EXPORT_META = "genhancer_export.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _meta(cfg, stage2_step: int | None, final: bool) -> dict:
    s2 = cfg.stage2
    return {
        "method": cfg.method.name,
        "stage2_step": stage2_step,
        "final": final,
        "dtype": s2.export_dtype,
        "lora_targets": s2.lora_targets,
        "lora_target_modules": list(s2.lora_target_modules),
        "lora_bias": s2.lora_bias,
    }


def read_export_meta(folder: str | Path) -> dict | None:
    """The ``genhancer_export.json`` of an export folder (or of its parent), or None."""
    folder = Path(folder)
    for f in (folder / EXPORT_META, folder.parent / EXPORT_META):
        if f.is_file():
            return json.loads(f.read_text())
    return None


def write_denoiser_export(model: GenHancerModel, cfg, folder: Path) -> Path:
    """Write the projector, the denoiser's weights and ``genhancer.json`` into ``folder`` (what
    :func:`load_denoiser_export` reads back). The one writer of the final and the per-step
    exports, so a new denoiser kind is added here once. Reads the model, never changes it."""
    folder = Path(folder)
    model.projector.save_pretrained(folder / "projector", safe_serialization=True)
    transformer = getattr(model.denoiser, "transformer", None)
    if transformer is not None:  # continuous: the FLUX transformer inside ContinuousDenoiser
        transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    elif hasattr(model.denoiser, "save_pretrained"):  # discrete: the Perceiver itself
        model.denoiser.save_pretrained(folder / "perceiver", safe_serialization=True)
    meta = {
        "denoiser": configtools.to_dict(cfg.denoiser),
        "vae": configtools.to_dict(cfg.vae),
        "flow": configtools.to_dict(cfg.flow),
        "backbone": configtools.to_dict(cfg.backbone),
        "method": cfg.method.name,
    }
    if cfg.denoiser.kind == "sd":  # the frozen SD reloads from sd.path; only the projector is ours
        meta["sd"] = configtools.to_dict(cfg.sd)
    (folder / DENOISER_META).write_text(json.dumps(meta, indent=2))
    return folder


def export_model(model: GenHancerModel, cfg, out_dir: Path, stage2_step: int | None = None) -> dict[str, str]:
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
    (tmp / EXPORT_META).write_text(json.dumps(_meta(cfg, stage2_step, True), indent=2))
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


def export_step(model: GenHancerModel, cfg, out_dir: Path, step: int) -> Path:
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
    (tmp / EXPORT_META).write_text(json.dumps(_meta(cfg, step, False), indent=2))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    del backbone
    prune_step_exports(steps_dir, cfg.stage2.export_keep)
    return target


def list_step_exports(steps_dir: Path) -> list[tuple[int, Path]]:
    """Complete per-step exports under ``steps_dir``, oldest first."""
    if not Path(steps_dir).is_dir():
        return []
    found = [(int(p.name), p) for p in Path(steps_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found)


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


@dataclass
class DenoiserExport:
    """The projector, denoiser and frozen codec of ``export/denoiser/``, as training built them.

    Args:
        projector: the :class:`~enhance.projector.ConditionProjector`.
        denoiser: a :class:`~enhance.denoisers.continuous.ContinuousDenoiser` or a
            :class:`~enhance.denoisers.discrete.PerceiverDenoiser`.
        codec: the :class:`~enhance.vae.LatentCodec` (continuous) or :class:`~enhance.vq.VQCodec`.
        meta: the parsed ``genhancer.json`` (the run's denoiser, vae, flow and backbone settings).
    """

    projector: torch.nn.Module
    denoiser: torch.nn.Module
    codec: torch.nn.Module
    meta: dict
    text_context: torch.Tensor | None = None  # frozen-SD methods: the embedding the condition adds to

    @property
    def kind(self) -> str:
        return self.meta.get("denoiser", {}).get("kind", "continuous")

    @property
    def image_size(self) -> int:
        return int(self.meta["backbone"]["image_size"])

    @property
    def local_token_ratio(self) -> float:
        return float(self.meta["backbone"].get("local_token_ratio", 0.0))

    @property
    def preview_steps(self) -> int:
        """The run's ``flow.preview_steps`` (Euler steps of its own previews)."""
        from enhance.config import FlowConfig

        return configtools.from_dict(FlowConfig, self.meta.get("flow", {}), "flow").preview_steps

    def to(self, device: str | torch.device) -> DenoiserExport:
        for part in (self.projector, self.denoiser, self.codec):
            part.to(device)
        if self.text_context is not None:
            self.text_context = self.text_context.to(device)
        return self

    @torch.no_grad()
    def reconstruct(
        self, token: torch.Tensor, pixels: torch.Tensor, generator: torch.Generator, steps: int
    ) -> torch.Tensor:
        """Images in [-1, 1] rebuilt from ``token`` (a precomputed global token per image) with the
        training model's own :meth:`reconstruct` (``pixels`` only give the output size)."""
        from enhance.model import DiscreteGenHancerModel

        if self.kind == "sd":
            from enhance.methods.sd_models import SDMethodModel

            sd = SimpleNamespace(**self.meta["sd"])
            model = SDMethodModel(
                _FixedToken(token),
                self.projector,
                self.denoiser,
                self.codec,
                self.text_context,
                SimpleNamespace(sd=sd),
            )
            return model.reconstruct(pixels, generator, steps=steps or sd.reconstruct_steps)
        cls = DiscreteGenHancerModel if self.kind == "discrete" else GenHancerModel
        model = cls(_FixedToken(token), self.projector, self.denoiser, self.codec)
        return model.reconstruct(pixels, generator, steps=steps)


class _FixedToken(torch.nn.Module):
    """A stand-in backbone that hands the model an already computed global token."""

    def __init__(self, token: torch.Tensor):
        super().__init__()
        self.token = token

    def forward(self, pixel_values: torch.Tensor):
        from enhance.backbones.base import BackboneOutput

        return BackboneOutput(global_token=self.token, local_tokens=self.token[:, None, :0])


def load_denoiser_export(folder: str | Path, cache_dir: str | None = None) -> DenoiserExport:
    """Rebuild ``export/denoiser/`` (what :func:`export_model` wrote); errors name what is missing."""
    from diffusers import FluxTransformer2DModel

    from enhance.config import DenoiserConfig, VAEConfig
    from enhance.denoisers.continuous import ContinuousDenoiser
    from enhance.denoisers.discrete import PerceiverDenoiser
    from enhance.projector import ConditionProjector
    from enhance.vae import build_codec
    from enhance.vq import build_vq

    folder = Path(folder)
    try:
        meta = json.loads((folder / DENOISER_META).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / DENOISER_META}: {first_line(exc)}") from None
    kind = meta.get("denoiser", {}).get("kind", "continuous")
    if kind == "sd":
        return _load_sd_export(folder, meta, cache_dir)
    if kind not in ("continuous", "discrete"):
        raise UserError(f"the run in {folder.parent.parent} used an unknown '{kind}' denoiser")
    weights = "transformer" if kind == "continuous" else "perceiver"
    if not (folder / weights / "config.json").is_file():
        raise UserError(f"{folder} has no {weights}/ (the exported {kind} denoiser weights)")
    try:
        projector = ConditionProjector.from_pretrained(folder / "projector")
        if kind == "continuous":
            module = FluxTransformer2DModel.from_pretrained(folder / weights)
        else:
            module = PerceiverDenoiser.from_pretrained(folder / weights)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the denoiser from {folder}: {first_line(exc)}") from None
    if kind == "discrete":
        den_cfg = configtools.from_dict(DenoiserConfig, meta["denoiser"], "denoiser")
        codec = build_vq(den_cfg, int(meta["backbone"]["image_size"]), cache_dir)
        return DenoiserExport(projector.eval(), module.eval(), codec.eval(), meta)
    codec = build_codec(configtools.from_dict(VAEConfig, meta["vae"], "vae"), cache_dir)
    denoiser = ContinuousDenoiser(module, guidance=float(meta["denoiser"].get("guidance", 4.0)))
    return DenoiserExport(projector.eval(), denoiser.eval(), codec.eval(), meta)


def _load_sd_export(folder: Path, meta: dict, cache_dir: str | None) -> DenoiserExport:
    """A frozen-SD method's export: its projector, and the SD (``sd.path``) it was trained through.
    DIVA conditions on every tower token, so only the global-token methods reconstruct from it."""
    from enhance.config import SDConfig, VAEConfig
    from enhance.denoisers.sd import build_sd, check_pipeline, text_embedding
    from enhance.methods.sd_models import TokenProjector
    from genhancer.toyworld.models import resolve_tiny

    method = meta.get("method", "")
    if method == "diva":
        raise UserError(
            f"the run in {folder.parent.parent} is DIVA, which conditions the UNet on every tower token; "
            "reconstructions from the global token alone exist for genhancer, dcr and naive-contrastive"
        )
    try:
        projector = TokenProjector.from_pretrained(folder / "projector")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the projector from {folder}: {first_line(exc)}") from None
    cfg = SimpleNamespace(
        sd=configtools.from_dict(SDConfig, meta["sd"], "sd"),
        vae=configtools.from_dict(VAEConfig, meta["vae"], "vae"),
    )
    path = resolve_tiny(cfg.sd.path, cache_dir)
    check_pipeline(cfg, path)
    denoiser, codec, _ = build_sd(cfg, cache_dir)
    text = text_embedding(cfg, path, "")
    return DenoiserExport(projector.eval(), denoiser.eval(), codec.eval(), meta, text)
