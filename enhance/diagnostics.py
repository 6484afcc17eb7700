"""Training diagnostics drawn from ``metrics.jsonl`` (the loop writes the numbers; this draws them)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_grad_conflict(metrics: Path, out: Path) -> Path | None:
    """``grad_conflict.png``: the cosine between two loss terms' gradients per logged step (below 0
    the terms pull the weights apart), with each term's gradient norm. None when nothing was logged."""
    rows = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x.strip()]
    keys = sorted({k for r in rows for k in r if k.startswith("grad_cos_")})
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    offset, ticks = 0, []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        # a stage where one term reaches no trainable weight (zero gradient) has no conflict to show
        part = [
            r
            for r in rows
            if r["stage"] == stage
            and keys[0] in r
            and all(v > 0 for k, v in r.items() if k.startswith("grad_norm_"))
        ]
        if not part:
            continue
        xs = [offset + r["step"] for r in part]
        for k in keys:
            ax.plot(
                xs,
                [r[k] for r in part],
                marker=".",
                label=f"{stage}: cos({k.removeprefix('grad_cos_').replace('_', ', ')})",
            )
        for k in sorted({k for r in part for k in r if k.startswith("grad_norm_")}):
            ax2.plot(xs, [r[k] for r in part], label=f"{stage}: |g_{k.removeprefix('grad_norm_')}|")
        offset = xs[-1]
        ticks.append(offset)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("gradient cosine")
    ax.set_title("Gradient conflict between the loss terms")
    ax.legend(fontsize=7)
    ax2.set_yscale("log")
    ax2.set_ylabel("gradient norm")
    ax2.set_xlabel("optimizer step (stages in sequence)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
