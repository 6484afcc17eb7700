"""The ``enhance`` configuration tree (one dataclass per concern).

Defaults here are the paper's settings (GenHancer, Sec. 4 and supplementary "Default training
settings"); presets in ``enhance/presets/*.yaml`` only say what differs. Every field carries its
documentation in ``metadata["doc"]`` so ``enhance --describe`` can print it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from genhancer.runtime import configtools
from genhancer.runtime.configtools import doc
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
DenoiserKind = Literal["continuous", "discrete", "sd"]
MethodName = Literal["genhancer", "diva", "dcr", "naive-contrastive"]
SDTarget = Literal["epsilon", "v_prediction"]
UnetDtype = Literal["float32", "bfloat16"]
DcrNegatives = Literal["exact", "sampled"]
DivaTokens = Literal["random_local", "all_local", "pooled_avg"]
DivaText = Literal["full", "mean"]
TowerTuning = Literal["lora", "full"]
OptimizerName = Literal["adamw", "sgd"]
LrSchedule = Literal["constant", "cosine"]
TimestepSampler = Literal["logit_normal", "uniform"]
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
class ProjectorConfig:
    hidden_act: str = doc("gelu", "activation between the two linear layers of each head")


@dataclass
class DenoiserConfig:
    kind: DenoiserKind = doc(
        "continuous",
        "continuous (FLUX-style MM-DiT, GenHancer) | discrete (VQ + Perceiver, GenHancer) | sd (the frozen "
        "pretrained Stable Diffusion UNet of the sd.* section: diva, dcr, naive-contrastive)",
    )
    num_layers: int = doc(2, "MM-DiT (double-stream) blocks")
    num_single_layers: int = doc(4, "single-stream DiT blocks")
    attention_head_dim: int = doc(128, "per-head width; must equal sum(axes_dims_rope)")
    num_attention_heads: int = doc(24, "heads; hidden size = heads * head dim (3072 for FLUX)")
    joint_attention_dim: int = doc(4096, "context width: the projector's context head outputs this")
    pooled_projection_dim: int = doc(768, "pooled vector width: the projector's pooled head outputs this")
    axes_dims_rope: list[int] = doc([16, 56, 56], "rotary dims per position axis (text, row, col)")
    guidance: float = doc(4.0, "fixed guidance value fed to the guidance embedding")
    guidance_embeds: bool = doc(True, "FLUX-dev style guidance embedding")
    init_from: str = doc("", "ablation (Fig. 1 iv): start from a pretrained FLUX transformer dir/id")
    init_subfolder: str = doc("transformer", "subfolder of init_from holding the transformer")
    # --- discrete denoiser (Alg. 2); num_layers is the Perceiver depth (paper: 6)
    tokenizer: str = doc("", "discrete: diffusers VQModel dir/id ('genhancer-tiny:vq' for tiny)")
    tokenizer_subfolder: str = doc("vqvae", "discrete: subfolder of tokenizer holding the VQModel")
    codebook_size: int = doc(0, "discrete: expected codebook size (0: take the tokenizer's)")
    token_grid: int = doc(0, "discrete: expected code grid per side at the tower resolution (0: derive)")
    perceiver_hidden: int = doc(1024, "discrete: Perceiver width (the projector's context head outputs this)")
    perceiver_heads: int = doc(16, "discrete: Perceiver attention heads")
    decoder_layers: int = doc(1, "discrete: read-out blocks for the masked positions")
    mask_ratio: list[float] = doc([0.5, 0.9], "discrete: per-sample mask ratio drawn from U(lo, hi)")


@dataclass
class VAEConfig:
    name_or_path: str = doc(
        "black-forest-labs/FLUX.1-dev",
        "HF id or dir of a FLUX-style 16-channel AutoencoderKL; 'genhancer-tiny:vae' builds the tiny one",
    )
    subfolder: str = doc("vae", "subfolder of name_or_path holding the VAE")
    scaling_factor: float = doc(0.3611, "FLUX latent scale: z = (latent - shift) * scale")
    shift_factor: float = doc(0.1159, "FLUX latent shift")
    latent_channels: int = doc(16, "latent channels (packed 2x2 -> 4x this denoiser input channels)")
    sample_posterior: bool = doc(True, "sample the posterior (paper) rather than take its mode")


@dataclass
class FlowConfig:
    timestep_sampler: TimestepSampler = doc(
        "logit_normal", "logit_normal (t = sigmoid(s * N(0,1))) | uniform"
    )
    scale: float = doc(1.0, "s of the scaled logit-normal sampler (paper Sec. 3.3)")
    preview_steps: int = doc(20, "Euler steps when sampling previews")


@dataclass
class MethodConfig:
    name: MethodName = doc(
        "genhancer",
        "genhancer (random-init denoiser, two stages) | diva (frozen SD, one stage, diffusion MSE) | dcr "
        "(frozen SD, two stages, contrastive loss on predicted noise) | naive-contrastive (frozen SD, "
        "diffusion MSE + InfoNCE on the tower's features)",
    )


@dataclass
class SDConfig:
    """The frozen pretrained Stable Diffusion of the diva / dcr / naive-contrastive methods."""

    path: str = doc(
        "stabilityai/stable-diffusion-2-1-base",
        "HF id or local dir of a diffusers SD pipeline (unet/, vae/, text_encoder/, tokenizer/, "
        "scheduler/); 'genhancer-tiny:sd' (epsilon) / 'genhancer-tiny:sd-v' (v-prediction) build tiny ones",
    )
    revision: str = doc("", "HF revision (empty: default branch)")
    target: SDTarget = doc(
        "epsilon",
        "what the loss compares the UNet output with: epsilon (the noise; DIVA) | v_prediction "
        "(scheduler.get_velocity; DCR). Must equal the pipeline's scheduler prediction_type unless "
        "sd.allow_target_mismatch",
    )
    allow_target_mismatch: bool = doc(
        False, "train with a target other than the UNet's own prediction_type (off: exit 2)"
    )
    num_train_timesteps: int = doc(1000, "DDPM training timesteps (both official codes: 1000)")
    beta_start: float = doc(0.00085, "DDPM beta_start (SD's)")
    beta_end: float = doc(0.012, "DDPM beta_end (SD's)")
    beta_schedule: str = doc("scaled_linear", "DDPM beta schedule (SD's)")
    unet_dtype: UnetDtype = doc("float32", "dtype of the frozen UNet (DCR's code: bfloat16)")
    cross_attention_dim: int = doc(
        1024,
        "condition width the projector outputs; must equal the UNet's cross_attention_dim (SD 2.x: 1024)",
    )
    reconstruct_steps: int = doc(20, "DDIM steps for previews and the demo's reconstructions")


@dataclass
class DCRConfig:
    temperature: float = doc(0.1, "tau of the InfoNCE over predicted noise (official: 0.1)")
    negatives: DcrNegatives = doc(
        "exact",
        "exact: every other image's condition on each noisy latent, B^2 UNet calls per micro-batch (the "
        "official code) | sampled: dcr.num_negatives random others per anchor, B*(K+1) calls (an "
        "approximation; equal to exact when K = B-1)",
    )
    num_negatives: int = doc(3, "negatives per anchor with dcr.negatives=sampled")
    unet_chunk: int = doc(0, "UNet calls per forward chunk (0: all at once); same loss, less peak memory")
    jitter: list[float] = doc(
        [0.1, 0.1, 0.1, 0.05], "augmented view: ColorJitter brightness, contrast, saturation, hue"
    )
    flip_p: list[float] = doc([0.5, 0.5], "augmented view: horizontal and vertical flip probabilities")
    crop_scale: list[float] = doc([0.9, 1.0], "augmented view: RandomResizedCrop scale")
    crop_ratio: list[float] = doc([0.9, 1.1], "augmented view: RandomResizedCrop aspect ratio")


@dataclass
class DivaConfig:
    prompt: str = doc(
        "a photo of a .",
        "text whose SD text-encoder embedding the visual condition is added to (the official code's "
        "'a photo of a {}' with its single empty class)",
    )
    tokens: DivaTokens = doc(
        "random_local",
        "which tower tokens form the condition, each in the joint space: random_local ([CLS] + "
        "diva.num_tokens-1 patch tokens drawn with replacement; official OpenAI CLIP) | all_local ([CLS] + "
        "every patch token; MetaCLIP) | pooled_avg (pooled token + patch tokens average-pooled over "
        "diva.avg_window; SigLIP)",
    )
    num_tokens: int = doc(77, "random_local: condition length ([CLS] + num_tokens-1 patch tokens)")
    avg_window: int = doc(6, "pooled_avg: window of the 1-d average pooling (official: 6 at 224, 10 at 384)")
    text: DivaText = doc(
        "full",
        "full: the prompt embedding position by position (token count must equal its length; OpenAI "
        "CLIP) | mean: its mean over positions, added to every token (MetaCLIP, SigLIP)",
    )
    draws: int = doc(
        2, "timestep/noise draws per image per step, gradients summed (the official train_steps=2 loop)"
    )


@dataclass
class NaiveConfig:
    contrastive_weight: float = doc(1.0, "weight of the InfoNCE term on the tower's global features")
    reconstruction_weight: float = doc(1.0, "weight of the diffusion MSE term")
    temperature: float = doc(0.1, "InfoNCE temperature")


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
    weight_decay: float = doc(0.01, "AdamW weight decay")
    global_batch_size: int = doc(256, "images per optimizer step over all processes")
    per_device_batch_size: int = doc(16, "images per forward pass; accumulation fills the global batch")
    warmup_steps: int = doc(0, "linear warmup steps (paper: none, constant LR)")
    optimizer: OptimizerName = doc("adamw", "adamw | sgd (DIVA's official optimiser, with momentum)")
    momentum: float = doc(0.9, "SGD momentum (optimizer=sgd)")
    lr_schedule: LrSchedule = doc(
        "constant", "constant (after warmup) | cosine decay to 0 at the stage's end"
    )


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
    method: MethodConfig = field(default_factory=MethodConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    sd: SDConfig = field(default_factory=SDConfig)
    dcr: DCRConfig = field(default_factory=DCRConfig)
    diva: DivaConfig = field(default_factory=DivaConfig)
    naive: NaiveConfig = field(default_factory=NaiveConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    latent_cache: LatentCacheConfig = field(default_factory=LatentCacheConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    train: TrainConfig = field(default_factory=TrainConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache_dir: str = doc("", "where tiny base models are cached (empty: ~/.cache/genhancer)")

    def validate(self) -> None:
        """Check the whole tree at start-up, including parts used only late in the run."""
        from enhance.methods import get_method

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
        if c.path and self.denoiser.kind == "discrete":
            raise UserError(
                "latent_cache.path caches VAE posteriors for the continuous denoiser; the discrete "
                "denoiser's VQ codes are not cached (leave latent_cache.path empty)"
            )
        d = self.denoiser
        if d.kind == "discrete":
            lo_hi = d.mask_ratio
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] < 1:
                raise UserError(f"denoiser.mask_ratio must be [lo, hi] with 0 < lo <= hi < 1, got {lo_hi}")
            if d.perceiver_hidden % d.perceiver_heads:
                raise UserError(
                    f"denoiser.perceiver_hidden {d.perceiver_hidden} must be divisible by "
                    f"denoiser.perceiver_heads {d.perceiver_heads}"
                )
        elif sum(self.denoiser.axes_dims_rope) != self.denoiser.attention_head_dim:
            raise UserError(
                f"denoiser.axes_dims_rope {self.denoiser.axes_dims_rope} must sum to "
                f"denoiser.attention_head_dim {self.denoiser.attention_head_dim}"
            )
        if len(self.denoiser.axes_dims_rope) != 3:
            raise UserError("denoiser.axes_dims_rope needs 3 entries (text, row, col)")
        if not 0.0 <= self.backbone.local_token_ratio <= 1.0:
            raise UserError("backbone.local_token_ratio must lie in [0, 1]")
        if self.flow.scale <= 0:
            raise UserError("flow.scale must be > 0")
        for name in ("stage1", "stage2"):
            st: StageConfig = getattr(self, name)
            st.check_batches(name)
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


METHOD_PRESETS_DIR = PRESETS_DIR / "methods"
#: Sections that configure GenHancer's own denoiser: a frozen-SD method's preset replaces them.
GENHANCER_ONLY_SECTIONS = ("denoiser", "vae", "flow")


def method_presets(method: str) -> dict:
    """``presets/methods/<method>.yaml``: ``description``, ``common`` (the method's recipe) and
    ``presets`` (per backbone preset: what differs, e.g. the official per-backbone condition)."""
    path = METHOD_PRESETS_DIR / f"{method}.yaml"
    data = configtools.load_yaml(path)
    return {
        "description": data.get("description", ""),
        "common": data.get("common") or {},
        "presets": data.get("presets") or {},
    }


def load_config(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple = (),
    method: str | None = None,
) -> EnhanceConfig:
    """Resolve defaults < preset < config file < --set overrides into a validated tree.

    With ``method`` other than genhancer, the preset is the backbone preset ``preset`` with its
    GenHancer-denoiser sections dropped, then the method's recipe and its entry for ``preset``
    (``presets/methods/<method>.yaml``), so ``--method dcr --preset tiny`` is DCR on the tiny world."""
    if method is None or method == "genhancer":
        extra = [f"method.name={method}"] if method else []
        return configtools.resolve(EnhanceConfig, PRESETS_DIR, preset, config_file, [*extra, *overrides])
    from enhance.methods import get_method

    get_method(method)  # unknown name: exit 2 naming --method
    if not preset:
        raise UserError(f"--method {method} needs --preset NAME (see --list-presets --method {method})")
    recipes = method_presets(method)
    if preset not in recipes["presets"]:
        raise UserError(
            f"--method {method} has no preset '{preset}'; choose one of: {', '.join(recipes['presets'])}"
        )
    data = configtools.load_preset(PRESETS_DIR, preset)
    for section in GENHANCER_ONLY_SECTIONS:
        data.pop(section, None)
    data = configtools.deep_merge(data, recipes["common"])
    data = configtools.deep_merge(data, recipes["presets"][preset] or {})
    data = configtools.deep_merge(data, {"method": {"name": method}})
    if config_file:
        file_data = configtools.load_yaml(config_file)
        file_data.pop("preset", None)
        data = configtools.deep_merge(data, file_data)
    data = configtools.apply_overrides(data, overrides, EnhanceConfig)
    cfg = configtools.from_dict(EnhanceConfig, data)
    cfg.validate()
    return cfg
