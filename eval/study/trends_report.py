"""The trends' report: per knob, generation quality against representation quality, as the
paper's Fig. 1 draws it (``trends.json``, ``trends.md``, ``trends_<knob>.png``).

Representation is the gain over the seed's original tower (Δ, points), so the seed's own tower
drops out; correlations are over every (setting, seed) of a knob, and over every distinct point
for ``all``. Generation: ``recon_loss`` (lower is better) and ``clip_score`` (higher is better),
so "better generation, better tower" reads as r < 0 against ``recon_loss`` and r > 0 against
``clip_score``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from eval.stats import mean_std
from genhancer.runtime.configtools import to_dict

GENERATION: tuple[str, ...] = ("recon_loss", "clip_score")
REPRESENTATION: tuple[str, ...] = ("mmvp/average", "probe/rare")
TITLES = {
    "stage1": "stage-1 length",
    "depth": "denoiser depth",
    "local": "local-token ratio",
    "stages": "one vs two stages",
}
GEN_LABELS = {
    "recon_loss": "held-out reconstruction loss (lower: better generation)",
    "clip_score": "CLIP score of reconstructions (higher: better generation)",
}


def point_values(point: dict, original: dict) -> dict[str, float]:
    """One (point, seed): its generation numbers, its representation and its gain over the original."""
    out = {g: float(point["generation"][g]) for g in GENERATION}
    for r in REPRESENTATION:
        out[r] = float(point["metrics"][r])
        out[f"Δ {r}"] = out[r] - float(original["metrics"][r])
    return out


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)


def correlation(xs: Sequence[float], ys: Sequence[float]) -> dict:
    """Pearson and Spearman with two-sided p; None where undefined (n < 3, a constant side)."""
    from scipy import stats

    out: dict = {"n": len(xs), "pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return out
    r, p = stats.pearsonr(xs, ys)
    rho, sp = stats.spearmanr(xs, ys)
    out.update(pearson_r=_finite(r), pearson_p=_finite(p), spearman_rho=_finite(rho), spearman_p=_finite(sp))
    return out


def correlations(values: Sequence[dict[str, float]]) -> list[dict]:
    """Every generation number against every representation gain."""
    return [
        {
            "generation": g,
            "representation": f"Δ {r}",
            **correlation([v[g] for v in values], [v[f"Δ {r}"] for v in values]),
        }
        for g in GENERATION
        for r in REPRESENTATION
    ]


def aggregate(settings: dict[str, list[dict]], records: dict[int, dict]) -> dict:
    """Per knob: each setting's per-seed values and mean ± std over seeds, and the correlations."""
    knobs: dict = {}
    pooled: dict[tuple[str, int], dict] = {}
    for knob, rows in settings.items():
        out_rows, flat = [], []
        for s in rows:
            per_seed = {
                seed: point_values(rec["points"][s["point"]], rec["original"])
                for seed, rec in records.items()
            }
            keys = next(iter(per_seed.values())).keys()
            summary = {k: mean_std([v[k] for v in per_seed.values()]) for k in keys}
            out_rows.append({**s, "per_seed": per_seed, "mean_std": summary})
            flat += per_seed.values()
            pooled.update({(s["point"], seed): v for seed, v in per_seed.items()})
        knobs[knob] = {"settings": out_rows, "correlations": correlations(flat)}
    originals = {seed: rec["original"]["metrics"] for seed, rec in records.items()}
    return {
        "seeds": list(records),
        "knobs": knobs,
        "all": {"points": len(pooled), "correlations": correlations(list(pooled.values()))},
        "original": {r: mean_std([m[r] for m in originals.values()]) for r in REPRESENTATION},
    }


def _ms(ms: Sequence[float], digits: int = 1) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _num(x: float | None, fmt: str = "+.2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _p(x: float | None) -> str:
    return "n/a" if x is None else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def markdown(result: dict) -> str:
    """Per knob a table (mean ± std over seeds) and the correlations; then all points pooled."""
    seeds = result["seeds"]
    orig = result["original"]
    lines = [
        "# Trends: generation quality against representation quality",
        "",
        f"Seeds {seeds}; mean ± std over seeds. Original tower: "
        + "; ".join(f"{r} {_ms(orig[r])}" for r in REPRESENTATION)
        + ". Δ = the point − the seed's original tower (points). recon_loss: held-out flow-matching "
        "loss of the run's own denoiser (lower is better); clip_score: 100 × cosine of its "
        "reconstructions to their captions under the judge CLIP (higher is better).",
        "",
    ]
    head = (
        "| setting | recon_loss | clip_score | " + " | ".join(f"{r} | Δ {r}" for r in REPRESENTATION) + " |"
    )
    for knob, k in result["knobs"].items():
        lines += [f"## {TITLES.get(knob, knob)}", "", head, "|---" * (3 + 2 * len(REPRESENTATION)) + "|"]
        for s in k["settings"]:
            m = s["mean_std"]
            cells = [_ms(m["recon_loss"], 4), _ms(m["clip_score"], 2)]
            cells += [c for r in REPRESENTATION for c in (_ms(m[r]), _ms(m[f"Δ {r}"]))]
            lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
        lines += ["", *_correlation_table(k["correlations"]), "", f"![{knob}](trends_{knob}.png)", ""]
    lines += [
        f"## All knobs pooled ({result['all']['points']} distinct (point, seed) pairs)",
        "",
        *_correlation_table(result["all"]["correlations"]),
        "",
    ]
    return "\n".join(lines)


def _correlation_table(rows: list[dict]) -> list[str]:
    out = [
        "| generation | representation | n | Pearson r (p) | Spearman ρ (p) |",
        "|---|---|---|---|---|",
    ]
    for c in rows:
        out.append(
            f"| {c['generation']} | {c['representation']} | {c['n']} | {_num(c['pearson_r'])} "
            f"({_p(c['pearson_p'])}) | {_num(c['spearman_rho'])} ({_p(c['spearman_p'])}) |"
        )
    return out


def figure(knob: str, k: dict, path: Path) -> Path:
    """Fig. 1 style: generation on x, representation gain on y, one point per setting, error bars
    = std over seeds; one panel per (generation, representation) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(REPRESENTATION), len(GENERATION), figsize=(10, 7.5), squeeze=False)
    for i, r in enumerate(REPRESENTATION):
        for j, g in enumerate(GENERATION):
            ax = axes[i][j]
            means = [(s["mean_std"][g][0], s["mean_std"][f"Δ {r}"][0]) for s in k["settings"]]
            ax.plot(*zip(*means, strict=True), color="lightgrey", linewidth=1, zorder=1)  # sweep order
            for s in k["settings"]:
                (x, dx), (y, dy) = s["mean_std"][g], s["mean_std"][f"Δ {r}"]
                ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt="o", capsize=3)
                ax.annotate(s["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
            ax.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)  # the original tower
            c = next(c for c in k["correlations"] if c["generation"] == g and c["representation"] == f"Δ {r}")
            ax.set_title(f"Pearson r {_num(c['pearson_r'])} (p {_p(c['pearson_p'])}), n {c['n']}", fontsize=9)
            ax.set_xlabel(GEN_LABELS[g], fontsize=8)
            ax.set_ylabel(f"Δ {r} vs original (points)", fontsize=8)
            ax.margins(0.2)
    fig.suptitle(f"{TITLES.get(knob, knob)}: generation against representation (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _json_safe(x):
    if isinstance(x, float):
        return _finite(x)
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def write_report(
    cfg, settings: dict[str, list[dict]], records: dict[int, dict], out: Path, wall_s: float
) -> dict:
    """``trends.json`` (everything, per seed included), ``trends.md`` and ``trends_<knob>.png``."""
    result = aggregate(settings, records)
    result["config"] = to_dict(cfg)
    result["wall_s"] = wall_s
    result["timings_s"] = {
        seed: {name: p["timings_s"] for name, p in rec["points"].items()} for seed, rec in records.items()
    }
    result = _json_safe(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trends.json").write_text(json.dumps(result, indent=1))
    (out / "trends.md").write_text(markdown(result))
    for knob, k in result["knobs"].items():
        figure(knob, k, out / f"trends_{knob}.png")
    return result
