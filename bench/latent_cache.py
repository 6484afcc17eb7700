"""Training from the on-disk latent cache vs encoding with the VAE on the fly, end to end.

Runs the real ``enhance`` pipeline (data stream, loader, model, optimizer) three times in one
process, interleaving nothing else:

1. builds the cache for the preset's data (``enhance --build-latent-cache``), timed;
2. trains stage 1 on the fly; 3. trains stage 1 from the cache (same seed, same steps).

Prints images/s of both runs and their ratio (from ``metrics.jsonl``, first logged window
dropped as warm-up), the build cost in images/s, and whether the two training curves agree: the
difference of the mean loss over the last half of the steps in units of its standard error
(per-step loss noise of both runs). Results go to ``OUT/latent_cache.json`` too.

    python bench/latent_cache.py --preset tiny                           # CPU, ~2 minutes
    python bench/latent_cache.py --preset openai-clip-l14-224 --steps 200 \\
        --set data.path=/data/cc3m --set stage1.per_device_batch_size=64 # GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _speed(records: list[dict]) -> float:
    rates = [r["images_per_s"] for r in records[1:]] or [records[0]["images_per_s"]]
    return statistics.median(rates)


def compare_curves(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean loss over the last half of each curve and the difference in standard errors."""
    half = max(2, len(a) // 2)
    ta, tb = a[-half:], b[-half:]
    se = (statistics.variance(ta) / len(ta) + statistics.variance(tb) / len(tb)) ** 0.5
    diff = statistics.mean(tb) - statistics.mean(ta)
    return {
        "tail_steps": half,
        "loss_on_the_fly": statistics.mean(ta),
        "loss_cached": statistics.mean(tb),
        "difference": diff,
        "standard_error": se,
        "difference_in_se": diff / se if se > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=120, help="stage-1 steps of each training run")
    p.add_argument("--crops", type=int, default=4)
    p.add_argument("--out", default="runs/bench_latent_cache")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = p.parse_args(argv)

    from enhance.config import load_config
    from enhance.train import build_latent_cache_only, run
    from genhancer.runtime.cli import setup_logging

    setup_logging()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cache_dir = out / "cache"
    common = [
        *args.overrides,
        "train.stages=[1]",
        f"stage1.steps={args.steps}",
        "logging.every=1",
        "logging.preview_count=0",
        "logging.progress=false",
        f"checkpoint.every={args.steps}",
    ]
    cached = [*common, f"latent_cache.path={cache_dir}", f"latent_cache.crops={args.crops}"]

    t0 = time.perf_counter()
    manifest = build_latent_cache_only(load_config(args.preset, overrides=cached))
    build_s = time.perf_counter() - t0
    run(load_config(args.preset, overrides=common), out / "on_the_fly")
    run(load_config(args.preset, overrides=cached), out / "cached")

    fly, cache = _metrics(out / "on_the_fly"), _metrics(out / "cached")
    result = {
        "preset": args.preset,
        "steps": args.steps,
        "crops": args.crops,
        "cache_images": manifest["images"],
        "cache_build_s": build_s,
        "cache_build_images_per_s": manifest["images"] / build_s,
        "cache_bytes": sum(f.stat().st_size for f in cache_dir.glob("shard-*.safetensors")),
        "images_per_s_on_the_fly": _speed(fly),
        "images_per_s_cached": _speed(cache),
        "speedup": _speed(cache) / _speed(fly),
        "curve": compare_curves([r["loss"] for r in fly], [r["loss"] for r in cache]),
    }
    (out / "latent_cache.json").write_text(json.dumps(result, indent=2))
    c = result["curve"]
    print(f"\nlatent cache, preset {args.preset}, {args.steps} stage-1 steps ({out}/latent_cache.json)")
    print(f"  build: {manifest['images']} images x {args.crops} crops in {build_s:.1f} s "
          f"({result['cache_build_images_per_s']:.0f} img/s), {result['cache_bytes'] / 2**20:.1f} MiB")  # fmt: skip
    print(f"  on the fly: {result['images_per_s_on_the_fly']:8.1f} img/s")
    print(f"  cached:     {result['images_per_s_cached']:8.1f} img/s   speed-up x{result['speedup']:.2f}")
    print(f"  loss over the last {c['tail_steps']} steps: on the fly {c['loss_on_the_fly']:.4f}, cached "
          f"{c['loss_cached']:.4f}, difference {c['difference_in_se']:+.2f} standard errors")  # fmt: skip
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
