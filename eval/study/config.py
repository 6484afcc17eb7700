"""The study's one typed config tree: the world, the "original" tower, the enhancement schedule,
the held-out sets, the sensitivity measurement and the trend sweeps.

Resolved like every command's config (``genhancer.runtime.configtools``): dataclass defaults <
preset (``eval/study/presets/*.yaml``) < ``--config FILE`` < ``--set key=value``. The defaults
are the protocol pre-registered on 2026-12-03 (preset ``small``); a testbed is a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from eval.study.conditions import check_conditions
from genhancer.runtime.configtools import doc, resolve
from genhancer.runtime.errors import UserError
from genhancer.toyworld.world import BACKGROUNDS

PRESETS_DIR = Path(__file__).parent / "presets"

#: GenHancer's variants (``enhance --preset tiny``) and the other methods (``enhance --method M``).
GENHANCER_VARIANTS: tuple[str, ...] = ("enhanced", "local", "one_stage")
METHOD_VARIANTS: tuple[str, ...] = ("diva", "dcr", "dcr-own-lr", "naive-contrastive")
#: The positive control: the tower fine-tuned with a supervised loss on the rare attributes.
CONTROL_VARIANTS: tuple[str, ...] = ("supervised-rare",)
ALL_VARIANTS: tuple[str, ...] = (*GENHANCER_VARIANTS, *METHOD_VARIANTS, *CONTROL_VARIANTS)
#: ``make reproduce-small``: GenHancer against DIVA, DCR and the naive baseline.
HEAD_TO_HEAD: tuple[str, ...] = ("enhanced", "diva", "dcr", "naive-contrastive")

Denoiser = Literal["genhancer", "sd"]


@dataclass
class WorldSection:
    """The toy world every image of the study comes from (pretraining, enhancement, held-out)."""

    max_count: int = doc(3, "shapes per scene: 1..max_count")
    text_prob: float = doc(0.5, "probability that a scene carries a word (a nuisance)")
    object_scale: float = doc(1.0, "shape diameter multiplier (larger: rare attributes cover more pixels)")
    backgrounds: list[str] = doc(list(BACKGROUNDS), "background colours drawn from (a nuisance)")
    jitter: bool = doc(True, "per-shape position jitter (a nuisance)")

    def options(self) -> dict:
        """ToyWorld keyword options that differ from the default world (empty: the default world)."""
        out: dict = {}
        if self.max_count != 3:
            out["max_count"] = self.max_count
        if self.text_prob != 0.5:
            out["text_prob"] = self.text_prob
        if self.object_scale != 1.0:
            out["object_scale"] = self.object_scale
        if tuple(self.backgrounds) != BACKGROUNDS:
            out["backgrounds"] = list(self.backgrounds)
        if not self.jitter:
            out["jitter"] = False
        return out


@dataclass
class TowerSection:
    """The "original" tower: a tiny CLIP pretrained on sparse captions (``genhancer.toyworld.sparse``)."""

    steps: int = doc(400, "contrastive pretraining steps")
    images: int = doc(2048, "pretraining images")
    rare_prob: float = doc(0.1, "probability that a caption states count / orientation / position")


@dataclass
class ScheduleSection:
    """Every enhancement run's schedule (each method's own choices live in its tiny recipe)."""

    images: int = doc(4096, "enhancement world size")
    batch: int = doc(32, "global batch of every stage (micro-batch: the recipe's, at most this)")
    stage1_steps: int = doc(200, "stage-1 steps (tower frozen)")
    stage1_lr: float = doc(1e-3, "stage-1 lr")
    stage2_steps: int = doc(100, "stage-2 steps (LoRA on the tower)")
    # lr x steps = 0.05, the paper's stage-2 product (1e-5 x 5,000): the same Adam travel per weight.
    stage2_lr: float = doc(5e-4, "stage-2 lr of AdamW stages (a recipe with another optimiser keeps its own)")
    own_lr_ratio: float = doc(0.1, "dcr-own-lr: stage-2 lr = stage1_lr x this (DCR's official 1e-5 / 1e-4)")
    local_ratio: float = doc(0.25, "the `local` variant's backbone.local_token_ratio")
    enhance_sets: list[str] = doc(
        [], "extra `enhance --set` overrides for every GenHancer run and the sensitivity"
    )
    control_lr: float = doc(5e-4, "positive control: LoRA lr of the supervised rare-attribute loss")


@dataclass
class HeldOutSection:
    """Held-out toy worlds (9001-9003), never trained on, plus scikit-learn's real digits."""

    mmvp_pairs: int = doc(40, "toy MMVP-VLM pairs per pattern")
    probe_train: int = doc(1500, "probe training scenes")
    probe_test: int = doc(1000, "probe test scenes")
    zeroshot_images: int = doc(600, "zero-shot scenes")
    digits_images: int = doc(1797, "real digits for clustering")


@dataclass
class SensitivitySection:
    """Stage 1 per condition and a paired held-out loss (``eval.study.sensitivity``)."""

    denoisers: list[Denoiser] = doc(["genhancer", "sd"], "whose sensitivity: genhancer | sd")
    conditions: list[str] = doc(
        ["token", "token+rare", "token+all", "null"],
        "token | null | token+rare | token+all | token+<attribute>[,<attribute>] | caption, empty (sd)",
    )
    steps: int = doc(0, "stage-1 steps per condition (0: schedule.stage1_steps)")
    lr: float = doc(0.0, "stage-1 lr (0: schedule.stage1_lr)")
    heldout_images: int = doc(512, "held-out scenes (world 9004)")
    draws: int = doc(4, "draws of (latent sample, noise, t) per held-out scene, shared by all conditions")
    sd_path: str = doc(
        "genhancer-tiny:sd-v", "the frozen SD (DCR's and naive's; DIVA's is genhancer-tiny:sd)"
    )
    sd_target: Literal["epsilon", "v_prediction"] = doc("v_prediction", "the SD's loss target")
    sd_sample_posterior: bool = doc(True, "sample the SD VAE posterior (DCR) or take its mean (DIVA)")


Knob = Literal["stage1", "depth", "local", "stages"]


@dataclass
class TrendsSection:
    """The paper's four knobs as dose-response sweeps (``--part trends``, ``eval.study.trends``):
    each knob is swept with the others at their base values; every point is GenHancer's run
    (two-stage ``enhanced`` or ``one_stage``) with the point's ``enhance --set`` overrides."""

    knobs: list[Knob] = doc(
        ["stage1", "depth", "local", "stages"], "knobs swept: stage1 | depth | local | stages"
    )
    seeds: list[int] = doc([], "seeds of the sweep (empty: the study's seeds)")
    stage1_fractions: list[float] = doc(
        [0.25, 0.5, 1.0, 1.5], "stage-1 lengths as fractions of schedule.stage1_steps (1.0: the base)"
    )
    depth_key: str = doc("method.denoiser.num_single_layers", "the enhance key the depth knob sets")
    depths: list[int] = doc([1, 2, 4, 8], "denoiser depths swept (values of depth_key)")
    base_depth: int = doc(2, "depth of every other knob's points (the tiny preset's 2 single-stream blocks)")
    local_ratios: list[float] = doc(
        [0.0, 0.25, 0.5, 1.0], "backbone.local_token_ratio values swept (paper Fig. 1 iii)"
    )
    base_local_ratio: float = doc(0.0, "local-token ratio of every other knob's points")
    one_stage: list[bool] = doc([False, True], "two-stage (false) and one-stage (true, paper Fig. 6) points")
    heldout_images: int = doc(64, "held-out scenes (world 9005, full captions) for the generation metric")
    draws: int = doc(2, "(latent sample, noise, t) draws per scene for recon_loss, shared by every point")
    sample_steps: int = doc(8, "Euler steps per reconstruction for clip_score")
    judge: str = doc(
        "genhancer-tiny:clip", "frozen full-caption CLIP judging reconstructions against captions"
    )

    def validate(self) -> None:
        if not self.knobs:
            raise UserError("trends.knobs: name at least one knob")
        if any(f <= 0 for f in self.stage1_fractions) or not self.stage1_fractions:
            raise UserError("trends.stage1_fractions: give fractions > 0")
        if any(d < 1 for d in (*self.depths, self.base_depth)) or not self.depths:
            raise UserError("trends.depths and trends.base_depth must be >= 1")
        if any(not 0 <= r <= 1 for r in (*self.local_ratios, self.base_local_ratio)) or not self.local_ratios:
            raise UserError("trends.local_ratios and trends.base_local_ratio must be in [0, 1]")
        if not self.one_stage:
            raise UserError("trends.one_stage: give false and/or true")
        if self.heldout_images < 1 or self.draws < 1 or self.sample_steps < 1:
            raise UserError("trends.heldout_images, trends.draws and trends.sample_steps must be >= 1")


@dataclass
class StudyConfig:
    seeds: list[int] = doc([0, 1, 2], "seeds: each its own pretraining world and init, its own runs")
    methods: list[str] = doc(
        list(GENHANCER_VARIANTS), f"what is trained against the original: {ALL_VARIANTS}"
    )
    method_sets: list[str] = doc(
        [], "extra `enhance --set` for the other methods' runs (tests point sd.path)"
    )
    world: WorldSection = field(default_factory=WorldSection)
    tower: TowerSection = field(default_factory=TowerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    heldout: HeldOutSection = field(default_factory=HeldOutSection)
    sensitivity: SensitivitySection = field(default_factory=SensitivitySection)
    trends: TrendsSection = field(default_factory=TrendsSection)

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_VARIANTS]
        if unknown:
            raise UserError(f"methods: unknown '{unknown[0]}'; choose from {', '.join(ALL_VARIANTS)}")
        if not self.seeds:
            raise UserError("seeds: give at least one seed")
        for d in self.sensitivity.denoisers:
            try:
                check_conditions(self.sensitivity.conditions, d)
            except ValueError as exc:
                raise UserError(f"sensitivity.conditions: {exc}") from None
        self.trends.validate()
        if self.world.object_scale <= 0:
            raise UserError("world.object_scale must be > 0")
        bad = [b for b in self.world.backgrounds if b not in BACKGROUNDS]
        if bad or not self.world.backgrounds:
            raise UserError(f"world.backgrounds: choose from {', '.join(BACKGROUNDS)}")

    @property
    def sensitivity_steps(self) -> int:
        return self.sensitivity.steps or self.schedule.stage1_steps

    @property
    def sensitivity_lr(self) -> float:
        return self.sensitivity.lr or self.schedule.stage1_lr


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_study_config(
    preset: str | None = "small", config_file: str | Path | None = None, overrides: list[str] | tuple = ()
) -> StudyConfig:
    """defaults < preset < config file < ``key=value`` overrides, validated."""
    return resolve(StudyConfig, PRESETS_DIR, preset, config_file, overrides)
