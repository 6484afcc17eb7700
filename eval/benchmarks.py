"""Benchmark registry: name -> how to prepare its data and score one model on it.

A benchmark is prepared once per run (data loaded and validated before any model is loaded, so
bad data fails fast) and then run per model. ``run`` returns metric dicts
``{"metric", "value", "dataset", "revision", "seed"}``; the leaderboard adds the model and
bookkeeping fields. CLIP-level benchmarks take a :class:`~eval.clip.encoders.DualEncoder`;
MLLM benchmarks (``mmvp``, ``cv_bench``, ...; ``model_kind="mllm"``) take a
:class:`~eval.mllm.lmms_model.GenhancerLlava` and run through lmms-eval (:mod:`eval.mllm.run`).

Registration is explicit (a plain dict), and an unknown name lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.config import DatasetConfig, LeaderboardConfig
from eval.stats import Items
from genhancer.runtime.errors import UserError

#: The MLLM benchmarks, run through lmms-eval's task code by :mod:`eval.mllm.run`.
MLLM_BENCHMARKS = ("mmvp", "cv_bench", "naturalbench", "pope", "hallusion_bench", "scienceqa_img")


@dataclass
class BenchmarkContext:
    """What every benchmark may read: the config, the data root, the example limit."""

    cfg: LeaderboardConfig
    data_root: Path | None
    limit: int | None = None
    fixture: bool = False  # data_root holds generated toy fixtures
    output_dir: Path | None = None  # the leaderboard's output folder (MLLM fixtures, task YAMLs)
    audit_dir: Path | None = None  # per (model, benchmark, cache key): MLLM per-sample logs
    api_key: str = ""  # OPENAI key for lmms.hallusion_judge=gpt (read by the CLI, never here)
    model_spec: str = ""  # the model being scored (set per model by the leaderboard)

    def folder(self, benchmark: str) -> Path:
        if self.data_root is None:
            hint = " or --set mmvp_vlm.source=MMVP/MMVP_VLM" if benchmark == "mmvp_vlm" else ""
            raise UserError(
                f"benchmark '{benchmark}' needs --data-root (its files go under DATA_ROOT/{benchmark}/){hint}"
            )
        return self.data_root / benchmark


@dataclass(frozen=True)
class Benchmark:
    """One registry entry.

    Attributes:
        name: registry name (the ``benchmark`` field of ``results.json``).
        model_kind: ``clip`` (dual encoders) or ``mllm``.
        prepare: ``(ctx) -> data``; loads and validates data, raising UserError naming files.
        run: ``(model, data, ctx) -> list[metric dict]``.
        cache_inputs: ``(ctx) -> dict``; what, besides the model, decides the numbers (cache key).
        metric_order: column order for the report (others follow in record order).
        model_inputs: ``(spec, ctx) -> dict | None``; what a model brings besides its tower (added
            to its cache key), None when the benchmark does not apply to it (no column for that
            model). Absent: every model of ``model_kind``.
        requires: with ``model_inputs``, what a model needs for the benchmark to apply (named in
            the error when it is asked for and applies to no model).
    """

    name: str
    model_kind: str
    prepare: Callable[[BenchmarkContext], Any]
    run: Callable[[Any, Any, BenchmarkContext], list[dict]]
    cache_inputs: Callable[[BenchmarkContext], dict]
    metric_order: tuple[str, ...] = field(default=())
    model_inputs: Callable[[str, BenchmarkContext], dict | None] | None = None
    requires: str = ""


# --- mmvp_vlm -----------------------------------------------------------------------------------


def _mmvp_prepare(ctx: BenchmarkContext):
    from eval.clip.mmvp_vlm import load_mmvp_vlm, resolve_mmvp_vlm

    c = ctx.cfg.mmvp_vlm
    if c.source and not ctx.fixture:
        return resolve_mmvp_vlm(c.source, c.pairs_per_pattern, c.revision, ctx.cfg.cache_dir or None)
    pairs = ctx.cfg.fixtures.pairs_per_pattern if ctx.fixture else c.pairs_per_pattern
    data = load_mmvp_vlm(ctx.folder("mmvp_vlm"), pairs)
    if ctx.fixture:
        data.source = "toy:mmvp_vlm"
    return data


def _mmvp_run(encoder, data, ctx: BenchmarkContext) -> list[dict]:
    from eval.clip.mmvp_vlm import evaluate

    prefix = ctx.cfg.mmvp_vlm.prompt_prefix
    score = evaluate(encoder, data, ctx.limit, prefix)
    items = mmvp_vlm_items(score.pair_correct, data.pairs)
    return [
        {
            "metric": k,
            "value": v,
            "dataset": data.source,
            "revision": data.revision,
            "seed": None,
            "prompt_prefix": prefix,
            "items": items[k].to_json() if k in items else None,
        }
        for k, v in score.metrics().items()
    ]


def mmvp_vlm_items(pair_correct: list[bool], pairs: list) -> dict[str, Items]:
    """Per-pair results behind each MMVP-VLM number: a pattern's pairs, and for ``average`` all
    pairs stratified by pattern (the average of pattern accuracies)."""
    pairs = pairs[: len(pair_correct)]
    out = {
        pattern: Items(
            "pair",
            [p.index for p in pairs if p.pattern == pattern],
            [float(ok) for ok, p in zip(pair_correct, pairs) if p.pattern == pattern],
        )
        for pattern in dict.fromkeys(p.pattern for p in pairs)
    }
    if pairs:
        out["average"] = Items(
            "pair",
            [p.index for p in pairs],
            [float(ok) for ok in pair_correct],
            strata=[p.pattern for p in pairs],
        )
    return out


def _mmvp_inputs(ctx: BenchmarkContext) -> dict:
    return {"mmvp_vlm": dataclasses.asdict(ctx.cfg.mmvp_vlm), "root": str(ctx.data_root)}


# --- zeroshot -----------------------------------------------------------------------------------


def _located(ctx: BenchmarkContext, ds: DatasetConfig) -> DatasetConfig:
    """``ds`` with its folder (empty path: DATA_ROOT/zeroshot/<name>)."""
    return dataclasses.replace(ds, path=ds.path or str(ctx.folder("zeroshot") / ds.name))


def _zeroshot_prepare(ctx: BenchmarkContext):
    from eval.clip.zeroshot import TEMPLATES, get_templates, load_classification, load_retrieval

    z = ctx.cfg.zeroshot
    cls = []
    for ds in z.classification:
        name = ds.templates or (ds.name if ds.name in TEMPLATES else "generic")
        data = load_classification(_located(ctx, ds), ctx.limit)
        cls.append((data, get_templates(name)))
    ret = [load_retrieval(_located(ctx, ds), ctx.limit) for ds in z.retrieval]
    return cls, ret


def _zeroshot_run(encoder, data, ctx: BenchmarkContext) -> list[dict]:
    from eval.clip.zeroshot import classification_hits, retrieval_item_hits

    cls, ret = data
    hits = [(ds, classification_hits(encoder, ds, templates)) for ds, templates in cls]
    hits += [(ds, retrieval_item_hits(encoder, ds)) for ds in ret]
    return [
        {
            "metric": f"{ds.name}/{k}",
            "value": 100.0 * sum(v) / len(v),
            "dataset": ds.name,
            "revision": ds.revision,
            "seed": None,
            # per image (classification, image -> text) or per caption (text -> image)
            "items": Items(
                "caption" if k.startswith("t2i") else "image", list(range(len(v))), [float(x) for x in v]
            ).to_json(),
        }
        for ds, per_item in hits
        for k, v in per_item.items()
    ]


def _zeroshot_inputs(ctx: BenchmarkContext) -> dict:
    return {"zeroshot": dataclasses.asdict(ctx.cfg.zeroshot), "root": str(ctx.data_root)}


# --- probe --------------------------------------------------------------------------------------


def _probe_sizes(ctx: BenchmarkContext) -> tuple[int, int]:
    p = ctx.cfg.probe
    if ctx.limit:
        return min(p.train_size, ctx.limit), min(p.test_size, ctx.limit)
    return p.train_size, p.test_size


def _probe_prepare(ctx: BenchmarkContext):
    from eval.clip.probe import toy_probe_data

    p = ctx.cfg.probe
    n_train, n_test = _probe_sizes(ctx)
    return toy_probe_data(p.seed, n_train, n_test, p.image_size, p.max_count, p.attributes)


def _probe_run(encoder, data, ctx: BenchmarkContext) -> list[dict]:
    from eval.clip.probe import evaluate_probe_hits

    p = ctx.cfg.probe
    n_train, n_test = _probe_sizes(ctx)
    dataset = f"toyworld(seed={p.seed}, train={n_train}, test={n_test}, size={p.image_size})"
    return [
        {
            "metric": attr,
            "value": 100.0 * sum(hits) / len(hits),
            "dataset": dataset,
            "revision": "generated",
            "seed": p.seed,
            "items": Items("image", list(range(len(hits))), [float(h) for h in hits]).to_json(),
        }
        for attr, hits in evaluate_probe_hits(encoder, data, p.l2, p.max_iter).items()
    ]


def _probe_inputs(ctx: BenchmarkContext) -> dict:
    return {"probe": dataclasses.asdict(ctx.cfg.probe)}


# --- clustering ---------------------------------------------------------------------------------

#: Table-2 datasets of the DCR paper, in its column order (our names).
CLUSTERING_PAPER_DATASETS = ("mnist", "cifar10", "eurosat", "caltech101", "dtd", "imagenet1k")


def _clustering_prepare(ctx: BenchmarkContext):
    from eval.clip.clustering import ClusterSource, load_cluster_set

    c = ctx.cfg.clustering
    sets = []
    for i, ds in enumerate(c.datasets):
        path = ds.path or str(ctx.folder("clustering") / ds.name)
        src = ClusterSource(
            ds.name,
            path,
            ds.split,
            ds.image_column,
            ds.label_column,
            ds.max_images,
            f"clustering.datasets[{i}]",
        )
        sets.append(load_cluster_set(src, c.seed, ctx.limit))
    return sets


def _clustering_cache(ctx: BenchmarkContext) -> Path:
    c = ctx.cfg.clustering
    if c.feature_cache:
        return Path(c.feature_cache).expanduser()
    return (ctx.output_dir or Path(ctx.cfg.cache_dir or ".")) / "clustering_features"


def _clustering_note(name: str, source: str) -> str:
    """What a results reader must know about a dataset that is not one of the paper's six."""
    if source.startswith("sklearn:"):
        return "scikit-learn's 8x8 digits upscaled by the tower's processor; not the paper's MNIST"
    if name.startswith("toy_"):
        return "generated toy-world images; not a paper dataset"
    return "" if name in CLUSTERING_PAPER_DATASETS else "not a paper dataset"


def _clustering_run(encoder, data, ctx: BenchmarkContext) -> list[dict]:
    from eval.clip.clustering import KMeansSettings, average_scores, evaluate_clustering

    c = ctx.cfg.clustering
    settings = KMeansSettings(c.n_init, c.max_iter, c.tol, c.seed)
    kmeans = {"n_init": c.n_init, "max_iter": c.max_iter, "tol": c.tol, "seed": c.seed, "init": "k-means++"}
    scores, records = {}, []
    for ds in data:
        scores[ds.name] = evaluate_clustering(
            encoder, ds, settings, _clustering_cache(ctx), c.shard_size, ctx.cfg.progress
        )
        extra = {"k": ds.k, "n_images": ds.n, "split": ds.split, "kmeans": kmeans}
        note = _clustering_note(ds.name, ds.source)
        records += [
            {
                "metric": f"{ds.name}/{m}",
                "value": v,
                "dataset": ds.source,
                "revision": ds.revision,
                "seed": c.seed,
                **extra,
                **({"note": note} if note else {}),
            }
            for m, v in scores[ds.name].items()
        ]
    names = ", ".join(scores)
    records += [
        {
            "metric": f"average/{m}",
            "value": v,
            "dataset": f"mean over {names}",
            "revision": None,
            "seed": c.seed,
        }
        for m, v in average_scores(scores).items()
    ]
    return records


def _clustering_inputs(ctx: BenchmarkContext) -> dict:
    c = dataclasses.asdict(ctx.cfg.clustering)
    for key in ("feature_cache", "shard_size"):  # where and how features are cached: not the numbers
        c.pop(key)
    return {"clustering": c, "root": str(ctx.data_root)}


# --- generation ---------------------------------------------------------------------------------


def _generation_denoiser(spec: str, ctx: BenchmarkContext) -> Path | None:
    """The continuous denoiser an export carries (its ``denoiser/``), or None (torch-free)."""
    from eval.clip.encoders import resolve_spec
    from eval.generation import continuous_denoiser_dir

    kind, where = resolve_spec(spec, ctx.cfg.cache_dir or None)
    return continuous_denoiser_dir(where) if kind == "hf" and Path(where).is_dir() else None


def _generation_model_inputs(spec: str, ctx: BenchmarkContext) -> dict | None:
    from eval.clip.encoders import files_fingerprint

    found = _generation_denoiser(spec, ctx)
    if found is None:
        return None
    return {"denoiser": f"{found.resolve()}@{files_fingerprint(found, ('*.safetensors', '*.json'))}"}


@dataclass
class GenerationData:
    """Prepared once per board: the held-out captioned images; the judge loads on first use."""

    data: Any
    judge_spec: str
    _judge: Any = None

    def judge(self, ctx: BenchmarkContext):
        if self._judge is None:
            from eval.generation import Judge

            c = ctx.cfg
            self._judge = Judge(self.judge_spec, c.device, c.cache_dir or None, c.batch_size)
        return self._judge


def _generation_prepare(ctx: BenchmarkContext) -> GenerationData:
    from eval.clip.encoders import resolve_spec
    from eval.clip.zeroshot import load_retrieval
    from eval.generation import retrieval_captioned, toy_captioned

    g = ctx.cfg.generation
    try:  # a missing judge fails before any model loads
        resolve_spec(g.judge, ctx.cfg.cache_dir or None)
    except UserError as exc:
        raise UserError(f"config key 'generation.judge': {exc}") from None
    if g.source == "toyworld":
        return GenerationData(toy_captioned(g.seed, g.images, g.image_size), g.judge)
    found = {ds.name: ds for ds in ctx.cfg.zeroshot.retrieval}
    if g.source not in found:
        raise UserError(
            f"config key 'generation.source': '{g.source}' is neither toyworld nor a zeroshot.retrieval "
            f"dataset ({', '.join(found) or 'none configured'})"
        )
    ds = found[g.source]
    ret = load_retrieval(_located(ctx, ds), g.images)
    return GenerationData(retrieval_captioned(ret, g.images), g.judge)


def _generation_run(encoder, prepared: GenerationData, ctx: BenchmarkContext) -> list[dict]:
    from eval.clip.encoders import resolve_device, resolve_spec
    from eval.generation import GenerationSettings, evaluate_generation

    g, cfg = ctx.cfg.generation, ctx.cfg
    denoiser = _generation_denoiser(ctx.model_spec, ctx)
    _, tower = resolve_spec(ctx.model_spec, cfg.cache_dir or None)
    judge = prepared.judge(ctx)
    settings = GenerationSettings(g.draws, g.steps, g.seed, g.batch_size)
    device = str(resolve_device(cfg.device))
    score = evaluate_generation(
        denoiser, tower, prepared.data, judge, settings, cfg.cache_dir or None, device
    )
    ids = list(range(len(score.per_image_loss)))
    extra = {
        "dataset": prepared.data.source,
        "revision": prepared.data.revision,
        "seed": g.seed,
        "judge": judge.spec,
        "judge_revision": judge.revision,
        "draws": g.draws,
        "steps": score.steps,
        "denoiser": str(denoiser),
    }
    return [
        {
            "metric": "recon_loss",
            "value": score.recon_loss,
            "loss_by_t": score.loss_by_t,
            # lower is better: negated per-image scores with a negative scale, so that "better" in a
            # paired test means a lower loss and the items still give the value
            "items": Items("image", ids, [-x for x in score.per_image_loss], scale=-1.0).to_json(),
            **extra,
        },
        {
            "metric": "clip_score",
            "value": score.clip_score,
            "items": Items("image", ids, score.per_image_cosine, scale=100.0).to_json(),
            **extra,
        },
    ]


def _generation_inputs(ctx: BenchmarkContext) -> dict:
    return {"generation": dataclasses.asdict(ctx.cfg.generation), "root": str(ctx.data_root)}


# --- MLLM benchmarks (lmms-eval) ----------------------------------------------------------------


def _mllm_root(ctx: BenchmarkContext) -> Path | None:
    """Where the MLLM data is: toy fixtures, DATA_ROOT, or None (the hub ids of the built-in tasks)."""
    if ctx.fixture:
        base = ctx.output_dir or Path(ctx.cfg.cache_dir or ".")
        return base / "fixtures_mllm"
    return ctx.data_root


def mmvp_pattern_file(ctx: BenchmarkContext) -> Path | None:
    """The MMVP pair-to-pattern CSV: ``lmms.mmvp_patterns``, else ``DATA_ROOT/mmvp/patterns.csv``
    when present (:mod:`eval.mllm.mmvp_patterns`); None: no per-pattern table."""
    from eval.mllm.mmvp_patterns import PATTERN_FILE

    if ctx.cfg.lmms.mmvp_patterns:
        return Path(ctx.cfg.lmms.mmvp_patterns).expanduser()
    root = _mllm_root(ctx)
    found = root / "mmvp" / PATTERN_FILE if root is not None else None
    return found if found is not None and found.is_file() else None


def _mllm_prepare_for(name: str):
    def prepare(ctx: BenchmarkContext):
        from eval.mllm.tasks import write_tasks

        root = _mllm_root(ctx)
        if ctx.fixture:
            from eval.mllm.fixtures import MllmFixtureRecipe, ensure_mllm_fixtures

            f = ctx.cfg.lmms.fixtures
            ensure_mllm_fixtures(root, MllmFixtureRecipe(**dataclasses.asdict(f)), [name])
        if name == "mmvp" and mmvp_pattern_file(ctx) is not None:  # a bad map fails before any model
            from eval.mllm.mmvp_patterns import read_pattern_map

            read_pattern_map(mmvp_pattern_file(ctx))
        base = ctx.output_dir or Path(".")
        return write_tasks(base / "lmms_tasks", [name], root, tuple(ctx.cfg.lmms.naturalbench_modes))

    return prepare


def _mllm_run_for(name: str):
    def run(model, tasks, ctx: BenchmarkContext) -> list[dict]:
        from eval.mllm.run import ScoreSettings, run_benchmark

        lm = ctx.cfg.lmms
        settings = ScoreSettings(
            lm.mmvp_answer_key, lm.hallusion_judge, ctx.api_key, lm.hallusion_judge_model
        )
        pattern_file = mmvp_pattern_file(ctx) if name == "mmvp" else None
        if pattern_file is not None:
            from eval.mllm.mmvp_patterns import read_pattern_map

            settings.mmvp_patterns = read_pattern_map(pattern_file)
        audit = ctx.audit_dir or (ctx.output_dir or Path(".")) / "mllm" / name
        dataset = "toy:" + name if ctx.fixture else tasks.data[name]
        revision = "generated" if ctx.fixture else ("local" if ctx.data_root else "hub")
        answer_key = {"mmvp": lm.mmvp_answer_key, "hallusion_bench": f"judge={settings.judge()}"}.get(name)
        judge = {"judge": settings.judge()} if name == "hallusion_bench" else {}
        if pattern_file is not None:
            judge["pattern_map"] = str(pattern_file)
        return [
            {"dataset": dataset, "revision": revision, "seed": None, "answer_key": answer_key, **judge, **r}
            for r in run_benchmark(model, name, tasks, audit, ctx.limit, settings)
        ]

    return run


def _mllm_inputs_for(name: str):
    def inputs(ctx: BenchmarkContext) -> dict:
        from importlib.metadata import version

        lm = dataclasses.asdict(ctx.cfg.lmms)
        if not ctx.fixture:
            lm.pop("fixtures")
        if name != "hallusion_bench" or lm["hallusion_judge"] != "gpt":  # the model only matters there
            lm.pop("hallusion_judge_model")
        lm.pop("mmvp_patterns")
        out = {"lmms": lm, "root": str(_mllm_root(ctx)), "lmms_eval": version("lmms_eval")}
        if (
            name == "mmvp"
        ):  # the map's content decides the per-pattern numbers (fixtures: fixed by the recipe)
            f = mmvp_pattern_file(ctx)
            if ctx.fixture and not ctx.cfg.lmms.mmvp_patterns:
                out["pattern_map"] = "fixture"
            elif f is not None and f.is_file():
                out["pattern_map"] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        return out

    return inputs


_MLLM_ORDER = {
    "mmvp": ("pair_accuracy", "question_accuracy"),
    "cv_bench": ("ADE20K", "COCO", "Omni3D", "2D", "3D", "overall", "micro"),
    "naturalbench": ("Acc", "Q_Acc", "I_Acc", "G_Acc"),
    "pope": ("f1_mean",),
    "hallusion_bench": ("aAcc", "fAcc", "qAcc", "avg"),
    "scienceqa_img": ("accuracy",),
}


# --- registry -----------------------------------------------------------------------------------


def _mmvp_order() -> tuple[str, ...]:
    from eval.clip.mmvp_vlm import PATTERN_KEYS

    return (*PATTERN_KEYS, "average")


BENCHMARKS: dict[str, Benchmark] = {
    "mmvp_vlm": Benchmark("mmvp_vlm", "clip", _mmvp_prepare, _mmvp_run, _mmvp_inputs, _mmvp_order()),
    "zeroshot": Benchmark("zeroshot", "clip", _zeroshot_prepare, _zeroshot_run, _zeroshot_inputs),
    "probe": Benchmark("probe", "clip", _probe_prepare, _probe_run, _probe_inputs),
    "clustering": Benchmark("clustering", "clip", _clustering_prepare, _clustering_run, _clustering_inputs),
    "generation": Benchmark(
        "generation",
        "clip",
        _generation_prepare,
        _generation_run,
        _generation_inputs,
        ("recon_loss", "clip_score"),
        model_inputs=_generation_model_inputs,
        requires="a CLIP tower whose export carries GenHancer's continuous denoiser "
        "(export/denoiser/genhancer.json beside export/hf)",
    ),
    **{
        n: Benchmark(n, "mllm", _mllm_prepare_for(n), _mllm_run_for(n), _mllm_inputs_for(n), _MLLM_ORDER[n])
        for n in MLLM_BENCHMARKS
    },
}


def list_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UserError(f"unknown benchmark '{name}'; choose from: {', '.join(BENCHMARKS)}") from None
