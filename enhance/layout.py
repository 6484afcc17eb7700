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

Both metadata files (:mod:`enhance.export_meta`) carry a ``format`` number; readers migrate older
formats here, once.
"""

from __future__ import annotations

from pathlib import Path

from enhance.config import migrate_legacy
from enhance.export_meta import DENOISER_META, EXPORT_FORMAT, EXPORT_META, DenoiserMeta, ExportMeta
from genhancer.runtime.jsonfile import read_json

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
HF_DIR = "hf"
VISION_TOWER_DIR = "vision_tower"
OPEN_CLIP_DIR = "open_clip"
DENOISER_DIR = "denoiser"
STEPS_DIR = "steps"


def read_export_meta(folder: str | Path, parent: bool = True) -> ExportMeta | None:
    """The ``genhancer_export.json`` of an export folder (or, with ``parent``, of the folder
    above it: ``export/`` for ``export/hf``), or None."""
    folder = Path(folder)
    for f in (folder / EXPORT_META, folder.parent / EXPORT_META)[: 2 if parent else 1]:
        if f.is_file():
            return ExportMeta.from_json(read_json(f))
    return None


def read_denoiser_meta(folder: str | Path) -> DenoiserMeta:
    data = read_json(Path(folder) / DENOISER_META)
    return DenoiserMeta.from_json(data if "format" in data else _denoiser_meta_v1(data))


def _denoiser_meta_v1(data: dict) -> dict:
    """Format 1 (no ``format`` key) kept the method's settings in top-level sections, as the config
    tree of its time did (GenHancer's ``denoiser``/``vae``/``flow``; a frozen-SD method's ``sd``, its
    VAE scaling in ``vae``): the config tree's own migration moves them under the method."""
    name = str(data.get("method", "genhancer"))
    tree = migrate_legacy({**data, "method": {"name": name}})
    return {
        "method": name,
        "method_config": tree["method"],
        "backbone": dict(data.get("backbone") or {}),
        "format": EXPORT_FORMAT,
    }


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
