"""The two metadata records an export carries, in their current format: ``genhancer_export.json``
in each export folder (:class:`ExportMeta`) and ``export/denoiser/genhancer.json``
(:class:`DenoiserMeta`). Torch-free and importing nothing of ``enhance``, so the models that
rebuild an export can name them while :mod:`enhance.layout` reads them back (migrating older
formats through the config tree's own migration)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXPORT_META = "genhancer_export.json"
DENOISER_META = "genhancer.json"
#: Format 1: written before the fields were versioned (no ``format`` key); format 2: now.
EXPORT_FORMAT = 2


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
        """The current format (:func:`enhance.layout.read_denoiser_meta` migrates format 1 first)."""
        return cls(data["method"], dict(data["method_config"]), dict(data["backbone"]), int(data["format"]))

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
