"""The study's report: the markdown tables and the figures (``results.md``, ``fig_*.png``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from eval.study.config import GENHANCER_VARIANTS
from eval.study.metrics import HEADLINES


def _fmt(ms: Sequence[float]) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def _p(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def markdown(agg: dict, config: dict, wall_s: float) -> str:
    """The first variant against the original per metric, then every variant's summary row, then
    the head to head when other methods ran."""
    first = agg["variants"][0]
    t = agg["table"][first]
    lines = [
        f"Seeds {agg['seeds']}; mean ± std over seeds; Δ = {first} − original (paired); "
        "t: paired t-test over seeds; sign: items better/worse after, pooled over seeds, exact binomial p.",
        "",
        f"| metric | original | {first} | Δ | t p | sign (+/−, p) |",
        "|---|---|---|---|---|---|",
    ]
    for k, row in t.items():
        s = row.get("sign")
        sign = f"{s[0]}/{s[1]}, {_p(s[2])}" if s else ""
        lines.append(
            f"| {k} | {_fmt(row['original'])} | {_fmt(row[first])} | {row['delta'][0]:+.1f} ± "
            f"{row['delta'][1]:.1f} | {_p(row['t_p'])} | {sign} |"
        )
    lines += [
        "",
        "| variant | recon loss (end of first denoiser stage) | Δ probe/rare | Δ mmvp/average | Δ mmvp/rare | Δ zeroshot/mean | "
        "tower change | token cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in agg["variants"]:
        r = agg["table"][v]
        cells = [
            f"{r[k]['delta'][0]:+.1f} ± {r[k]['delta'][1]:.1f}"
            for k in ("probe/rare", "mmvp/average", "mmvp/rare", "zeroshot/mean")
        ]
        lines.append(
            f"| {v} | {agg['recon_loss'][v][0]:.4f} ± {agg['recon_loss'][v][1]:.4f} | {' | '.join(cells)} | "
            f"{agg['tower_change'][v][0]:.4f} | {agg['token_cosine'][v][0]:.3f} |"
        )
    if any(v not in GENHANCER_VARIANTS for v in agg.get("variants", ())):
        lines += ["", *head_to_head_lines(agg)]
    seeds_s = sum(sum(t.values()) for t in agg.get("timings_s", {}).values())
    lines += [
        "",
        f"Config: `{json.dumps(config)}`; this invocation {wall_s / 60:.1f} min "
        f"(finished seeds are reused); pretraining + training + scoring summed over seeds {seeds_s / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def head_to_head_lines(agg: dict) -> list[str]:
    """One row per headline metric: the original, then each method as mean ± std, Δ and its paired
    t-test p over seeds."""
    variants = agg["variants"]
    t = agg["table"]
    head = "| metric | original | " + " | ".join(variants) + " |"
    lines = [
        "Head to head (each cell: mean ± std over seeds; Δ vs original; paired t-test p over seeds):",
        "",
        head,
        "|---" * (len(variants) + 2) + "|",
    ]
    for k in HEADLINES:
        if k not in t[variants[0]]:
            continue
        cells = [_fmt(t[variants[0]][k]["original"])]
        for v in variants:
            r = t[v][k]
            cells.append(f"{_fmt(r[v])} (Δ {r['delta'][0]:+.1f}, p {_p(r['t_p'])})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def figures(agg: dict, out: Path) -> list[Path]:
    """Per-attribute bars (original vs enhanced) and one figure per trend, with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if any(v not in GENHANCER_VARIANTS for v in agg.get("variants", ())):
        paths.append(methods_figure(agg, out, plt))
    if "enhanced" not in agg["table"]:
        return paths
    t = agg["table"]["enhanced"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [6, 9, 3]})
    for ax, prefix, title in zip(
        axes,
        ("probe/", "mmvp/", "zeroshot/"),
        ("linear probe", "toy MMVP-VLM pairs", "zero-shot"),
        strict=True,
    ):
        keys = [
            k
            for k in t
            if k.startswith(prefix) and k.split("/")[1] not in ("average", "rare", "common", "mean")
        ]
        x = range(len(keys))
        for off, (name, col) in zip(
            (-0.2, 0.2), (("original", "tab:gray"), ("enhanced", "tab:blue")), strict=True
        ):
            ax.bar(
                [i + off for i in x],
                [t[k][name][0] for k in keys],
                0.4,
                yerr=[t[k][name][1] for k in keys],
                label=name,
                color=col,
                capsize=3,
            )
        ax.set_xticks(list(x), [k.split("/")[1] for k in keys], rotation=30)
        ax.set_title(title)
        ax.set_ylabel("accuracy (%)")
    axes[0].legend()
    fig.suptitle(f"Original vs GenHancer (two-stage, global token), seeds {agg['seeds']}")
    fig.tight_layout()
    paths.append(out / "fig_attributes.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    deltas = ("probe/rare", "mmvp/average", "mmvp/rare", "zeroshot/mean")
    for name, variants, title in (
        ("fig_trend_local.png", ("enhanced", "local"), "global token only vs + local tokens"),
        ("fig_trend_stages.png", ("enhanced", "one_stage"), "two-stage vs one-stage"),
    ):
        if not all(v in agg["table"] for v in variants):
            continue
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 3]})
        a1.bar(
            list(variants),
            [agg["recon_loss"][v][0] for v in variants],
            yerr=[agg["recon_loss"][v][1] for v in variants],
            color=["tab:blue", "tab:orange"],
            capsize=3,
        )
        a1.set_title("recon. loss, first denoiser stage")
        for i, v in enumerate(variants):
            r = agg["table"][v]
            a2.bar(
                [j + (i - 0.5) * 0.4 for j in range(len(deltas))],
                [r[k]["delta"][0] for k in deltas],
                0.4,
                yerr=[r[k]["delta"][1] for k in deltas],
                label=v,
                capsize=3,
                color=["tab:blue", "tab:orange"][i],
            )
        a2.axhline(0, color="k", lw=0.8)
        a2.set_xticks(range(len(deltas)), list(deltas))
        a2.set_ylabel("Δ vs original (points)")
        a2.set_title("gain over the original tower")
        a2.legend()
        fig.suptitle(title)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def methods_figure(agg: dict, out: Path, plt) -> Path:
    """Δ vs the original tower per headline metric, one bar per method, std over seeds."""
    variants = agg["variants"]
    keys = [k for k in HEADLINES if k in agg["table"][variants[0]]]
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        r = agg["table"][v]
        ax.bar(
            [j + (i - (len(variants) - 1) / 2) * width for j in range(len(keys))],
            [r[k]["delta"][0] for k in keys],
            width,
            yerr=[r[k]["delta"][1] for k in keys],
            label="genhancer" if v == "enhanced" else v,
            capsize=3,
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)), keys, rotation=20)
    ax.set_ylabel("Δ vs original (points)")
    ax.set_title(f"The methods head to head on the sparse-caption world, seeds {agg['seeds']}")
    ax.legend()
    fig.tight_layout()
    path = out / "fig_methods.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
