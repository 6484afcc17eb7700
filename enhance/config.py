"""The ``enhance`` configuration tree (one dataclass per concern).

Defaults here are the paper's settings (GenHancer, Sec. 4 and supplementary "Default training
settings"); presets in ``enhance/presets/*.yaml`` only say what differs. Every field carries its
documentation in ``metadata["doc"]`` so ``enhance --describe`` can print it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from enhance.methods import METHOD_SECTION, METHODS, get_method
from enhance.methods.genhancer.config import (
    DenoiserConfig,
    FlowConfig,
    GenHancerSection,
    ProjectorConfig,
    VAEConfig,
)
from genhancer.runtime import configtools
from genhancer.runtime.configtools import doc, override
from genhancer.runtime.errors import UserError
from genhancer.runtime.sections import (
    CheckpointSection,
    LoggingSection,
    OptimSection,
    TrainSection,
    check_common,
)

PRESETS_DIR = Path(__file__).parent / "presets"

# The enums of this tree: configtools rejects any other value and names the key.
BackboneFamily = Literal["openai-clip", "metaclip", "siglip", "open_clip"]
TowerTuning = Literal["lora", "full"]
OptimizerName = Literal["adamw", "sgd"]
Stage2Variant = Literal["stage2_all", "stage2_only"]
LoraTargets = Literal["all-linear", "encoder"]
LoraBias = Literal["none", "lora_only", "all"]
Schedule = Literal["steps", "one_epoch"]
ExportDtype = Literal["float32", "bfloat16"]
DataSource = Literal["webdataset", "imagefolder", "hf", "toyworld"]
VaeDtype = Literal["float32", "bfloat16", "auto"]
CacheDtype = Literal["bfloat16", "float16", "float32"]


@dataclass
class BackboneConfig:
    family: BackboneFamily = doc("openai-clip", "openai-clip | metaclip | siglip | open_clip")
    name_or_path: str = doc(
        "openai/clip-vit-large-patch14",
        "HF id or local dir (open_clip: model name, with `pretrained` naming the weights). "
        "'genhancer-tiny:clip' builds the cached tiny CLIP used by the tiny preset.",
    )
    pretrained: str = doc("", "open_clip only: pretrained tag or checkpoint path")
    image_size: int = doc(224, "input resolution; must match the tower's position embeddings")
    revision: str = doc("", "HF revision to load (empty: default branch)")
    trust_remote_code: bool = doc(False, "allow custom model code from the model dir (off unless asked)")
    allow_pickle: bool = doc(
        False, "allow a pickled pytorch_model.bin (loading it can run code); off: safetensors only"
    )
    local_token_ratio: float = doc(
        0.0, "ablation (paper Fig. 1 iii): fraction of local patch tokens appended to the condition"
    )


@dataclass
class DataConfig:
    source: DataSource = doc("webdataset", "webdataset | imagefolder | hf | toyworld")
    path: str = doc("", "shards (dir, glob or brace pattern), image folder, or datasets path/id")
    image_column: str = doc("image", "image column of a `datasets` dataset")
    split: str = doc("train", "split of a `datasets` dataset")
    crop_scale: list[float] = doc([0.9, 1.0], "RandomResizedCrop scale range")
    num_workers: int = doc(4, "DataLoader workers per process (0: decode in the main process)")
    toyworld_size: int = doc(2048, "number of generated images for source=toyworld")
    toyworld_seed: int = doc(0, "seed of the toy world generator")
    replicate_across_ranks: bool = doc(
        False,
        "REPLICATION ONLY (the official code's data regime): every rank reads the same stream; crops, "
        "noise and timesteps still differ per rank, so a global batch of 256 on 8 ranks holds 32 "
        "distinct images. Off (default): each rank reads its own shards, 256 distinct images a step",
    )


@dataclass
class LatentCacheConfig:
    path: str = doc(
        "",
        "folder of pre-encoded VAE posteriors to train from (built there first if it holds no finished "
        "cache; `enhance --build-latent-cache` builds it only). Empty: encode on the fly",
    )
    crops: int = doc(4, "fixed RandomResizedCrop crops cached per image (a cached run cycles through them)")
    dtype: CacheDtype = doc(
        "bfloat16", "storage dtype of the posterior mean/logvar: bfloat16 | float16 | float32"
    )
    seed: int = doc(0, "seed of the cached crop boxes")
    shard_size: int = doc(256, "images per shard file (the build resumes shard by shard)")
    batch_size: int = doc(64, "crops per VAE forward while building")


@dataclass
class StageConfig(OptimSection):
    steps: int = doc(
        100000,
        "optimizer steps (paper and official config: 100,000 in stage 1; train.schedule=one_epoch "
        "derives one pass over the data instead)",
    )
    lr: float = doc(1e-4, "constant learning rate")
    weight_decay: float = override(OptimSection, "weight_decay", 0.01)
    global_batch_size: int = doc(256, "images per optimizer step over all processes")
    per_device_batch_size: int = doc(16, "images per forward pass; accumulation fills the global batch")
    optimizer: OptimizerName = doc("adamw", "adamw | sgd (DIVA's official optimiser, with momentum)")
    momentum: float = doc(0.9, "SGD momentum (optimizer=sgd)")


@dataclass
class Stage2Config(StageConfig):
    steps: int = doc(
        5000,
        "optimizer steps (paper default 5,000; the official config runs 10,000; train.schedule=one_epoch "
        "derives one pass over the data instead)",
    )
    lr: float = doc(1e-5, "constant learning rate for LoRA (and the denoiser in stage2_all)")
    variant: Stage2Variant = doc(
        "stage2_all", "stage2_all: also train projector+denoiser; stage2_only: freeze them"
    )
    tower_tuning: TowerTuning = doc(
        "lora", "lora: LoRA on the image side (GenHancer, DCR) | full: every image-side weight trains (DIVA)"
    )
    lora_r: int = doc(16, "LoRA rank")
    lora_alpha: int = doc(16, "LoRA alpha")
    lora_dropout: float = doc(0.1, "LoRA dropout")
    lora_targets: LoraTargets = doc(
        "all-linear",
        "all-linear: every linear layer of the image side, the projection to the joint space included "
        "(CLIP visual_projection; the official code's peft all-linear) | encoder: attention and MLP "
        "linears of the image encoder blocks only. The text tower never trains",
    )
    lora_target_modules: list[str] = doc(
        [],
        "narrow the targets to modules with these names (e.g. [q_proj, v_proj]; empty: all of lora_targets)",
    )
    lora_bias: LoraBias = doc(
        "lora_only",
        "biases that train with LoRA: none | lora_only (biases of the adapted layers; official code) | "
        "all (every bias of the image side). Exports fold them in with the adapters",
    )
    export_every: int = doc(
        500,
        "also write a merged tower every N stage-2 steps to export/steps/<step>/ (checkpoint selection, "
        "paper Fig. 1(i)); 0: final export only",
    )
    export_keep: int = doc(10, "per-step exports kept (the newest); 0 keeps all")
    export_denoiser: bool = doc(
        False,
        "per-step exports also carry the projector and denoiser (export/steps/<step>/denoiser/), so the "
        "demo reconstructs from any step; costs the denoiser's size per export (~5 GB for the paper's "
        "1.3 B-parameter FLUX denoiser in float32), hence off for the paper presets",
    )
    export_dtype: ExportDtype = doc(
        "float32",
        "dtype of the exported towers: float32 (ours: the fp32 master weights) | bfloat16 (what the "
        "official code releases; evaluation casts back to float32 either way)",
    )


@dataclass
class TrainConfig(TrainSection):
    schedule: Schedule = doc(
        "steps",
        "steps: stage1.steps / stage2.steps as given (paper: 100,000 / 5,000) | one_epoch: each stage "
        "makes one pass over the data (the supplementary's 'one epoch' wording). They disagree because "
        "the official code feeds every rank the same stream: 100,000 steps x 32 distinct images is about "
        "one pass over CC3M, while with per-rank shards 100,000 x 256 is about nine",
    )
    stages: list[int] = doc([1, 2], "stages to run, in order")
    one_stage: bool = doc(
        False, "ablation: train tower (LoRA) + projector + denoiser together from step 0 (stage 2 only)"
    )


@dataclass
class PerfConfig:
    """Speed switches. None changes the objective; each is checked by tests/enhance/test_perf_flags.py
    (same loss as without it) and measured by bench/train_step.py (see BENCHMARKS.md)."""

    compile: bool = doc(
        False, "torch.compile the denoiser and the vision tower (in place: checkpoint keys unchanged)"
    )
    compile_backend: str = doc("inductor", "torch.compile backend (inductor; aot_eager to debug)")
    gradient_checkpointing: bool = doc(
        False, "recompute tower and denoiser activations in backward: less memory, ~30% more compute"
    )
    vae_dtype: VaeDtype = doc(
        "auto",
        "dtype of the frozen VAE (encode runs under no_grad, latents return as float32): "
        "float32 | bfloat16 | auto (bfloat16 on CUDA, as diffusers' FLUX training scripts run it; "
        "float32 on CPU)",
    )


CheckpointConfig = CheckpointSection


@dataclass
class LoggingConfig(LoggingSection):
    preview_count: int = doc(4, "images in the preview grid written at each checkpoint (0: none)")
    grad_conflict: bool = doc(
        False,
        "at each logged step, the cosine between the gradients of a method's loss terms on the trainable "
        "weights (methods that sum two losses), as grad_cos_* in metrics.jsonl and grad_conflict.png; "
        "one extra forward and a backward per term on logged steps only (training unchanged)",
    )


@dataclass
class EnhanceConfig:
    method: METHOD_SECTION = field(default_factory=GenHancerSection)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    latent_cache: LatentCacheConfig = field(default_factory=LatentCacheConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache_dir: str = doc("", "where tiny base models are cached (empty: ~/.cache/genhancer)")

    def migrate_saved(self, data: dict) -> dict:
        """A run folder's ``config.yaml`` in this tree's current shape (see :func:`migrate_legacy`)."""
        return migrate_legacy(data)

    def validate(self) -> None:
        """Check the whole tree at start-up, including parts used only late in the run."""
        get_method(self.method.name).validate(self)

        if self.stage2.export_every < 0 or self.stage2.export_keep < 0:
            raise UserError(
                f"stage2.export_every and stage2.export_keep must be >= 0, got {self.stage2.export_every}, "
                f"{self.stage2.export_keep}"
            )
        c = self.latent_cache
        if c.crops < 1 or c.shard_size < 1 or c.batch_size < 1:
            raise UserError(
                f"latent_cache.crops, shard_size and batch_size must be >= 1, got {c.crops}, "
                f"{c.shard_size}, {c.batch_size}"
            )
        if not 0.0 <= self.backbone.local_token_ratio <= 1.0:
            raise UserError("backbone.local_token_ratio must lie in [0, 1]")
        for name in ("stage1", "stage2"):
            st: StageConfig = getattr(self, name)
            st.check_batches(name)
            st.check_schedule(name)
            if st.steps < 0 or st.lr < 0:
                raise UserError(f"{name}: steps and lr must be >= 0")
        if not self.train.stages or any(s not in (1, 2) for s in self.train.stages):
            raise UserError(f"train.stages must be a non-empty subset of [1, 2], got {self.train.stages}")
        if self.train.stages != sorted(set(self.train.stages)):
            raise UserError(f"train.stages must be in increasing order, got {self.train.stages}")
        if self.train.one_stage and self.train.stages != [2]:
            raise UserError("train.one_stage=true runs stage 2 only: also set train.stages=[2]")
        if len(self.data.crop_scale) != 2 or not 0 < self.data.crop_scale[0] <= self.data.crop_scale[1] <= 1:
            raise UserError(
                f"data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {self.data.crop_scale}"
            )
        check_common(self.checkpoint, self.logging)


# Keys that may change between a checkpoint and --resume without invalidating it.
RESUME_ALLOWED_CHANGES = (
    "checkpoint",
    "logging",
    "data.num_workers",
    "data.path",
    "latent_cache.batch_size",
    "latent_cache.shard_size",
    "perf.compile",
    "perf.compile_backend",
    "perf.gradient_checkpointing",
    "stage1.steps",
    "stage2.steps",
    "stage2.export_every",
    "stage2.export_keep",
    "stage2.export_dtype",
    "stage2.export_denoiser",
    "train.schedule",
    "train.stages",
    "cache_dir",
)


#: Top-level sections of trees written before a method's settings moved under ``method:``.
LEGACY_SECTIONS = ("denoiser", "vae", "flow", "projector", "sd", "dcr", "diva", "naive")


def _flatten(tree: dict, prefix: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in tree.items():
        dotted = f"{prefix}.{key}"
        out += _flatten(value, dotted) if isinstance(value, dict) and value else [(dotted, value)]
    return out


def _set(tree: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def migrate_legacy(data: dict) -> dict:
    """A tree in the old shape (the method's settings in top-level ``denoiser``/``vae``/``flow``/
    ``projector``/``sd``/``dcr``/``diva``/``naive`` sections, every method's at once) -> the new
    one: the named method's keys under ``method:``, the other methods' dropped (an old tree held
    them at their defaults). A tree in the new shape is returned as it is."""
    if not any(k in data for k in LEGACY_SECTIONS):
        return data
    out = {k: v for k, v in data.items() if k not in LEGACY_SECTIONS}
    out["method"] = dict(out.get("method") or {})
    method = get_method(out["method"].get("name", "genhancer"))
    for top in LEGACY_SECTIONS:
        for key, value in _flatten(data.get(top) or {}, top):
            new = method.legacy_key(key)
            if new is not None:
                _set(out, new, value)
    return out


def _legacy_override(item: str, method: str) -> str:
    """``--set sd.path=X`` (the old key) -> ``method.sd.path=X``; a key of another method's old
    section is refused with the key that would apply."""
    key, sep, value = item.partition("=")
    top = key.strip().split(".")[0]
    if not sep or top not in LEGACY_SECTIONS:
        return item
    if key.strip() == "denoiser.kind" and value.strip() == "sd":
        raise UserError(
            "--set denoiser.kind=sd: the frozen-SD methods are chosen with --method diva|dcr|naive-contrastive"
        )
    new = get_method(method).legacy_key(key.strip())
    if new is None:
        raise UserError(
            f"--set {key.strip()}: not a setting of method '{method}' (method settings live under method.*; "
            f"see enhance --method {method} --preset NAME --describe)"
        )
    return f"{new}={value}"


def _method_name(method: str | None, file_data: dict, overrides: list[str]) -> str:
    """The run's method: ``--method``, else the last ``--set method.name=``, else the config
    file's, else genhancer. ``--method`` and ``--set method.name`` may not disagree."""
    named = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "method.name"]
    if method and named and named[-1] != method:
        raise UserError(f"--method {method} and --set method.name={named[-1]} disagree; give one")
    if method:
        get_method(method)  # unknown name: exit 2 naming --method
        return method
    name = (named[-1] if named else None) or (file_data.get("method") or {}).get("name") or "genhancer"
    if name not in METHODS:
        raise UserError(f"config key 'method.name': {name!r} is not one of {list(METHODS)}")
    return name


def load_config(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple = (),
    method: str | None = None,
) -> EnhanceConfig:
    """Resolve defaults < preset < method recipe < config file < --set overrides into a validated tree.

    The preset is a backbone preset; its ``method:`` section is GenHancer's recipe for that
    backbone. Another method (``--method M``, the same as ``--set method.name=M``) replaces it with
    its own recipe (``common`` + the entry for the preset, in its folder's ``recipes.yaml``), so
    ``--method dcr --preset tiny`` is DCR on the tiny world. Config files and overrides in the
    old shape (top-level ``denoiser``, ``sd``, ``dcr``... sections) are migrated."""
    file_data: dict = {}
    if config_file:
        file_data = migrate_legacy(configtools.load_yaml(config_file))
    name = _method_name(method, file_data, list(overrides))
    overrides = [_legacy_override(o, name) for o in overrides]
    data: dict = {}
    file_preset = file_data.pop("preset", None)  # a saved tree may name the preset it came from
    preset = preset or file_preset
    if preset:
        data = configtools.load_preset(PRESETS_DIR, preset)
        m = get_method(name)
        if m.recipes_file is not None:
            recipes = m.recipes()
            if preset not in recipes["presets"]:
                raise UserError(
                    f"--method {name} has no preset '{preset}'; choose one of: {', '.join(recipes['presets'])}"
                )
            data.pop("method", None)
            data = configtools.deep_merge(data, recipes["common"])
            data = configtools.deep_merge(data, recipes["presets"][preset] or {})
    elif get_method(name).recipes_file is not None and not config_file:
        raise UserError(f"--method {name} needs --preset NAME (see --list-presets --method {name})")
    if (data.get("method") or {}).get("name", name) != name:
        data.pop("method")
    data = configtools.deep_merge(data, {"method": {"name": name}})
    if (file_data.get("method") or {}).get("name", name) != name:
        file_data.pop("method")  # the file's method settings are another method's
    data = configtools.deep_merge(data, file_data)
    data = configtools.apply_overrides(data, overrides, EnhanceConfig)
    cfg = configtools.from_dict(EnhanceConfig, data)
    cfg.validate()
    return cfg


def method_presets(method: str) -> list[str]:
    """The backbone presets ``method`` has a recipe for."""
    m = get_method(method)
    if m.recipes_file is None:
        return configtools.list_presets(PRESETS_DIR)
    return list(m.recipes()["presets"])


__all__ = [
    "METHODS",
    "DenoiserConfig",
    "EnhanceConfig",
    "FlowConfig",
    "ProjectorConfig",
    "VAEConfig",
    "load_config",
    "migrate_legacy",
]
