"""The ``leaderboard`` configuration tree (one dataclass per benchmark).

Resolved like every command's (``genhancer.runtime.configtools``): defaults here < a preset from
``eval/presets/*.yaml`` < ``--config FILE`` < ``--set a.b=value``; unknown keys fail naming the key.
Defaults describe the published benchmarks; the ``tiny`` preset points everything at generated
toy-world fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genhancer.runtime import configtools
from genhancer.runtime.configtools import doc
from genhancer.runtime.errors import UserError
from genhancer.toyworld.world import ATTRIBUTES

PRESETS_DIR = Path(__file__).parent / "presets"
#: The dated snapshot behind the alias ``gpt-4`` that HallusionBench's official judge
#: (``tianyi-lab/HallusionBench`` ``utils.py``, November 2023) requests.
HALLUSION_JUDGE_MODEL = "gpt-4-0613"


@dataclass
class DatasetConfig:
    name: str = doc("", "dataset name used in metric names (e.g. cifar100 -> cifar100/top1)")
    path: str = doc("", "image folder, retrieval folder or `datasets` id (empty: DATA_ROOT/zeroshot/<name>)")
    split: str = doc("test", "split of a `datasets` dataset")
    image_column: str = doc("image", "image column of a `datasets` dataset")
    label_column: str = doc("label", "class column (classification; class names from its feature)")
    caption_column: str = doc("caption", "caption-list column (retrieval)")
    templates: str = doc(
        "", "prompt ensemble name in eval.clip.zeroshot.TEMPLATES (empty: the dataset name, else generic)"
    )


def _ds(name: str, **kw) -> dict:
    return {"name": name, **kw}


@dataclass
class MMVPConfig:
    source: str = doc(
        "",
        "local folder in the published layout, or an HF dataset id such as MMVP/MMVP_VLM "
        "(empty: DATA_ROOT/mmvp_vlm)",
    )
    revision: str = doc("", "HF dataset revision when source is a hub id")
    pairs_per_pattern: int = doc(15, "pairs per visual pattern (pattern = pair index // this)")
    prompt_prefix: str = doc(
        "a photo of ", "text before each statement (official: 'a photo of '; recorded with every number)"
    )


@dataclass
class ZeroShotConfig:
    classification: list[DatasetConfig] = field(
        default_factory=lambda: [
            DatasetConfig(name="imagenet1k", split="validation"),
            DatasetConfig(name="cifar100"),
            DatasetConfig(name="sun397"),
            DatasetConfig(name="cars"),
        ],
        metadata={"doc": "classification datasets (paper Table 3)"},
    )
    retrieval: list[DatasetConfig] = field(
        default_factory=lambda: [DatasetConfig(name="flickr30k"), DatasetConfig(name="coco")],
        metadata={"doc": "retrieval datasets (paper Table 3)"},
    )


@dataclass
class ProbeConfig:
    attributes: list[str] = doc(["color", "count", "orientation", "position"], "toy-world labels to probe")
    train_size: int = doc(2000, "generated training images")
    test_size: int = doc(1000, "generated test images (the next indices of the same world)")
    seed: int = doc(7, "toy-world seed (differs from the tiny tower's and enhance's training worlds)")
    image_size: int = doc(224, "rendered size (the model's processor resizes to its own input)")
    max_count: int = doc(3, "largest group size in the generated scenes")
    l2: float = doc(1e-3, "L2 penalty on the probe weights")
    max_iter: int = doc(200, "L-BFGS iterations")


@dataclass
class ClusterDatasetConfig:
    name: str = doc("", "dataset name used in metric names (mnist -> mnist/nmi) and the Table-2 columns")
    path: str = doc(
        "",
        "LOCAL folder: a `datasets` folder (save_to_disk, or the hub's data files such as "
        "data/test-*.parquet), an image folder (<class>/*.jpg or <split>/<class>/*.jpg), or "
        "sklearn:digits (empty: DATA_ROOT/clustering/<name>)",
    )
    split: str = doc(
        "test", "split of a `datasets` folder, or sub-folder of an image folder ('' = the folder)"
    )
    image_column: str = doc("image", "image column of a `datasets` folder")
    label_column: str = doc("label", "integer class column of a `datasets` folder")
    max_images: int = doc(0, "at most this many images, spread evenly over the classes (0 = the whole split)")


def _cluster(name: str, split: str, image_column: str = "image") -> ClusterDatasetConfig:
    return ClusterDatasetConfig(name=name, split=split, image_column=image_column)


@dataclass
class ClusteringConfig:
    datasets: list[ClusterDatasetConfig] = field(
        default_factory=lambda: [
            _cluster("mnist", "test"),  # ylecun/mnist: 10,000 test images, 10 classes
            _cluster("cifar10", "test", "img"),  # uoft-cs/cifar10: 10,000 test images, 10 classes
            _cluster("eurosat", "test"),  # timm/eurosat-rgb: 5,400 test images, 10 classes
            _cluster("caltech101", ""),  # 101_ObjectCategories/<class>/: 9,146 images, 102 folders
            _cluster("dtd", "test"),  # tanganke/dtd (split 1): 1,880 test images, 47 classes
            _cluster("imagenet1k", "validation"),  # ILSVRC/imagenet-1k: 50,000 validation images
        ],
        metadata={"doc": "datasets to cluster (DCR paper Table 2; README 'Zero-shot clustering')"},
    )
    n_init: int = doc(3, "k-means++ restarts; the run with the lowest inertia is scored")
    max_iter: int = doc(300, "Lloyd iterations per restart (scikit-learn's default)")
    tol: float = doc(1e-4, "k-means convergence tolerance (scikit-learn's default)")
    seed: int = doc(0, "k-means random_state and the subset draw of max_images")
    shard_size: int = doc(
        4096, "images per feature-cache shard (a killed run resumes from the last full shard)"
    )
    feature_cache: str = doc("", "feature cache folder (empty: OUTPUT_DIR/clustering_features)")


@dataclass
class FixturesConfig:
    enabled: bool = doc(False, "generate toy-world fixtures and use them as the data root (tiny preset)")
    seed: int = doc(0, "fixture world seed")
    image_size: int = doc(64, "fixture image size")
    pairs_per_pattern: int = doc(15, "toy MMVP-VLM pairs per pattern")
    class_images: int = doc(20, "classification images per class")
    retrieval_images: int = doc(60, "retrieval images (3 captions each)")
    cluster_images: int = doc(20, "toy clustering images per shape class (clustering/toy_shapes)")


@dataclass
class MllmFixturesConfig:
    seed: int = doc(0, "toy MLLM benchmark world seed (fixtures.enabled)")
    image_size: int = doc(64, "rendered size of the toy MLLM benchmark images")
    mmvp_pairs: int = doc(6, "toy MMVP pairs (2 questions each)")
    cv_bench_per_source: int = doc(4, "toy CV-Bench questions per source (ADE20K, COCO, Omni3D)")
    naturalbench_groups: int = doc(3, "toy NaturalBench groups (2 images x 2 questions)")
    pope_per_split: int = doc(6, "toy POPE questions per split")
    hallusion_sets: int = doc(2, "toy HallusionBench sets (2 figures x 2 questions)")
    scienceqa: int = doc(6, "toy ScienceQA-IMG questions")


@dataclass
class LmmsConfig:
    batch_size: int = doc(8, "requests per forward pass of the LLaVA model")
    dtype: str = doc("auto", "auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    max_new_tokens: int = doc(0, "cap on every task's max_new_tokens (0: the task's own)")
    naturalbench_modes: list[str] = doc(
        ["likelihood", "generation"],
        "NaturalBench answer modes: likelihood (paper Table 2: the likelier option; metrics Acc..) "
        "and/or generation (metrics gen_Acc..)",
    )
    mmvp_answer_key: str = doc(
        "lmms-lab-eval",
        "lmms-lab-eval (data already fixed, issue #1018) | original (MMVP/MMVP copies: swap the key of "
        "Index 99/100 and 279/280)",
    )
    hallusion_judge: str = doc(
        "rule", "rule (first yes/no word) | gpt (the official GPT-4 judge's prompt; needs OPENAI_API_KEY)"
    )
    mmvp_patterns: str = doc(
        "",
        "MMVP pair-to-pattern CSV (Index,pattern; eval.mllm.mmvp_patterns derives it from MMVP-VLM); "
        "empty: DATA_ROOT/mmvp/patterns.csv when present (the toy fixtures write one), else no per-pattern table",
    )
    hallusion_judge_model: str = doc(
        HALLUSION_JUDGE_MODEL,
        "OpenAI model of the gpt judge, a dated snapshot (recorded with every number). The official "
        "code asks for the alias gpt-4, which pointed at gpt-4-0613 when it was written (2023-11)",
    )
    fixtures: MllmFixturesConfig = field(default_factory=MllmFixturesConfig)


@dataclass
class GenerationConfig:
    judge: str = doc(
        "openai/clip-vit-large-patch14",
        "frozen full-caption CLIP that scores reconstructions against their captions (tiny: genhancer-tiny:clip)",
    )
    source: str = doc(
        "coco",
        "held-out captioned images: toyworld (generated scenes, full captions) or the name of a "
        "zeroshot.retrieval dataset (its images, the first caption of each)",
    )
    images: int = doc(256, "held-out images (the first N)")
    seed: int = doc(0, "seeds the toy world (source toyworld), the draws and the sampling noise")
    image_size: int = doc(64, "rendered size of toyworld scenes (resized to the tower's input)")
    draws: int = doc(2, "(latent sample, noise, t) draws per image for recon_loss, the same for every model")
    steps: int = doc(8, "Euler steps per reconstruction (0: the run's own flow.preview_steps)")
    batch_size: int = doc(32, "images per reconstruction batch")


@dataclass
class UncertaintyConfig:
    level: float = doc(0.95, "confidence level of the bootstrap interval beside every number")
    resamples: int = doc(2000, "bootstrap resamples (of the benchmark's unit: pair, group, question)")
    seed: int = doc(0, "bootstrap seed (the same seed gives the same intervals)")


@dataclass
class ReleasedConfig:
    backbone: str = doc(
        "",
        "HF id of the base tower whose published rows the towers are compared with (eval.paper_numbers.BACKBONES); "
        "empty: no released-tower comparison",
    )
    towers: dict = doc(
        {},
        "method (original | genhancer | diva | dcr) -> tower spec (folder, HF id, hf:ORG/NAME/SUB@REV, "
        "WEIGHTS::BASE); an empty spec is left out with a note",
    )
    notes: dict = doc({}, "method -> a note printed under the comparison (how the authors scored it)")


@dataclass
class LeaderboardConfig:
    benchmarks: list[str] = doc(
        ["mmvp_vlm", "zeroshot", "probe", "clustering", "generation"],
        "CLIP benchmarks to run (--benchmarks); generation scores only towers whose export carries a denoiser",
    )
    mllm_benchmarks: list[str] = doc(
        ["mmvp", "cv_bench", "naturalbench", "pope", "hallusion_bench", "scienceqa_img"],
        "MLLM benchmarks to run for --mllm models when --benchmarks is not given",
    )
    clip: dict = doc({}, "default CLIP models NAME -> spec when --clip is not given")
    mllm: dict = doc({}, "default LLaVA models NAME -> DIR when --mllm is not given")
    skip_missing: bool = doc(False, "skip default models whose local path does not exist (tiny preset)")
    data_root: str = doc("", "benchmark data root (--data-root); each benchmark under a folder of its name")
    device: str = doc("auto", "auto | cpu | cuda[:N]")
    batch_size: int = doc(64, "images / texts per forward pass")
    cache_dir: str = doc("", "tiny model cache (empty: ~/.cache/genhancer)")
    trust_remote_code: bool = doc(False, "allow custom model code (off unless asked)")
    progress: bool = doc(True, "tqdm progress bars on stderr")
    mmvp_vlm: MMVPConfig = field(default_factory=MMVPConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    fixtures: FixturesConfig = field(default_factory=FixturesConfig)
    lmms: LmmsConfig = field(default_factory=LmmsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    released: ReleasedConfig = field(default_factory=ReleasedConfig)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UserError("config key 'batch_size' must be >= 1")
        if self.mmvp_vlm.pairs_per_pattern < 1 or self.fixtures.pairs_per_pattern < 1:
            raise UserError("pairs_per_pattern must be >= 1")
        if self.probe.train_size < 2 or self.probe.test_size < 1:
            raise UserError("probe.train_size must be >= 2 and probe.test_size >= 1")

        bad = [a for a in self.probe.attributes if a not in ATTRIBUTES]
        if bad:
            raise UserError(f"config key 'probe.attributes': unknown {bad}; choose from {list(ATTRIBUTES)}")
        for kind in ("classification", "retrieval"):
            for i, ds in enumerate(getattr(self.zeroshot, kind)):
                if not ds.name:
                    raise UserError(f"config key 'zeroshot.{kind}[{i}].name' is empty")
        c = self.clustering
        if c.n_init < 1 or c.max_iter < 1 or c.shard_size < 1 or c.tol < 0:
            raise UserError(
                "config keys 'clustering.n_init', 'max_iter', 'shard_size' must be >= 1, 'tol' >= 0"
            )
        for i, ds in enumerate(c.datasets):
            if not ds.name:
                raise UserError(f"config key 'clustering.datasets[{i}].name' is empty")
            if ds.max_images < 0:
                raise UserError(f"config key 'clustering.datasets[{i}].max_images' must be >= 0")
        names = [ds.name for ds in c.datasets]
        if len(set(names)) != len(names):
            raise UserError(f"config key 'clustering.datasets': names must be unique, got {names}")
        if self.lmms.batch_size < 1:
            raise UserError("config key 'lmms.batch_size' must be >= 1")
        bad = [m for m in self.lmms.naturalbench_modes if m not in ("likelihood", "generation")]
        if bad or not self.lmms.naturalbench_modes:
            raise UserError("config key 'lmms.naturalbench_modes' takes likelihood and/or generation")
        if self.lmms.mmvp_answer_key not in ("lmms-lab-eval", "original"):
            raise UserError("config key 'lmms.mmvp_answer_key' must be lmms-lab-eval or original")
        if self.lmms.hallusion_judge not in ("rule", "gpt"):
            raise UserError("config key 'lmms.hallusion_judge' must be rule or gpt")
        if not self.lmms.hallusion_judge_model.strip():
            raise UserError("config key 'lmms.hallusion_judge_model' is empty (e.g. gpt-4-0613)")
        g = self.generation
        if g.images < 1 or g.draws < 1 or g.steps < 0 or g.batch_size < 1 or g.image_size < 16:
            raise UserError(
                "config keys 'generation.images', 'draws', 'batch_size' must be >= 1, 'steps' >= 0, "
                "'image_size' >= 16"
            )
        if not g.judge.strip():
            raise UserError("config key 'generation.judge' is empty (e.g. openai/clip-vit-large-patch14)")
        u = self.uncertainty
        if not 0 < u.level < 1:
            raise UserError(f"config key 'uncertainty.level' must be between 0 and 1, got {u.level}")
        if u.resamples < 1:
            raise UserError("config key 'uncertainty.resamples' must be >= 1")
        for name, spec in self.mllm.items():
            if not isinstance(spec, str):
                raise UserError(f"config key 'mllm.{name}': expected a directory string, got {spec!r}")
        for name, spec in self.clip.items():
            if not isinstance(spec, str):
                raise UserError(f"config key 'clip.{name}': expected a model spec string, got {spec!r}")


def load_config(
    preset: str | None = None, config_file: str | None = None, overrides: list[str] | tuple = ()
) -> LeaderboardConfig:
    """Resolve defaults < preset < config file < --set overrides into a validated tree."""
    return configtools.resolve(LeaderboardConfig, PRESETS_DIR, preset, config_file, overrides)
