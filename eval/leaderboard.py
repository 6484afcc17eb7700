"""Run benchmarks over models and keep every number in ``results.json``.

``results.json`` is a list of records, one per number::

    {"model", "benchmark", "metric", "value", "dataset", "revision", "seed",
     "model_spec", "model_kind", "method", "model_revision", "limit", "cache_key", "genhancer_version",
     "time", ...benchmark extras (mmvp_vlm: "prompt_prefix"; clustering: "k", "n_images", "kmeans")}

``method`` (CLIP towers only) is the method that trained the tower (:func:`tower_method`).
Record version 2 (``record_version``) adds the uncertainty of every number: ``items`` (the
per-unit results, :class:`eval.stats.Items`; None where a benchmark keeps none), ``ci`` (the
bootstrap interval over those units) and ``paired`` (per other model on the board, the exact
sign test on the units both scored); records written before carry no items and read back with
``ci`` and ``paired`` empty (shown as n/a). Several runs of one configuration (``--clip
NAME=SPEC1,SPEC2,...``) are models ``NAME#1``, ``NAME#2``... plus records of ``NAME`` with the
mean over them and ``runs`` (``n``, ``std``, ``members``).
Values are percentages where the paper prints percentages (clustering: fractions, as DCR's Table 2). Re-running adds to the file instead of recomputing: a (model,
benchmark) whose records carry the same ``cache_key`` (model weights fingerprint, benchmark
config, data root, limit) is reused unless ``force``. A benchmark's records are written only
when it finished for that model (atomically), so an interrupted run never leaves partial
numbers that look final.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from enhance.layout import read_export_meta
from eval.benchmarks import Benchmark, BenchmarkContext, get_benchmark
from eval.config import LeaderboardConfig, UncertaintyConfig
from eval.stats import Items, items_interval, mean_std, paired_items
from genhancer.runtime.errors import UserError

RESULTS_NAME = "results.json"
RECORD_KEYS = ("model", "benchmark", "metric", "value", "dataset", "revision", "seed")
#: 2: per-unit ``items``, ``ci``, ``paired`` and run groups (``runs``); 1 (no field): before them.
RECORD_VERSION = 2
RUNS_SEP = ","


class Record(TypedDict, total=False):
    """One number of ``results.json`` (benchmark extras ride along as further keys). The one
    migration path from older versions is :func:`migrate_record`, applied on every read."""

    model: str
    benchmark: str
    metric: str
    value: float
    dataset: str
    revision: str
    seed: int | None
    model_spec: str
    model_kind: str
    method: str
    model_revision: str
    limit: int | None
    cache_key: str
    genhancer_version: str
    record_version: int
    time: str
    items: dict | None
    ci: list[float] | None
    paired: dict
    runs: dict
    migrated_from: int


def migrate_record(r: dict) -> Record:
    """A record read back in the current version: older records gain the fields they lack (no
    items: their interval and paired tests read n/a), and say which version they came from."""
    version = int(r.get("record_version") or 1)
    if version < RECORD_VERSION:
        r.setdefault("items", None)
        r.setdefault("migrated_from", version)
        r["record_version"] = RECORD_VERSION
    return r


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("genhancer")
    except Exception:  # not installed (source checkout)
        return "unknown"


class ResultsStore:
    """``results.json``: load, query, replace one (model, benchmark), save atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise UserError(f"{self.path} is not valid JSON ({exc}); move it away or fix it") from None
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise UserError(f"{self.path} must hold a list of records")
            self.records = [migrate_record(r) for r in data]

    def get(self, model: str, benchmark: str) -> list[dict]:
        return [r for r in self.records if r.get("model") == model and r.get("benchmark") == benchmark]

    def is_cached(self, model: str, benchmark: str, cache_key: str) -> bool:
        found = self.get(model, benchmark)
        return bool(found) and all(r.get("cache_key") == cache_key for r in found)

    def replace(self, model: str, benchmark: str, records: list[dict]) -> None:
        self.records = [
            r for r in self.records if not (r.get("model") == model and r.get("benchmark") == benchmark)
        ] + records

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.records, indent=2) + "\n")
        os.replace(tmp, self.path)


@dataclass
class ModelSpec:
    """A named model to evaluate: ``kind`` ``clip`` (dual encoder) or ``mllm``; ``extra`` goes into
    each of its records (e.g. ``stage2_step`` of a per-step export, see :mod:`eval.clip.steps`)."""

    name: str
    spec: str
    kind: str = "clip"
    extra: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    records: list[dict]
    computed: list[tuple[str, str]] = field(default_factory=list)
    reused: list[tuple[str, str]] = field(default_factory=list)
    skipped_models: list[str] = field(default_factory=list)


def cache_key(model_fingerprint: str, benchmark: str, inputs: dict, limit: int | None) -> str:
    blob = json.dumps(
        {"model": model_fingerprint, "benchmark": benchmark, "inputs": inputs, "limit": limit}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_models(cfg: LeaderboardConfig) -> tuple[list[ModelSpec], list[str]]:
    """Models from the config's ``clip`` map; with ``skip_missing``, local paths that do not exist
    are left out (returned second) instead of failing."""
    from eval.clip.encoders import resolve_spec

    models, skipped = [], []
    for name, spec in cfg.clip.items():
        if cfg.skip_missing:
            try:
                resolve_spec(spec, cfg.cache_dir or None)
            except UserError:
                skipped.append(f"{name}={spec}")
                continue
        models.append(ModelSpec(name, spec))
    return models, skipped


def _fingerprint(m: ModelSpec, cfg: LeaderboardConfig) -> str:
    from eval.clip.encoders import files_fingerprint, model_fingerprint

    if m.kind == "mllm":
        from eval.mllm.lmms_model import check_llava_dir

        path = check_llava_dir(m.spec)
        return f"{path.resolve()}@{files_fingerprint(path)}"
    return model_fingerprint(m.spec, cfg.cache_dir or None)


def tower_method(spec: str, cache_dir: str | None = None) -> str:
    """The method that trained a CLIP tower: an ``enhance`` export's ``genhancer_export.json``
    names it (``genhancer`` for exports older than that field or file); any other tower (HF ids,
    ``genhancer-tiny:clip``, open_clip) is ``original``."""
    from eval.clip.encoders import resolve_spec

    kind, where = resolve_spec(spec, cache_dir)
    if kind not in ("hf", "open_clip_dir") or not Path(where).is_dir():
        return "original"
    meta = read_export_meta(where)
    if meta is None:  # an export written before genhancer_export.json still has its denoiser meta
        from eval.paper_numbers import export_backbone

        return "genhancer" if export_backbone(spec) or export_backbone(where) else "original"
    return meta.method


def _load_model(m: ModelSpec, cfg: LeaderboardConfig):
    """A CLIP-style dual encoder, or for ``mllm`` specs the lmms-eval model over a LLaVA dir."""
    if m.kind == "mllm":
        from eval.mllm.lmms_model import GenhancerLlava, register

        register()
        lm = cfg.lmms
        return GenhancerLlava(
            pretrained=m.spec,
            device=None if cfg.device == "auto" else cfg.device,
            batch_size=lm.batch_size,
            dtype=lm.dtype,
            max_new_tokens=lm.max_new_tokens or None,
            progress=cfg.progress,
        )
    from eval.clip.encoders import load_encoder

    return load_encoder(
        m.spec,
        cfg.device,
        cfg.batch_size,
        cfg.cache_dir or None,
        trust_remote_code=cfg.trust_remote_code,
        progress=cfg.progress,
    )


@dataclass
class LeaderboardPlan:
    """What a board will do, decided before any model loads: the benchmarks (their data prepared),
    each model's fingerprint and method, each (model, benchmark)'s cache key (only the pairs a
    benchmark applies to), and which of them must be computed (the rest are reused from
    ``results.json``)."""

    cfg: LeaderboardConfig
    models: list[ModelSpec]
    benches: list
    ctx: BenchmarkContext
    store: ResultsStore
    fingerprints: dict[tuple[str, str], str]
    methods: dict[str, str]
    keys: dict[tuple[str, str], str]
    todo: list[tuple[str, str]]
    prepared: dict[str, object]
    output_dir: Path
    limit: int | None

    def applies(self, m: ModelSpec, b: Benchmark) -> bool:
        """Whether ``b`` scores ``m``: the same kind, and a cache key (a CLIP tower and an MLLM may
        share a name, so the name alone does not say)."""
        return b.model_kind == m.kind and (m.name, b.name) in self.keys

    def describe(self) -> dict:
        """The plan as data (``leaderboard --dry-run`` style): computed vs reused pairs."""
        pairs = [(m.name, b.name) for m in self.models for b in self.benches if self.applies(m, b)]
        return {
            "compute": [list(p) for p in pairs if p in self.todo],
            "reuse": [list(p) for p in pairs if p not in self.todo],
        }


def plan_leaderboard(
    cfg: LeaderboardConfig,
    models: list[ModelSpec],
    output_dir: str | Path,
    benchmarks: list[str] | None = None,
    data_root: str | Path | None = None,
    force: bool = False,
    limit: int | None = None,
    api_key: str = "",
) -> LeaderboardPlan:
    """Validate model specs and benchmark names, prepare every benchmark's data that will run
    (bad input fails before any model loads) and decide what to compute and what to reuse."""
    output_dir = Path(output_dir)
    kinds = {m.kind for m in models}
    if benchmarks is not None:
        names = list(benchmarks)
    else:
        names = list(cfg.benchmarks) if "clip" in kinds else []
        names += list(cfg.mllm_benchmarks) if "mllm" in kinds else []
    if not names:
        raise UserError("no benchmarks selected")
    benches = [get_benchmark(n) for n in names]
    for b in benches:
        if b.model_kind not in kinds:
            flag = "--mllm NAME=DIR" if b.model_kind == "mllm" else "--clip NAME=PATH_OR_ID"
            raise UserError(f"benchmark '{b.name}' needs a {b.model_kind} model: give {flag}")
    if not models:
        raise UserError("no models to evaluate: give --clip NAME=PATH_OR_ID or --mllm NAME=DIR")
    seen = set()
    for m in models:
        if (m.kind, m.name) in seen:
            raise UserError(f"model name '{m.name}' given twice")
        seen.add((m.kind, m.name))
    fingerprints = {(m.kind, m.name): _fingerprint(m, cfg) for m in models}
    methods = {  # a model may say which method trained it (released towers carry no export metadata)
        m.name: m.extra.get("method") or tower_method(m.spec, cfg.cache_dir or None)
        for m in models
        if m.kind == "clip"
    }
    ctx = BenchmarkContext(
        cfg,
        _data_root(cfg, benches, output_dir, data_root),
        limit,
        _uses_fixtures(cfg, data_root),
        output_dir=output_dir,
        api_key=api_key,
    )
    store = ResultsStore(output_dir / RESULTS_NAME)
    backfill = [
        r
        for r in store.records  # cached records from before the field existed get it too
        if r.get("model_kind", "clip") == "clip"
        and r.get("model") in methods
        and r.get("method") != methods[r["model"]]
    ]
    for r in backfill:
        r["method"] = methods[r["model"]]
    if backfill:
        store.save()
    keys: dict[tuple[str, str], str] = {}
    pairs = []
    for m, b in ((m, b) for m in models for b in benches if b.model_kind == m.kind):
        own = b.model_inputs(m.spec, ctx) if b.model_inputs else {}
        if own is None:  # the benchmark does not apply to this model (generation: no denoiser)
            continue
        pairs.append((m, b))
        inputs = {**b.cache_inputs(ctx), **own}
        if m.kind == "clip":  # dual encoders are scored in float32 (eval.clip.encoders.EVAL_DTYPE)
            inputs = {**inputs, "eval_dtype": "float32"}
        keys[m.name, b.name] = cache_key(fingerprints[m.kind, m.name], b.name, inputs, limit)
    if benchmarks is not None:  # asked for by name: a benchmark that applies to no model is bad input
        for b in benches:
            if b.model_inputs and not any(pb is b for _, pb in pairs):
                raise UserError(f"benchmark '{b.name}' applies to none of the models: it needs {b.requires}")
    todo = [
        (m.name, b.name)
        for m, b in pairs
        if force or not store.is_cached(m.name, b.name, keys[m.name, b.name])
    ]
    # prepare only what will run, but all of it before any model loads
    prepared = {b.name: b.prepare(ctx) for b in benches if any(tb == b.name for _, tb in todo)}
    return LeaderboardPlan(
        cfg, models, benches, ctx, store, fingerprints, methods, keys, todo, prepared, output_dir, limit
    )


def _uses_fixtures(cfg: LeaderboardConfig, data_root: str | Path | None) -> bool:
    return cfg.fixtures.enabled and data_root is None and not cfg.data_root


def _data_root(cfg: LeaderboardConfig, benches: list, output_dir: Path, data_root) -> Path | None:
    """The benchmark data folder: the toy fixtures (written here) when no data root is given."""
    if _uses_fixtures(cfg, data_root):
        from eval.clip.fixtures import FixtureRecipe, ensure_toy_fixtures

        f = cfg.fixtures
        root = output_dir / "fixtures"
        if any(b.model_kind == "clip" for b in benches):  # MLLM fixtures are made by their prepare
            ensure_toy_fixtures(
                root,
                FixtureRecipe(
                    f.seed,
                    f.image_size,
                    f.pairs_per_pattern,
                    f.class_images,
                    f.retrieval_images,
                    f.cluster_images,
                ),
            )
        return root
    given = data_root or cfg.data_root
    return Path(given).expanduser() if given else None


def execute_plan(plan: LeaderboardPlan) -> RunSummary:
    """Per model, per benchmark: compute what the plan says (one model load per model), save
    after each, then aggregate runs of one configuration and annotate uncertainty."""
    store, ctx = plan.store, plan.ctx
    summary = RunSummary(records=store.records)
    for m in plan.models:
        encoder = None
        for b in plan.benches:
            if not plan.applies(m, b):  # another kind, or a benchmark that does not apply
                continue
            key = plan.keys[m.name, b.name]
            if (m.name, b.name) not in plan.todo:
                summary.reused.append((m.name, b.name))
                continue
            if encoder is None:
                encoder = _load_model(m, plan.cfg)
            ctx.audit_dir = plan.output_dir / "mllm" / m.name / b.name / key
            ctx.model_spec = m.spec
            records = [
                _record(r, m, b.name, key, encoder, plan) for r in b.run(encoder, plan.prepared[b.name], ctx)
            ]
            store.replace(m.name, b.name, records)
            store.save()
            summary.computed.append((m.name, b.name))
        del encoder
    store.records = aggregate_runs(store.records)
    annotate_uncertainty(store.records, plan.cfg.uncertainty)
    store.save()
    summary.records = store.records
    return summary


def _record(r: dict, m: ModelSpec, benchmark: str, key: str, encoder, plan: LeaderboardPlan) -> Record:
    """A benchmark's raw result as a :class:`Record` of this board."""
    return {
        "model": m.name,
        "benchmark": benchmark,
        **{k: r.get(k) for k in RECORD_KEYS[2:]},
        **{k: v for k, v in r.items() if k not in RECORD_KEYS},  # benchmark extras
        "model_spec": m.spec,
        "model_kind": m.kind,
        **({"method": plan.methods[m.name]} if m.kind == "clip" else {}),
        "model_revision": getattr(encoder, "revision", plan.fingerprints[m.kind, m.name]),
        "limit": plan.limit,
        "cache_key": key,
        "genhancer_version": _version(),
        "record_version": RECORD_VERSION,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **{k: getattr(encoder, k) for k in ("weights_dtype", "eval_dtype") if hasattr(encoder, k)},
        **m.extra,
    }


def run_leaderboard(
    cfg: LeaderboardConfig,
    models: list[ModelSpec],
    output_dir: str | Path,
    benchmarks: list[str] | None = None,
    data_root: str | Path | None = None,
    force: bool = False,
    limit: int | None = None,
    api_key: str = "",
) -> RunSummary:
    """Evaluate ``models`` on ``benchmarks`` (default: ``cfg.benchmarks``), updating ``results.json``:
    :func:`plan_leaderboard`, then :func:`execute_plan`."""
    plan = plan_leaderboard(cfg, models, output_dir, benchmarks, data_root, force, limit, api_key)
    return execute_plan(plan)


# --- uncertainty and runs of one configuration ----------------------------------------------------


def annotate_uncertainty(records: list[dict], u: UncertaintyConfig | None = None) -> list[dict]:
    """Give every record its ``ci`` (bootstrap interval over its units, or None without items) and
    ``paired`` (other model -> sign test on the units both scored). Paired tests are redone on
    every run, so they cover exactly the models on the board; an interval is kept while its
    settings and units match (deterministic for a seed, and costly on 50,000 images)."""
    u = u or UncertaintyConfig()
    by_cell: dict[tuple[str, str], list[tuple[dict, Items]]] = {}
    for r in records:
        items = Items.from_json(r.get("items"))
        old, r["ci"], r["paired"] = r.get("ci"), None, {}
        if items is None or not items.scores:
            continue
        by_cell.setdefault((r["benchmark"], r["metric"]), []).append((r, items))
        same = {
            "level": u.level,
            "resamples": u.resamples,
            "seed": u.seed,
            "unit": items.unit,
            "n": len(items.scores),
        }
        if isinstance(old, dict) and all(old.get(k) == v for k, v in same.items()):
            r["ci"] = old  # a record's items change only when it is replaced: its interval still holds
            continue
        lo, hi = sorted(items_interval(items, u.level, u.resamples, u.seed))  # a negative scale flips them
        r["ci"] = {
            "level": u.level,
            "low": lo,
            "high": hi,
            "unit": items.unit,
            "n": len(items.scores),
            "resamples": u.resamples,
            "seed": u.seed,
        }
    for cell in by_cell.values():
        for r, items in cell:
            for other, other_items in cell:
                if other is r or other["model"] == r["model"]:
                    continue
                test = paired_items(other_items, items)
                if test is not None:
                    r["paired"][other["model"]] = test
    return records


def run_group_models(name: str, spec: str) -> list[ModelSpec]:
    """``NAME=A,B,C`` (several runs of one configuration, e.g. seeds) -> models ``NAME#1``...
    each carrying ``runs_of``; ``run:RUN`` members stand for the run's final export
    (``RUN/export/hf``)."""
    parts = [p.strip() for p in spec.split(RUNS_SEP)]
    if len(parts) < 2 or not all(parts):
        raise UserError(
            f"--clip {name}=...: a list of runs needs two or more specs separated by ',', got '{spec}'"
        )
    out = []
    for i, p in enumerate(parts, start=1):
        path = str(Path(p[len("run:") :]) / "export" / "hf") if p.startswith("run:") else p
        out.append(ModelSpec(f"{name}#{i}", path, extra={"runs_of": name}))
    return out


def aggregate_runs(records: list[dict]) -> list[dict]:
    """Replace the records of each run group (models with ``runs_of``) by fresh ones: per
    (benchmark, metric) the mean over its runs with ``runs`` = ``{"n", "std", "members"}``;
    only cells every run of the group has."""
    records = [r for r in records if not r.get("runs")]
    groups: dict[str, list[str]] = {}
    for r in records:
        if r.get("runs_of"):
            groups.setdefault(r["runs_of"], [])
            if r["model"] not in groups[r["runs_of"]]:
                groups[r["runs_of"]].append(r["model"])
    out = list(records)
    for name, members in groups.items():
        cells: dict[tuple[str, str], list[dict]] = {}
        for r in records:
            if r.get("runs_of") == name:
                cells.setdefault((r["benchmark"], r["metric"]), []).append(r)
        for (bench, metric), rows in cells.items():
            if {r["model"] for r in rows} != set(members) or any(r.get("value") is None for r in rows):
                continue
            mean, std = mean_std([float(r["value"]) for r in rows])
            first = rows[0]
            keep = (
                "dataset",
                "revision",
                "seed",
                "model_kind",
                "method",
                "limit",
                "prompt_prefix",
                "answer_key",
            )
            out.append(
                {
                    "model": name,
                    "benchmark": bench,
                    "metric": metric,
                    "value": mean,
                    **{k: first[k] for k in keep if k in first},
                    "model_spec": RUNS_SEP.join(str(r.get("model_spec", "")) for r in rows),
                    "runs": {"n": len(rows), "std": std, "members": [r["model"] for r in rows]},
                    "items": None,
                    "record_version": RECORD_VERSION,
                }
            )
    return out
