"""The ``llava-train`` configuration tree (one dataclass per concern).

Defaults are LLaVA-1.5's 7B recipe (Liu et al., "Improved Baselines with Visual Instruction
Tuning", Table 9 / the released scripts); presets in ``llava_integration/presets/*.yaml`` say only
what differs. Every field carries its documentation in ``metadata["doc"]`` for ``--describe``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from genhancer.runtime import configtools
from genhancer.runtime.configtools import doc, field_docs, override
from genhancer.runtime.errors import UserError
from genhancer.runtime.sections import (
    CheckpointSection,
    LoggingSection,
    LrSchedule,
    OptimSection,
    TrainSection,
    check_common,
)
from llava_integration.templates import TEMPLATES

PRESETS_DIR = Path(__file__).parent / "presets"

# The enums of this tree: configtools rejects any other value and names the key.
Stage = Literal["pretrain", "finetune"]
Trainable = Literal["projector", "full", "lora"]
DataSource = Literal["llava", "toyworld"]
ProjectorType = Literal["mlp2x_gelu"]
FeatureSelect = Literal["auto", "default", "full"]
LoadDtype = Literal["float32", "bfloat16", "float16"]
AspectRatio = Literal["crop", "pad"]

STAGES: tuple[str, ...] = get_args(Stage)


@dataclass
class ModelConfig:
    vision_tower: str = doc(
        "openai/clip-vit-large-patch14-336",
        "vision tower: an `enhance` export/vision_tower dir, a CLIP/SigLIP model dir or HF id; "
        "'genhancer-tiny:clip' is the cached tiny base CLIP",
    )
    llm: str = doc(
        "lmsys/vicuna-7b-v1.5",
        "causal LM: HF id or dir; 'genhancer-tiny:llm' builds the cached tiny Llama-style LM",
    )
    random_init_llm: bool = doc(
        False, "build the LM from its known shape with random weights (benchmarks only; needs a known id)"
    )
    pretrained_projector: str = doc(
        "", "dir holding projector.safetensors from a pretrain stage (--projector); finetune starts from it"
    )
    projector_type: ProjectorType = doc(
        "mlp2x_gelu", "projector: Linear -> GELU -> Linear (the only LLaVA-1.5 kind)"
    )
    vision_feature_layer: int = doc(-2, "tower layer whose patch features feed the projector")
    vision_feature_select_strategy: FeatureSelect = doc(
        "auto", "auto (CLIP: default = drop CLS; SigLIP: full) | default | full"
    )
    dtype: LoadDtype = doc(
        "float32",
        "weights dtype when loading: float32 | bfloat16 | float16; outside DeepSpeed the trainable "
        "weights are kept in float32 and the forward runs under autocast in this dtype",
    )
    attn_implementation: str = doc("sdpa", "attention kernel of the LM (sdpa | eager | flash_attention_2)")
    gradient_checkpointing: bool = doc(True, "recompute LM activations in backward (GPU memory)")
    revision: str = doc("", "HF revision for hub ids (empty: default branch)")


@dataclass
class DataConfig:
    source: DataSource = doc(
        "llava", "llava (JSON + image folder under data.root) | toyworld (generated, offline)"
    )
    root: str = doc("", "data root (--data-root); stage paths below are relative to it")
    max_length: int = doc(2048, "max tokens per sample, image tokens included; longer ones are truncated")
    group_by_modality_length: bool = doc(True, "batches hold one modality, grouped by length")
    num_workers: int = doc(4, "DataLoader workers per process (0: load in the main process)")
    toy_pretrain_size: int = doc(4000, "toyworld: caption samples for pretraining")
    toy_finetune_size: int = doc(4000, "toyworld: question samples for finetuning")
    toy_eval_size: int = doc(300, "toyworld: held-out questions for the accuracy report")
    toy_text_only_fraction: float = doc(0.1, "toyworld: share of text-only finetune samples")
    toy_seed: int = doc(0, "toyworld: scene generator seed")


@dataclass
class StageConfig(OptimSection):
    data_path: str = doc(
        "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "LLaVA JSON, relative to data.root (or absolute)"
    )
    image_folder: str = doc("LLaVA-Pretrain/images", "image root for this JSON, relative to data.root")
    template: str = doc("plain", "conversation template: plain | vicuna_v1")
    image_aspect_ratio: AspectRatio = doc(
        "crop",
        "crop (the tower processor's resize + centre crop; LLaVA-1.5 pretraining) | "
        "pad (to square with the processor mean first; LLaVA-1.5 finetuning)",
    )
    trainable: Trainable = doc("projector", "projector | full (LM + projector) | lora (LM LoRA + projector)")
    lr: float = doc(1e-3, "peak learning rate (LoRA weights when trainable=lora)")
    projector_lr: float = doc(0.0, "projector LR when it differs from lr (LoRA recipe: 2e-5); 0: lr")
    lr_schedule: LrSchedule = doc("cosine", "constant (after warmup) | cosine decay to 0 (LLaVA-1.5)")
    warmup_ratio: float = doc(0.03, "linear warmup as a fraction of the steps (LLaVA-1.5: 3 %)")
    epochs: float = doc(1.0, "passes over the data (sets steps when steps is 0)")
    steps: int = doc(0, "optimizer steps; 0: derived from epochs and the dataset size")
    per_device_batch_size: int = override(OptimSection, "per_device_batch_size", 32)
    lora_r: int = doc(128, "LoRA rank")
    lora_alpha: int = doc(256, "LoRA alpha")
    lora_dropout: float = doc(0.05, "LoRA dropout")
    lora_target_modules: list[str] = doc([], "LM module names to adapt (empty: all linear layers)")


@dataclass
class FinetuneStageConfig(StageConfig):
    """The finetune stage's defaults (LLaVA-1.5's finetune.sh). A subclass rather than a factory: a
    config that sets any ``finetune.*`` key is built from the class, so the defaults must live there."""

    data_path: str = override(StageConfig, "data_path", "llava_v1_5_mix665k.json")
    image_folder: str = override(StageConfig, "image_folder", ".")
    template: str = override(StageConfig, "template", "vicuna_v1")
    image_aspect_ratio: AspectRatio = doc(
        "pad",
        "pad (to square with the processor mean first; LLaVA-1.5 finetuning) | "
        "crop (the tower processor's resize + centre crop)",
    )
    trainable: Trainable = override(StageConfig, "trainable", "full")
    lr: float = override(StageConfig, "lr", 2e-5)
    global_batch_size: int = override(StageConfig, "global_batch_size", 128)
    per_device_batch_size: int = override(StageConfig, "per_device_batch_size", 16)


@dataclass
class TrainConfig(TrainSection):
    stages: list[str] = doc(["pretrain", "finetune"], "stages to run, in order (--stage)")
    eval_toy: bool = doc(True, "toyworld: report toy-question accuracy vs chance after training")


@dataclass
class CheckpointConfig(CheckpointSection):
    every: int = override(CheckpointSection, "every", 500)


LoggingConfig = LoggingSection


@dataclass
class LlavaTrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: StageConfig = field(default_factory=StageConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache_dir: str = doc("", "where tiny base models are cached (empty: ~/.cache/genhancer)")

    def validate(self) -> None:
        """Check the whole tree at start-up, including the stage that runs last."""

        if self.data.max_length < 8:
            raise UserError("data.max_length must be >= 8")
        if not self.train.stages or any(s not in STAGES for s in self.train.stages):
            raise UserError(
                f"train.stages must be a non-empty subset of {list(STAGES)}, got {self.train.stages}"
            )
        if self.train.stages != [s for s in STAGES if s in self.train.stages]:
            raise UserError(f"train.stages must run in the order {list(STAGES)}, got {self.train.stages}")
        for name in STAGES:
            st: StageConfig = getattr(self, name)
            configtools.check_choice(f"{name}.template", st.template, tuple(TEMPLATES))  # a registry
            st.check_batches(name)
            if st.steps < 0 or st.lr < 0 or st.epochs < 0 or st.projector_lr < 0:
                raise UserError(f"{name}: steps, epochs and learning rates must be >= 0")
            st.check_schedule(name)
        check_common(self.checkpoint, self.logging)


# Keys that may change between a checkpoint and --resume without invalidating it.
RESUME_ALLOWED_CHANGES = (
    "checkpoint",
    "logging",
    "data.num_workers",
    "data.root",
    "train.stages",
    "train.eval_toy",
    "cache_dir",
)


def load_config(
    preset: str | None = None, config_file: str | None = None, overrides: list[str] | tuple = ()
) -> LlavaTrainConfig:
    """Resolve defaults < preset < config file < --set overrides into a validated tree."""
    return configtools.resolve(LlavaTrainConfig, PRESETS_DIR, preset, config_file, overrides)


def config_docs() -> dict[str, str]:
    """Dotted key -> documentation, for --describe."""
    return field_docs(LlavaTrainConfig)
