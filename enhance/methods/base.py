"""What a method is, to the rest of the toolkit: a :class:`Method` (config-time knowledge, no torch)
and the :class:`MethodModel` it builds (what the stage driver, the loop and the exports touch).

A method lives in one folder, ``enhance/methods/<name>/``: ``config.py`` (its typed section of the
config, ``method:`` in YAML, tagged by ``method.name``), ``method.py`` (its :class:`Method`),
``model.py`` (its :class:`MethodModel`, torch), ``recipes.yaml`` (per backbone preset: what differs
from the backbone preset's stage settings) and its docs page. ``enhance/methods/__init__.py`` holds
the one registry line per method.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from genhancer.runtime import configtools
from genhancer.runtime.errors import UserError


@runtime_checkable
class MethodModel(Protocol):
    """The model a method builds. Parts the stages train are attributes (``backbone``,
    ``projector``, ``denoiser``, ``codec``); ``checkpoint_prefixes`` names the non-tower weights a
    checkpoint keeps (a frozen pretrained part reloads from its path instead)."""

    checkpoint_prefixes: tuple[str, ...]

    def training_forward(self, batch: dict, generator: Any) -> dict: ...

    def reconstruct(self, pixel_values: Any, generator: Any, steps: int = ...) -> Any: ...


class Method:
    """One way of training the tower through a generative model.

    Subclasses set ``name``, ``summary``, ``section`` (the config dataclass), ``stages`` and
    ``plan``, and implement ``build`` and ``trains``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    section: ClassVar[type]
    stages: ClassVar[tuple[int, ...]] = (1, 2)
    plan: ClassVar[dict[int, str]] = {}
    #: Old top-level config sections this method read (migrated into ``method.*`` on load).
    legacy_sections: ClassVar[tuple[str, ...]] = ()
    #: ``recipes.yaml`` beside the method (None: the backbone presets are the recipe).
    recipes_file: ClassVar[Path | None] = None

    # --- config time -----------------------------------------------------------------------------

    def validate(self, cfg: Any) -> None:
        """Refuse settings this method cannot run (called by ``EnhanceConfig.validate``)."""
        bad = [s for s in cfg.train.stages if s not in self.stages]
        if bad:
            raise UserError(
                f"train.stages={cfg.train.stages}: method {self.name} has stages {list(self.stages)}"
            )

    def precheck(self, cfg: Any, cache_dir: str | None) -> None:
        """Checks that read only JSON configs, made before any weight is loaded."""

    def recipes(self) -> dict:
        """``{"description", "common", "presets"}`` of ``recipes.yaml`` (empty without one)."""
        if self.recipes_file is None:
            return {"description": "", "common": {}, "presets": {}}
        data = configtools.load_yaml(self.recipes_file)
        return {
            "description": data.get("description", ""),
            "common": data.get("common") or {},
            "presets": data.get("presets") or {},
        }

    def legacy_key(self, key: str) -> str | None:
        """The new dotted key of an old top-level one (``sd.path`` -> ``method.sd.path``), or None
        when the old key was not this method's."""
        top, _, rest = key.partition(".")
        if top in self.legacy_sections:
            return f"method.{key}"
        return None

    # --- run time --------------------------------------------------------------------------------

    def build(self, cfg: Any, backbone: Any, cache_dir: str | None) -> MethodModel:
        raise NotImplementedError

    def trains(self, stage: int, cfg: Any) -> set[str]:
        """Which parts train in ``stage``: ``projector``, ``denoiser``, ``lora``, ``tower``."""
        raise NotImplementedError

    def describe(self, cfg: Any) -> dict:
        """What ``enhance --describe`` shows of the method (its stage plan and costs)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "stages": {f"stage{s}": self.plan.get(s, "") for s in cfg.train.stages},
        }

    def preview_steps(self, cfg: Any) -> int:
        """Sampling steps of the previews written at each checkpoint."""
        return 20

    def path_keys(self, cfg: Any) -> dict[str, str]:
        """Config keys of the method naming files it reads, and what each is (checked before torch)."""
        return {}

    def architecture(self, cfg: Any, backbone_dims: tuple[int, int] | None) -> dict[str, Any]:
        """``{part: module}`` built on the meta device at the configured size (parameter counts
        for ``--describe``); ``backbone_dims`` = (global token width, joint-space width)."""
        return {}

    # --- exports ---------------------------------------------------------------------------------

    def export_extras(self, model: MethodModel, cfg: Any, folder: Path) -> None:
        """Write the method's generator weights into ``export/denoiser/`` (beside the metadata)."""

    def load_export(self, folder: Path, meta: Mapping, cache_dir: str | None) -> Any:
        """Rebuild ``export/denoiser/`` into a :class:`~enhance.export.DenoiserExport`."""
        raise UserError(f"the run in {folder.parent.parent} ({self.name}) exports no denoiser to reload")
