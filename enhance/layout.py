"""The run folder and export layout, in one torch-free module every reader imports (enhance,
eval, the demo, the leaderboard's method detection).

``RUN/config.yaml``                 the resolved config
``RUN/checkpoints/``                atomic checkpoint folders
``RUN/export/hf/``                  whole dual encoder + processor (``AutoModel`` / ``AutoProcessor``)
``RUN/export/vision_tower/``        image encoder alone + image processor (what LLaVA loads)
``RUN/export/open_clip/``           state dict + model config (open_clip sources)
``RUN/export/denoiser/``            the method's generator side, ``genhancer.json`` (:class:`DenoiserMeta`)
``RUN/export/steps/<step>/``        the merged tower every ``stage2.export_every`` stage-2 steps
``genhancer_export.json``           in each export folder (:class:`ExportMeta`)

Both metadata files carry a ``format`` number; readers migrate older formats here, once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genhancer.runtime.errors import UserError

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
HF_DIR = "hf"
VISION_TOWER_DIR = "vision_tower"
OPEN_CLIP_DIR = "open_clip"
DENOISER_DIR = "denoiser"
STEPS_DIR = "steps"
EXPORT_META = "genhancer_export.json"
DENOISER_META = "genhancer.json"

#: The VAE keys a format-1 frozen-SD export kept in ``vae`` (now in the method's ``sd`` section).
_V1_SD_VAE_KEYS = ("scaling_factor", "shift_factor", "latent_channels", "sample_posterior")
#: Format 1: written before the fields were versioned (no ``format`` key); format 2: now.
EXPORT_FORMAT = 2


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


@dataclass
class ExportMeta:
    """``genhancer_export.json``: which method trained the tower, at which stage-2 step."""

    method: str = "genhancer"
    stage2_step: int | None = None
    final: bool = True
    dtype: str = "float32"
    lora_targets: str = ""
    lora_target_modules: list[str] = field(default_factory=list)
    lora_bias: str = ""
    format: int = EXPORT_FORMAT

    @classmethod
    def from_json(cls, data: dict) -> ExportMeta:
        """Any format -> the current one (format 1 had the same keys, and no ``format``)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["format"] = EXPORT_FORMAT
        return cls(**known)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / EXPORT_META
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def read_export_meta(folder: str | Path, parent: bool = True) -> ExportMeta | None:
    """The ``genhancer_export.json`` of an export folder (or, with ``parent``, of the folder
    above it: ``export/`` for ``export/hf``), or None."""
    folder = Path(folder)
    for f in (folder / EXPORT_META, folder.parent / EXPORT_META)[: 2 if parent else 1]:
        if f.is_file():
            return ExportMeta.from_json(_read_json(f))
    return None


@dataclass
class DenoiserMeta:
    """``export/denoiser/genhancer.json``: the run's method section and backbone settings, which is
    what rebuilding the generator side needs."""

    method: str
    method_config: dict[str, Any]
    backbone: dict[str, Any]
    format: int = EXPORT_FORMAT

    @classmethod
    def from_json(cls, data: dict) -> DenoiserMeta:
        """Format 1 (no ``format`` key) kept the method's settings in top-level keys: GenHancer's
        ``denoiser``/``vae``/``flow``; a frozen-SD method's ``sd`` and its VAE scaling in ``vae``.
        That writer is gone, so its two shapes are a closed set, migrated here."""
        if "format" in data:
            return cls(
                data["method"], dict(data["method_config"]), dict(data["backbone"]), int(data["format"])
            )
        name = str(data.get("method", "genhancer"))
        if "sd" not in data:  # GenHancer's own denoiser
            section = {k: data[k] for k in ("denoiser", "vae", "flow") if k in data}
        else:
            vae = data.get("vae") or {}
            scaling = {k: vae[k] for k in _V1_SD_VAE_KEYS if k in vae}
            section = {"sd": {**(data.get("sd") or {}), **scaling}}
        return cls(name, {"name": name, **section}, dict(data.get("backbone") or {}))

    @property
    def denoiser_kind(self) -> str:
        """GenHancer's ``continuous`` / ``discrete``; ``sd`` for the frozen-SD methods."""
        if "sd" in self.method_config:
            return "sd"
        return str((self.method_config.get("denoiser") or {}).get("kind", "continuous"))

    def write(self, folder: Path) -> Path:
        path = Path(folder) / DENOISER_META
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def read_denoiser_meta(folder: str | Path) -> DenoiserMeta:
    return DenoiserMeta.from_json(_read_json(Path(folder) / DENOISER_META))


def list_step_exports(steps_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete per-step exports under ``steps_dir`` (``RUN/export/steps``), oldest first."""
    steps_dir = Path(steps_dir)
    if not steps_dir.is_dir():
        return []
    return sorted((int(p.name), p) for p in steps_dir.iterdir() if p.is_dir() and p.name.isdigit())


def step_exports(run_dir: str | Path | None) -> list[tuple[int, Path]]:
    """A run folder's per-step exports, oldest first (none without a run folder)."""
    return [] if run_dir is None else list_step_exports(Path(run_dir) / EXPORT_DIR / STEPS_DIR)


def find_denoiser_dir(path: str | Path | None) -> Path | None:
    """The ``export/denoiser`` folder that belongs to ``path`` (a run dir, its export/, export/hf,
    or the denoiser folder itself); None when there is none."""
    if not path:
        return None
    p = Path(path).expanduser()
    for candidate in (p, p / DENOISER_DIR, p / EXPORT_DIR / DENOISER_DIR, p.parent / DENOISER_DIR):
        if (candidate / DENOISER_META).is_file():
            return candidate
    return None


def find_run_dir(path: str | Path | None) -> Path | None:
    """The ``enhance`` run folder that ``path`` belongs to (the run, its export/, export/hf,
    export/denoiser, export/steps/N...): the nearest folder holding config.yaml and export/."""
    if not path:
        return None
    p = Path(path).expanduser()
    for candidate in (p, *list(p.parents)[:4]):
        if (candidate / CONFIG_FILE).is_file() and (candidate / EXPORT_DIR).is_dir():
            return candidate
    return None
