"""Wall time and peak memory of the clustering benchmark's k-means at ImageNet-1K size.

    python bench/clustering_kmeans.py                      # 50,000 x 1024, k = 1000, leaderboard defaults
    python bench/clustering_kmeans.py --n 10000 --k 100 --n-init 1

Random Gaussian features, L2-normalised, float32 (the shape of the ImageNet-1K validation split
embedded at CLIP ViT-L/14's 768-d or a 1024-d projected width), clustered with exactly the
estimator the leaderboard uses (:func:`eval.clip.clustering.make_kmeans`, settings from
``clustering.*``). Prints one JSON line: wall seconds (total and per k-means iteration), Lloyd
iterations run, peak RSS of this process, and the size of the feature matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    from eval.clip.clustering import KMeansSettings, l2_normalise, make_kmeans
    from eval.config import ClusteringConfig

    cfg = ClusteringConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="features (ImageNet-1K val: 50,000)")
    p.add_argument("--dim", type=int, default=1024, help="feature width")
    p.add_argument("--k", type=int, default=1000, help="clusters (ImageNet-1K: 1000 classes)")
    p.add_argument("--n-init", type=int, default=cfg.n_init, help="k-means restarts (clustering.n_init)")
    p.add_argument(
        "--max-iter", type=int, default=cfg.max_iter, help="Lloyd iterations (clustering.max_iter)"
    )
    p.add_argument("--tol", type=float, default=cfg.tol, help="convergence tolerance (clustering.tol)")
    p.add_argument("--seed", type=int, default=cfg.seed)
    args = p.parse_args(argv)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    x = l2_normalise(np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32))
    settings = KMeansSettings(n_init=args.n_init, max_iter=args.max_iter, tol=args.tol, seed=args.seed)
    km = make_kmeans(args.k, settings)
    t0 = time.perf_counter()
    km.fit(x)
    wall = time.perf_counter() - t0
    out = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "n_init": args.n_init,
        "max_iter": args.max_iter,
        "tol": args.tol,
        "lloyd_iterations_best_init": int(km.n_iter_),
        "wall_s": round(wall, 1),
        "features_mb": round(x.nbytes / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_features_mb": round(rss0, 1),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
