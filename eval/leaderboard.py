"""Run benchmarks over models and keep every number in ``results.json``.

``results.json`` is a list of records, one per number::

    {"model", "benchmark", "metric", "value", "dataset", "revision", "seed",
     "model_spec", "model_kind", "model_revision", "limit", "cache_key", "genhancer_version", "time",
     ...benchmark extras (mmvp_vlm: "prompt_prefix")}

Values are percentages. Re-running adds to the file instead of recomputing: a (model,
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

from enhance.errors import UserError
from eval.benchmarks import BenchmarkContext, get_benchmark
from eval.config import LeaderboardConfig

RESULTS_NAME = "results.json"
RECORD_KEYS = ("model", "benchmark", "metric", "value", "dataset", "revision", "seed")


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
            self.records = data

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
    """A named model to evaluate: ``kind`` ``clip`` (dual encoder) or ``mllm``."""

    name: str
    spec: str
    kind: str = "clip"


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
    from eval.encoders import resolve_spec

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


def run_leaderboard(
    cfg: LeaderboardConfig,
    models: list[ModelSpec],
    output_dir: str | Path,
    benchmarks: list[str] | None = None,
    data_root: str | Path | None = None,
    force: bool = False,
    limit: int | None = None,
) -> RunSummary:
    """Evaluate ``models`` on ``benchmarks`` (default: ``cfg.benchmarks``), updating ``results.json``.

    Order: validate model specs and prepare every benchmark's data first (bad input fails
    before any model loads), then per model, per benchmark: reuse or compute, and save.
    """
    from eval.encoders import load_encoder, model_fingerprint

    output_dir = Path(output_dir)
    names = benchmarks if benchmarks is not None else list(cfg.benchmarks)
    if not names:
        raise UserError("no benchmarks selected")
    benches = [get_benchmark(n) for n in names]
    if not models:
        raise UserError("no models to evaluate: give --clip NAME=PATH_OR_ID")
    seen = set()
    for m in models:
        if m.name in seen:
            raise UserError(f"model name '{m.name}' given twice")
        seen.add(m.name)
    fingerprints = {m.name: model_fingerprint(m.spec, cfg.cache_dir or None) for m in models}

    fixture = cfg.fixtures.enabled and data_root is None and not cfg.data_root
    if fixture:
        from eval.fixtures import FixtureRecipe, ensure_toy_fixtures

        f = cfg.fixtures
        root: Path | None = ensure_toy_fixtures(
            output_dir / "fixtures",
            FixtureRecipe(f.seed, f.image_size, f.pairs_per_pattern, f.class_images, f.retrieval_images),
        )
    else:
        given = data_root or cfg.data_root
        root = Path(given).expanduser() if given else None
    ctx = BenchmarkContext(cfg, root, limit, fixture)

    store = ResultsStore(output_dir / RESULTS_NAME)
    summary = RunSummary(records=store.records)
    prepared: dict[str, object] = {}
    keys: dict[tuple[str, str], str] = {}
    for m in models:
        for b in benches:
            keys[m.name, b.name] = cache_key(fingerprints[m.name], b.name, b.cache_inputs(ctx), limit)
    todo = [
        (m, b)
        for m in models
        for b in benches
        if force or not store.is_cached(m.name, b.name, keys[m.name, b.name])
    ]
    for b in benches:  # prepare only what will run, but all of it before any model loads
        if any(tb.name == b.name for _, tb in todo):
            prepared[b.name] = b.prepare(ctx)

    for m in models:
        encoder = None
        for b in benches:
            key = keys[m.name, b.name]
            if (m, b) not in todo:
                summary.reused.append((m.name, b.name))
                continue
            if b.model_kind != m.kind:
                raise UserError(f"benchmark '{b.name}' needs a {b.model_kind} model; '{m.name}' is {m.kind}")
            if encoder is None:
                encoder = load_encoder(
                    m.spec,
                    cfg.device,
                    cfg.batch_size,
                    cfg.cache_dir or None,
                    trust_remote_code=cfg.trust_remote_code,
                    progress=cfg.progress,
                )
            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            records = [
                {
                    "model": m.name,
                    "benchmark": b.name,
                    **{k: r.get(k) for k in RECORD_KEYS[2:]},
                    **{k: v for k, v in r.items() if k not in RECORD_KEYS},  # benchmark extras
                    "model_spec": m.spec,
                    "model_kind": m.kind,
                    "model_revision": encoder.revision,
                    "limit": limit,
                    "cache_key": key,
                    "genhancer_version": _version(),
                    "time": now,
                }
                for r in b.run(encoder, prepared[b.name], ctx)
            ]
            store.replace(m.name, b.name, records)
            store.save()
            summary.computed.append((m.name, b.name))
        del encoder
    summary.records = store.records
    return summary
