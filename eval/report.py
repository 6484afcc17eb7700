"""Human views of ``results.json``: the markdown leaderboard and the MMVP-VLM pattern chart.

One table per benchmark: rows = models (in order of first appearance), columns = metrics,
the best of our models in bold per column. When a model matches a published row
(:mod:`eval.paper_numbers`), that row follows it in italics, for comparison only (never bold).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.mmvp_vlm import PATTERN_KEYS, PATTERN_TITLES, PROMPT_PREFIX
from eval.paper_numbers import match_paper_row

_TITLES = {
    "mmvp_vlm": "MMVP-VLM (pair accuracy %, official scoring)",
    "zeroshot": "Zero-shot classification (top-k %) and retrieval (R@K %)",
    "probe": "Linear probes on toy-world attributes (test accuracy %, global token)",
}


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


def _metric_order(benchmark: str, metrics: Sequence[str]) -> list[str]:
    if benchmark == "mmvp_vlm":
        known = [k for k in (*PATTERN_KEYS, "average") if k in metrics]
        return known + [m for m in metrics if m not in known]
    return list(metrics)


def _fmt(v) -> str:
    return "–" if v is None else f"{float(v):.1f}"


def render_markdown(records: list[dict]) -> str:
    """The leaderboard as markdown (empty results give a one-line note)."""
    if not records:
        return "# Leaderboard\n\nNo results yet.\n"
    lines = ["# Leaderboard", ""]
    for bench in _ordered(r["benchmark"] for r in records):
        rows = [r for r in records if r["benchmark"] == bench]
        models = _ordered(r["model"] for r in rows)
        metrics = _metric_order(bench, _ordered(r["metric"] for r in rows))
        value = {(r["model"], r["metric"]): r["value"] for r in rows}
        spec = {r["model"]: r.get("model_spec", "") for r in rows}
        best = {}
        for met in metrics:
            vals = [value[m, met] for m in models if value.get((m, met)) is not None]
            best[met] = max(vals) if vals else None
        # bold marks a winner: not when there is one model, nor when every model ties
        wins = {
            met: len({round(float(value[m, met]), 1) for m in models if (m, met) in value}) > 1
            for met in metrics
        }
        lines += [f"## {bench}: {_TITLES.get(bench, bench)}", ""]
        lines.append("| model | " + " | ".join(metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for m in models:
            cells = []
            for met in metrics:
                v = value.get((m, met))
                text = _fmt(v)
                if v is not None and wins[met] and round(float(v), 1) == round(float(best[met]), 1):
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
            paper = match_paper_row(spec[m])
            if paper is not None and bench in paper.numbers:
                nums = paper.numbers[bench]
                cells = [f"*{_fmt(nums[met])}*" if met in nums else "–" for met in metrics]
                lines.append(f"| *{paper.label}* | " + " | ".join(cells) + " |")
        lines.append("")
        if bench == "mmvp_vlm":
            legend = "; ".join(f"{k} = {PATTERN_TITLES[k]}" for k in PATTERN_KEYS if k in metrics)
            lines += [f"Columns (paper Table 1 order): {legend}.", ""]
        prefixes = _ordered(r["prompt_prefix"] for r in rows if "prompt_prefix" in r)
        if any(p != PROMPT_PREFIX for p in prefixes):
            shown = ", ".join(repr(p) for p in prefixes)
            lines += [f"Prompt prefix: {shown} (official protocol: {PROMPT_PREFIX!r}).", ""]
        datasets = _ordered(f"{r['dataset']} @ {r['revision']}" for r in rows)
        lines += ["Data: " + "; ".join(f"`{d}`" for d in datasets), ""]
    return "\n".join(lines)


def plot_mmvp_patterns(records: list[dict], path: str | Path) -> Path | None:
    """Grouped bar chart of per-pattern MMVP-VLM accuracy per model; None when there is nothing."""
    rows = [r for r in records if r["benchmark"] == "mmvp_vlm"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _ordered(r["model"] for r in rows)
    metrics = _metric_order("mmvp_vlm", _ordered(r["metric"] for r in rows))
    value = {(r["model"], r["metric"]): float(r["value"]) for r in rows}
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(metrics)), 4))
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, [value.get((m, met), 0.0) for met in metrics], width, label=m)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics, rotation=30, ha="right")
    ax.set_ylabel("pair accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("MMVP-VLM per visual pattern")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
