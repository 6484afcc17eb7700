"""The pre-registered measurements of one tower, and their aggregation over seeds.

A tower is scored through ``eval.clip``'s own pieces: its encoder (:func:`eval.clip.encoders.
load_encoder`: the same global token the enhancer conditions on, float32), MMVP-VLM's pair scoring,
linear probes and k-means clustering. Per metric, percent; per item, right/wrong (for the pooled
sign test). Statistics come from :mod:`eval.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from eval.clip.clustering import clustering_scores, l2_normalise, run_kmeans
from eval.clip.encoders import load_encoder
from eval.clip.mmvp_vlm import score_pairs
from eval.clip.probe import fit_linear_probe
from eval.stats import mean_std, paired_t, sign_test
from eval.study.protocol import HeldOut

CLUSTER_ATTRIBUTES: tuple[str, ...] = ("shape", "color")
#: MMVP patterns whose pair differs in a rarely captioned attribute (orientation, count, position).
RARE_PATTERNS: tuple[str, ...] = ("orientation", "quantity", "position", "viewpoint")
#: The head-to-head's pre-registered rows.
HEADLINES: tuple[str, ...] = (
    "mmvp/average",
    "mmvp/rare",
    "probe/rare",
    "probe/common",
    "zeroshot/mean",
    "cluster/acc_mean",
    "cluster/nmi_mean",
    "cluster/digits_acc",
)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def score_tower(path: str | Path, data: HeldOut) -> dict:
    """Metrics (percent) plus per-item correctness (for the pooled sign test) of one tower, and
    its probe-test global tokens (for the token cosine)."""
    enc = load_encoder(str(path), device="cpu", batch_size=256)
    metrics: dict[str, float] = {}
    items: dict[str, list[bool]] = {}

    img = _normalise(enc.encode_images(data.mmvp_images))
    txt = _normalise(enc.encode_texts(data.mmvp_statements))
    sims = [
        (txt[2 * k : 2 * k + 2] @ img[2 * k : 2 * k + 2].T).tolist() for k in range(len(data.mmvp_patterns))
    ]
    score = score_pairs(sims, data.mmvp_patterns)
    for key in dict.fromkeys(data.mmvp_patterns):
        idx = [k for k, q in enumerate(data.mmvp_patterns) if q == key]
        metrics[f"mmvp/{key}"] = 100.0 * sum(score.pair_correct[k] for k in idx) / len(idx)
        items[f"mmvp/{key}"] = [score.pair_correct[k] for k in idx]
    items["mmvp/average"] = list(score.pair_correct)

    feats = enc.encode_images(data.probe_images)
    n = data.probe_train
    for a, y in data.probe_labels.items():
        fitted = fit_linear_probe(feats[:n], y[:n], max(y) + 1)
        right = (fitted.predict(feats[n:]) == torch.tensor(y[n:])).tolist()
        metrics[f"probe/{a}"] = 100.0 * sum(right) / len(right)
        items[f"probe/{a}"] = right

    zs = _normalise(enc.encode_images(data.zs_images))
    for a, classes in data.zs_prompts.items():
        emb = torch.stack([_normalise(_normalise(enc.encode_texts(ps)).mean(0)) for ps in classes])
        right = ((zs @ emb.T).argmax(1) == torch.tensor(data.zs_labels[a])).tolist()
        metrics[f"zeroshot/{a}"] = 100.0 * sum(right) / len(right)
        items[f"zeroshot/{a}"] = right
    metrics.update(cluster_metrics(feats[n:], {a: data.probe_labels[a][n:] for a in CLUSTER_ATTRIBUTES}))
    metrics.update(cluster_metrics(enc.encode_images(data.digits_images), {"digits": data.digits_labels}))
    metrics.update(summaries(metrics))
    return {"metrics": metrics, "items": items, "global_tokens": feats[n:]}


def cluster_metrics(feats: torch.Tensor, labels: dict[str, list[int]]) -> dict[str, float]:
    """Zero-shot clustering (k-means on the L2-normalised global token, k = classes, NMI /
    Hungarian ACC / ARI) per label set, in percent."""
    x = l2_normalise(feats.numpy())
    out = {}
    for name, y in labels.items():
        y = np.asarray(y)
        scores = clustering_scores(y, run_kmeans(x, int(np.unique(y).size)))
        out.update({f"cluster/{name}_{k}": 100.0 * v for k, v in scores.items()})
    return out


def summaries(m: dict[str, float]) -> dict[str, float]:
    """The pre-registered headline numbers: averages over groups of the per-item metrics."""

    def mean(keys: Sequence[str]) -> float:
        return sum(m[k] for k in keys) / len(keys)

    mmvp_keys = [k for k in m if k.startswith("mmvp/")]
    return {
        "mmvp/average": mean(mmvp_keys),
        "mmvp/rare": mean([f"mmvp/{k}" for k in RARE_PATTERNS]),
        "probe/rare": mean([f"probe/{a}" for a in ("count", "orientation", "position")]),
        "probe/common": mean([f"probe/{a}" for a in ("shape", "color", "size")]),
        "zeroshot/mean": mean([f"zeroshot/{a}" for a in ("shape", "color", "size")]),
        "cluster/acc_mean": mean([f"cluster/{a}_acc" for a in (*CLUSTER_ATTRIBUTES, "digits")]),
        "cluster/nmi_mean": mean([f"cluster/{a}_nmi" for a in (*CLUSTER_ATTRIBUTES, "digits")]),
    }


def aggregate(records: list[dict]) -> dict:
    """Per metric and variant: mean/std of both models, paired difference, t-test, pooled sign test."""
    keys = list(records[0]["metrics"]["original"])
    variants = records[0]["variants"]
    table: dict[str, dict] = {}
    for v in variants:
        rows = {}
        for k in keys:
            orig = [r["metrics"]["original"][k] for r in records]
            new = [r["metrics"][v][k] for r in records]
            diffs = [b - a for a, b in zip(orig, new, strict=True)]
            row = {
                "original": mean_std(orig),
                v: mean_std(new),
                "delta": mean_std(diffs),
                "t_p": paired_t(diffs),
                "per_seed_delta": diffs,
            }
            if k in records[0]["items"]["original"]:
                before = [x for r in records for x in r["items"]["original"][k]]
                after = [x for r in records for x in r["items"][v][k]]
                row["sign"] = sign_test(before, after)
            rows[k] = row
        table[v] = rows
    extra = {  # per-run extras, where the records carry them (a placebo's do not)
        name: {v: mean_std([r[name][v] for r in records]) for v in variants}
        for name in ("recon_loss", "tower_change", "token_cosine")
        if name in records[0]
    }
    return {"seeds": [r["seed"] for r in records], "variants": variants, "table": table, **extra}
