"""Human views of ``results.json``: the markdown leaderboard, the MMVP-VLM pattern chart and the
MMVP-VLM against clustering-ACC trade-off figure.

One table per benchmark: rows = models (in order of first appearance) with the method that
trained each CLIP tower, columns = metrics, the best of our models in bold per column. When a
model matches published rows (:mod:`eval.paper_numbers`; one per paper), they follow it in
italics, for comparison only (never bold). Clustering is laid out as the DCR paper's Table 2
(per dataset NMI / ACC / ARI, then the average), followed by that table as published.

Under each table, how sure each number is (:func:`render_uncertainty`): the bootstrap interval
over the benchmark's unit (pair, group, question; named in the column header) and, for every
two models, the exact sign test on the units both scored (exact McNemar on right/wrong units).
A run group (``NAME=A,B,C``) shows its mean ± the standard deviation over its runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.clip.mmvp_vlm import PATTERN_KEYS, PATTERN_TITLES, PROMPT_PREFIX
from eval.paper_numbers import (
    CLUSTERING_DATASETS,
    CLUSTERING_METRICS,
    CLUSTERING_TITLES,
    DCR_CLUSTERING,
    DCR_MMVP_VLM,
    LLAVA_ROWS,
    TABLE2_COLUMNS,
    TABLE_NUMBERS,
    match_paper_rows,
)

_TITLES = {
    "mmvp_vlm": "MMVP-VLM (pair accuracy %, official scoring)",
    "zeroshot": "Zero-shot classification (top-k %) and retrieval (R@K %)",
    "probe": "Linear probes on toy-world attributes (test accuracy %, global token)",
    "clustering": "Zero-shot clustering of the global token (k-means, k = classes; NMI / ACC / ARI as fractions)",
    "mmvp": "MMVP (pair / question accuracy %, rule parser instead of the GPT-4 grader)",
    "mmvp_patterns": "MMVP per visual pattern (pair accuracy % over each pattern's pairs; the pair-to-pattern "
    "map is derived from MMVP-VLM, which the MMVP repository does not publish: eval.mllm.mmvp_patterns)",
    "cv_bench": "CV-Bench (accuracy %; 2D = mean(ADE20K, COCO), overall = (2D + 3D) / 2; micro = lmms-eval's)",
    "naturalbench": "NaturalBench (%; Acc.. = highest-likelihood answers, gen_Acc.. = generated answers)",
    "pope": "POPE (%, per split; LLaVA yes/no rule; yes_ratio of the predictions)",
    "hallusion_bench": "HallusionBench, image + non_image (%; rule-based yes/no judge unless noted)",
    "scienceqa_img": "ScienceQA-IMG (accuracy %, LLaVA's parser)",
    "generation": "Generation quality of the run's own denoiser (towers whose export carries one; "
    "recon_loss: held-out flow-matching loss under draws shared by every model, lower is better; "
    "clip_score: 100 x cosine of reconstructions to their captions under a frozen judge CLIP)",
}
#: (benchmark, metric) where lower is better: the best is the lowest.
LOWER_IS_BETTER = {("generation", "recon_loss")}
#: (benchmark, metric) shown with more decimals than the one a percentage needs.
DECIMALS = {("generation", "recon_loss"): 4}
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
    for tower, source, nums in LLAVA_ROWS:
        cells = " | ".join("–" if v is None else f"*{v:.1f}*" for v in nums)
        lines.append(f"| *paper ({source}): LLaVA-1.5 Vicuna-7B, {tower} tower* | {cells} |")
    limits = _ordered(str(r.get("limit")) for r in rows if r.get("limit"))
    lines += [
        "",
        "NB = NaturalBench (highest-likelihood answers), POPE = F1 per split, Hallusion avg = mean of "
        "aAcc, fAcc, qAcc (image + non_image). † = partial run (fewer rows than the official benchmark; "
        "see each benchmark's Coverage line). Published rows: GenHancer paper Table 2 (LLaVA-1.5 "
        "Vicuna-7B, OpenAI CLIP ViT-L/14 towers) and DCR paper Table 3 (the same rows reprinted, plus un2CLIP "
        "and DCR; – = not reported) on the full benchmarks; ours follow the data named under each benchmark below"
        + (f" (--limit {', '.join(limits)})." if limits else "."),
        "",
    ]
    return lines


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


def _metric_order(benchmark: str, metrics: Sequence[str]) -> list[str]:
    if benchmark in ("mmvp_vlm", "mmvp_patterns"):
        known = [k for k in (*PATTERN_KEYS, "average", "unmapped") if k in metrics]
        return known + [m for m in metrics if m not in known]
    return list(metrics)


def _fmt(v, decimals: int = 1) -> str:
    return "–" if v is None else f"{float(v):.{decimals}f}"


def render_markdown(records: list[dict]) -> str:
    """The leaderboard as markdown (empty results give a one-line note)."""
    if not records:
        return "# Leaderboard\n\nNo results yet.\n"
    lines = ["# Leaderboard", "", *render_table2(records)]
    records = split_mmvp_patterns(records)
    for bench in _ordered(r["benchmark"] for r in records):
        rows = [r for r in records if r["benchmark"] == bench]
        if bench == "clustering":
            lines += render_clustering(rows)
            continue
        models = _ordered(r["model"] for r in rows)
        metrics = _metric_order(bench, _ordered(r["metric"] for r in rows))
        value = {(r["model"], r["metric"]): r["value"] for r in rows}
        spread = {(r["model"], r["metric"]): r["runs"]["std"] for r in rows if r.get("runs")}
        spec = {r["model"]: r.get("model_spec", "") for r in rows}
        method = _methods(rows)
        dec = {met: DECIMALS.get((bench, met), 1) for met in metrics}
        best = {}
        for met in metrics:
            vals = [value[m, met] for m in models if value.get((m, met)) is not None]
            pick = min if (bench, met) in LOWER_IS_BETTER else max
            best[met] = pick(vals) if vals else None
        # bold marks a winner: not when there is one model, nor when every model ties
        wins = {
            met: len({round(float(value[m, met]), dec[met]) for m in models if (m, met) in value}) > 1
            for met in metrics
        }
        lines += [f"## {bench}: {_TITLES.get(bench, bench)}", ""]
        head = "| model | method | " if method else "| model | "
        lines.append(head + " | ".join(metrics) + " |")
        lines.append("|---|" + ("---|" if method else "") + "---|" * len(metrics))
        for m in models:
            cells = []
            for met in metrics:
                v = value.get((m, met))
                text = _fmt(v, dec[met])
                if (
                    v is not None
                    and wins[met]
                    and round(float(v), dec[met]) == round(float(best[met]), dec[met])
                ):
                    text = f"**{text}**"
                if (m, met) in spread:
                    text += f" ± {_fmt(spread[m, met], dec[met])}"
                cells.append(text)
            lead = f"| {m} | {method.get(m, '')} | " if method else f"| {m} | "
            lines.append(lead + " | ".join(cells) + " |")
            for paper in match_paper_rows(spec[m], method.get(m)):
                if bench not in paper.numbers:
                    continue
                nums = paper.numbers[bench]
                cells = [f"*{_fmt(nums[met])}*" if met in nums else "–" for met in metrics]
                lead = (
                    f"| *{paper.sourced_label}* | *{paper.method}* | "
                    if method
                    else f"| *{paper.sourced_label}* | "
                )
                lines.append(lead + " | ".join(cells) + " |")
        lines.append("")
        lines += render_uncertainty(rows, models, metrics, dec)
        if bench == "hallusion_bench":
            judges = _ordered(f"{r['model']}: {_judge(r)}" for r in rows)
            lines += ["Judge: " + "; ".join(judges) + " (rule = first yes/no word, the offline default).", ""]
        if bench == "mmvp_patterns":
            maps = _ordered(str(r.get("pattern_map")) for r in rows if r.get("pattern_map"))
            legend = "; ".join(f"{k} = {PATTERN_TITLES[k]}" for k in PATTERN_KEYS if k in metrics)
            lines += [f"Patterns: {legend}. Map: {', '.join(maps) or 'not recorded'}.", ""]
        if bench == "mmvp_vlm":
            legend = "; ".join(f"{k} = {PATTERN_TITLES[k]}" for k in PATTERN_KEYS if k in metrics)
            lines += [
                f"Columns (paper Table 1 order): {legend}. Published rows: GenHancer paper "
                f"{TABLE_NUMBERS['GenHancer', 'mmvp_vlm']}, DCR paper {TABLE_NUMBERS['DCR', 'mmvp_vlm']} "
                "(DCR prints some reprinted averages 0.1 lower: 19.2 for 19.26).",
                "",
            ]
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


MMVP_PATTERN_PREFIX = "pattern/"


def split_mmvp_patterns(records: list[dict]) -> list[dict]:
    """MMVP's ``pattern/<key>`` records as their own table (``mmvp_patterns``), for display only."""
    return [
        {**r, "benchmark": "mmvp_patterns", "metric": str(r["metric"])[len(MMVP_PATTERN_PREFIX) :]}
        if r["benchmark"] == "mmvp" and str(r["metric"]).startswith(MMVP_PATTERN_PREFIX)
        else r
        for r in records
    ]


def _judge(r: dict) -> str:
    """The HallusionBench judge of a record (older records: from ``answer_key``)."""
    if r.get("judge"):
        return str(r["judge"])
    key = str(r.get("answer_key") or "")
    return key.split("=", 1)[1] if key.startswith("judge=") else "not recorded"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


#: Above this many models with per-item results, paired tests compare each with the first only.
ALL_PAIRS_UP_TO = 4


def render_uncertainty(
    rows: list[dict], models: Sequence[str], metrics: Sequence[str], decimals: dict[str, int] | None = None
) -> list[str]:
    """Interval and paired-test tables for one benchmark's records (``ci``/``paired`` fields set
    by :func:`eval.leaderboard.annotate_uncertainty`); n/a where a record has no per-item results.
    ``decimals``: per metric, where one decimal is too few (default 1)."""
    decimals = decimals or {}
    rec = {(r["model"], r["metric"]): r for r in rows}
    shown = [met for met in metrics if any((rec.get((m, met)) or {}).get("ci") for m in models)]
    if not shown:
        return [
            "Intervals and paired tests: n/a (these records keep no per-item results: a benchmark that "
            "scores no units, such as clustering, or records from before they were kept).",
            "",
        ]
    unit = {
        met: next(rec[m, met]["ci"]["unit"] for m in models if (rec.get((m, met)) or {}).get("ci"))
        for met in shown
    }
    ci0 = next(rec[m, met]["ci"] for met in shown for m in models if (rec.get((m, met)) or {}).get("ci"))
    head = " | ".join(f"{met} ({unit[met]}s)" for met in shown)
    lines = [
        f"{round(100 * ci0['level'])} % intervals (percentile bootstrap over the unit in each column, "
        f"{ci0['resamples']} resamples, seed {ci0['seed']}; n/a: no per-item results):",
        "",
        f"| model | {head} |",
        "|---|" + "---|" * len(shown),
    ]
    for m in models:
        cells = []
        for met in shown:
            r = rec.get((m, met)) or {}
            d = decimals.get(met, 1)
            if r.get("ci"):
                cells.append(f"{_fmt(r['ci']['low'], d)}–{_fmt(r['ci']['high'], d)}")
            elif r.get("runs"):
                cells.append(f"sd {_fmt(r['runs']['std'], d)} over {r['runs']['n']} runs")
            else:
                cells.append("n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    scored = [m for m in models if any((rec.get((m, met)) or {}).get("ci") for met in shown)]
    if len(scored) > ALL_PAIRS_UP_TO:
        pairs = [(scored[0], b) for b in scored[1:]]
    else:
        pairs = [(a, b) for i, a in enumerate(scored) for b in scored[i + 1 :]]
    if pairs:
        lines += [
            "",
            "Paired tests, A → B on the same units: +k/−j = units where B is better/worse than A, "
            "p = exact two-sided sign test on them (on right/wrong units: the exact McNemar test):",
            "",
            f"| A → B | {head} |",
            "|---|" + "---|" * len(shown),
        ]
        for a, b in pairs:
            cells = []
            for met in shown:
                t = ((rec.get((b, met)) or {}).get("paired") or {}).get(a)
                cells.append(f"+{t['better']}/−{t['worse']}, {_p(t['p'])}" if t else "n/a")
            lines.append(f"| {a} → {b} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _methods(rows: list[dict]) -> dict[str, str]:
    """model -> the method that trained it, for models whose records carry one."""
    return {r["model"]: r["method"] for r in rows if r.get("method")}


def _fmt2(v) -> str:
    return "–" if v is None else f"{float(v):.2f}"


def _clustering_datasets(rows: list[dict]) -> list[str]:
    """Datasets of the clustering records: the paper's six in Table-2 order first, then ours."""
    names = _ordered(str(r["metric"]).split("/")[0] for r in rows)
    names = [n for n in names if n != "average"]
    return [d for d in CLUSTERING_DATASETS if d in names] + [n for n in names if n not in CLUSTERING_DATASETS]


def _clustering_header(datasets: Sequence[str]) -> list[str]:
    cols = [
        f"{CLUSTERING_TITLES.get(d, d)} {m.upper()}"
        for d in (*datasets, "average")
        for m in CLUSTERING_METRICS
    ]
    return ["| model | method | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]


def render_clustering(rows: list[dict]) -> list[str]:
    """Clustering in the layout of the DCR paper's Table 2: ours (with matching published rows),
    then the published table."""
    datasets = _clustering_datasets(rows)
    keys = [f"{d}/{m}" for d in (*datasets, "average") for m in CLUSTERING_METRICS]
    value = {(r["model"], r["metric"]): r["value"] for r in rows}
    models = _ordered(r["model"] for r in rows)
    spec = {r["model"]: r.get("model_spec", "") for r in rows}
    method = _methods(rows)
    best = {k: max((value[m, k] for m in models if (m, k) in value), default=None) for k in keys}
    wins = {k: len({round(float(value[m, k]), 2) for m in models if (m, k) in value}) > 1 for k in keys}
    lines = [f"## clustering: {_TITLES['clustering']}", "", *_clustering_header(datasets)]
    for m in models:
        cells = []
        for k in keys:
            v = value.get((m, k))
            text = _fmt2(v)
            if v is not None and wins[k] and round(float(v), 2) == round(float(best[k]), 2):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {m} | {method.get(m, '')} | " + " | ".join(cells) + " |")
        for paper in match_paper_rows(spec[m], method.get(m)):
            nums = paper.numbers.get("clustering")
            if nums:
                cells = [f"*{_fmt2(nums[k])}*" if k in nums else "–" for k in keys]
                lines.append(f"| *{paper.sourced_label}* | *{paper.method}* | " + " | ".join(cells) + " |")
    notes = _ordered(f"{str(r['metric']).split('/')[0]}: {r['note']}" for r in rows if r.get("note"))
    sizes = _ordered(
        f"{str(r['metric']).split('/')[0]} {r['n_images']} images, k = {r['k']}" for r in rows if r.get("k")
    )
    km = next((r["kmeans"] for r in rows if r.get("kmeans")), None)
    lines += [
        "",
        "Avg = mean over the datasets this board ran (the paper's Avg: its six datasets). "
        + (f"Sizes: {'; '.join(sizes)}. " if sizes else "")
        + (
            f"k-means: scikit-learn Lloyd, k-means++ init, best of n_init={km['n_init']}, "
            f"max_iter={km['max_iter']}, tol={km['tol']}, seed={km['seed']}; "
            if km
            else ""
        )
        + "features: the global image embedding, L2-normalised.",
        "",
    ]
    if notes:
        lines += ["Not the paper's data: " + "; ".join(notes) + ".", ""]
    lines += ["Intervals and paired tests: n/a (NMI, ACC and ARI are not means over units).", ""]
    datasets_used = _ordered(f"{r['dataset']} @ {r['revision']}" for r in rows if r.get("revision"))
    lines += ["Data: " + "; ".join(f"`{d}`" for d in datasets_used), ""]
    lines += render_published_clustering()
    return lines


def render_published_clustering() -> list[str]:
    """The DCR paper's Table 2 (and the Table 4 averages) as published, in italics."""
    keys = [f"{d}/{m}" for d in (*CLUSTERING_DATASETS, "average") for m in CLUSTERING_METRICS]
    lines = ["### clustering as published (DCR paper Table 2; Naive: Table 4, averages only)", ""]
    lines += _clustering_header(CLUSTERING_DATASETS)
    for (backbone, res, method), nums in DCR_CLUSTERING.items():
        cells = [f"*{_fmt2(nums[k])}*" if k in nums else "–" for k in keys]
        lines.append(f"| *paper (DCR): {backbone}@{res}* | *{method}* | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The paper names the backbones O-1, M-1, S-1; read here as OpenAI ViT-L/14, MetaCLIP ViT-L/14 and "
        "SigLIP SO400M/14 at 224 px (O-1's DCR average equals the ViT-L@224 rows of its Tables 4 and 7).",
        "",
    ]
    return lines


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


def tradeoff_points(records: list[dict]) -> list[tuple[str, str, float, float]]:
    """(model, method, clustering average ACC, MMVP-VLM average %) of every model with both."""
    acc = {
        r["model"]: float(r["value"])
        for r in records
        if r["benchmark"] == "clustering" and r["metric"] == "average/acc"
    }
    mmvp = {
        r["model"]: float(r["value"])
        for r in records
        if r["benchmark"] == "mmvp_vlm" and r["metric"] == "average"
    }
    method = _methods([r for r in records if r["benchmark"] in ("clustering", "mmvp_vlm")])
    return [
        (m, method.get(m, ""), acc[m], mmvp[m])
        for m in _ordered(r["model"] for r in records)
        if m in acc and m in mmvp
    ]


def plot_tradeoff(records: list[dict], path: str | Path) -> Path | None:
    """MMVP-VLM average (P-ability) against clustering average ACC (D-ability): every tower on
    this board (left) and the DCR paper's rows (right, Tables 1 and 2). None without a tower that
    has both numbers."""
    points = tradeoff_points(records)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, (ax, pax) = plt.subplots(1, 2, figsize=(12, 4.8))
    base = next(((x, y) for _, method, x, y in points if method == "original"), None)
    for model, method, x, y in points:
        ax.scatter([x], [y], s=60, label=f"{model} ({method})" if method else model, zorder=3)
        ax.annotate(model, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if base is not None and method != "original":  # the move enhancement made
            ax.annotate("", (x, y), base, arrowprops={"arrowstyle": "->", "color": "grey"})
    ax.set_xlabel("clustering ACC (average over this board's datasets)")
    ax.set_ylabel("MMVP-VLM average (%)")
    ax.set_title("this board")
    ax.margins(0.25)
    markers = {"original": "o", "DIVA": "s", "GenHancer": "^", "un2CLIP": "v", "DCR": "*"}
    backbones = _ordered((b, r) for b, r, _ in DCR_CLUSTERING)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (backbone, res) in zip(colours, backbones):
        orig = (backbone, res, "original")
        start = (DCR_CLUSTERING[orig]["average/acc"], DCR_MMVP_VLM[orig]["average"])
        for method, marker in markers.items():
            key = (backbone, res, method)
            if key in DCR_CLUSTERING and key in DCR_MMVP_VLM:
                xy = (DCR_CLUSTERING[key]["average/acc"], DCR_MMVP_VLM[key]["average"])
                pax.scatter([xy[0]], [xy[1]], marker=marker, s=80, color=colour, zorder=3)
                if method != "original":
                    pax.annotate(
                        "", xy, start, arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.5}
                    )
    handles = [Line2D([], [], marker=m, linestyle="none", color="black", label=k) for k, m in markers.items()]
    handles += [
        Line2D([], [], marker="o", linestyle="none", color=c, label=f"{b}@{r}")
        for c, (b, r) in zip(colours, backbones)
    ]
    pax.legend(handles=handles, fontsize=7, ncol=2)
    pax.set_xlabel("clustering ACC (average over six datasets)")
    pax.set_ylabel("MMVP-VLM average (%)")
    pax.set_title("DCR paper, Tables 1 and 2 (arrows: from the original tower)")
    fig.suptitle("Fine-grained perception (MMVP-VLM) against class separability (clustering ACC)")
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
