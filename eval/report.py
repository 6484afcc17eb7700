"""Human views of ``results.json``: the markdown leaderboard and the MMVP-VLM pattern chart.

One table per benchmark: rows = models (in order of first appearance), columns = metrics,
the best of our models in bold per column. When a model matches a published row
(:mod:`eval.paper_numbers`), that row follows it in italics, for comparison only (never bold).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.clip.mmvp_vlm import PATTERN_KEYS, PATTERN_TITLES, PROMPT_PREFIX
from eval.paper_numbers import LLAVA_TABLE2, TABLE2_COLUMNS, match_paper_row

_TITLES = {
    "mmvp_vlm": "MMVP-VLM (pair accuracy %, official scoring)",
    "zeroshot": "Zero-shot classification (top-k %) and retrieval (R@K %)",
    "probe": "Linear probes on toy-world attributes (test accuracy %, global token)",
    "mmvp": "MMVP (pair / question accuracy %, rule parser instead of the GPT-4 grader)",
    "cv_bench": "CV-Bench (accuracy %; 2D = mean(ADE20K, COCO), overall = (2D + 3D) / 2; micro = lmms-eval's)",
    "naturalbench": "NaturalBench (%; Acc.. = highest-likelihood answers, gen_Acc.. = generated answers)",
    "pope": "POPE (%, per split; LLaVA yes/no rule; yes_ratio of the predictions)",
    "hallusion_bench": "HallusionBench, image + non_image (%; rule-based yes/no judge unless noted)",
    "scienceqa_img": "ScienceQA-IMG (accuracy %, LLaVA's parser)",
}
_TABLE2_BENCHES = {b for _, b, _ in TABLE2_COLUMNS}


def render_table2(records: list[dict]) -> list[str]:
    """The paper's Table 2 layout: our LLaVA models, then the published LLaVA-1.5-7B rows (italics)."""
    rows = [r for r in records if r["benchmark"] in _TABLE2_BENCHES]
    if not rows:
        return []
    value = {(r["model"], r["benchmark"], r["metric"]): r["value"] for r in rows}
    partial = {(r["model"], r["benchmark"], r["metric"]) for r in rows if r.get("complete") is False}
    models = _ordered(r["model"] for r in rows)
    heads = [h for h, _, _ in TABLE2_COLUMNS]
    lines = ["## MLLM benchmarks in the layout of the paper's Table 2", ""]
    lines.append("| model | " + " | ".join(heads) + " |")
    lines.append("|---|" + "---|" * len(heads))
    for m in models:
        cells = [
            _fmt(value.get((m, b, met))) + ("†" if (m, b, met) in partial else "")
            for _, b, met in TABLE2_COLUMNS
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for tower, nums in LLAVA_TABLE2.items():
        lines.append(
            f"| *paper: LLaVA-1.5-7B, {tower} tower* | " + " | ".join(f"*{v:.1f}*" for v in nums) + " |"
        )
    limits = _ordered(str(r.get("limit")) for r in rows if r.get("limit"))
    lines += [
        "",
        "NB = NaturalBench (highest-likelihood answers), POPE = F1 per split, Hallusion avg = mean of "
        "aAcc, fAcc, qAcc (image + non_image). † = partial run (fewer rows than the official benchmark; "
        "see each benchmark's Coverage line). Published rows: GenHancer paper Table 2 (LLaVA-1.5 "
        "Vicuna-7B, OpenAI CLIP ViT-L/14 towers; DCR row from the DCR paper) on the full benchmarks; ours follow the data named under each benchmark below"
        + (f" (--limit {', '.join(limits)})." if limits else "."),
        "",
    ]
    return lines


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
    lines = ["# Leaderboard", "", *render_table2(records)]
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
        coverage = _ordered(
            f"{m}{' ' + str(r['metric']).split('/')[0] if str(r['metric']).startswith('full/') else ''}: "
            f"{r['coverage']}"
            for m in models
            for r in rows
            if r["model"] == m and r.get("coverage")
        )
        if coverage:
            lines += ["Coverage: " + "; ".join(coverage) + ".", ""]
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
    return save_figure(fig, ax, path)


def save_figure(fig, ax, path: str | Path) -> Path:
    """Legend, tight layout, a 100-dpi file at ``path``; the figure is closed."""
    import matplotlib.pyplot as plt

    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
