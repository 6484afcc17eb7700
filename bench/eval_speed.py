"""Encode throughput of the evaluation dual encoders (MMVP-VLM / zero-shot style).

    python bench/eval_speed.py                                  # tiny CLIP on CPU, cached tiny model
    python bench/eval_speed.py --model openai/clip-vit-large-patch14 --images 1024 --batch 256

Prints images/s (``encode_images``), texts/s for unique texts on a cold cache, texts/s when every
text is already in the text-embedding cache, and a zero-shot-shaped workload (each prompt repeated
``--repeat`` times, as class-template prompts recur across splits and MMVP statements across
pairs) with the cache against re-encoding every occurrence. Rounds are interleaved so the ratios
are measured under the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["red", "blue", "green", "round", "square", "striped", "small", "large", "dog", "car", "cup", "tree"]


def synthetic(n_images: int, n_texts: int, size: int, seed: int = 0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n_images, size, size, 3), generator=g, dtype=torch.uint8).numpy()
    images = [Image.fromarray(p) for p in pixels]
    texts = [
        f"a photo of a {WORDS[i % 12]} {WORDS[(i // 12) % 12]} {WORDS[(i // 144) % 12]} number {i}"
        for i in range(n_texts)
    ]
    return images, texts


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(encoder, images, texts, repeat: int, rounds: int) -> dict:
    workload = [t for t in texts for _ in range(repeat)]
    times: dict[str, list[float]] = {
        k: [] for k in ("images", "texts_cold", "texts_cached", "zs_cache", "zs_nocache")
    }

    def no_cache():  # what encode_texts would cost without the cache: every occurrence encoded
        for start in range(0, len(workload), encoder.batch_size):
            encoder._text_batch(workload[start : start + encoder.batch_size]).float().cpu()

    encoder.encode_images(images[: encoder.batch_size])  # warm-up
    encoder.encode_texts(texts[:4])
    for _ in range(rounds):
        times["images"].append(_timed(lambda: encoder.encode_images(images)))
        encoder._text_cache.clear()
        times["texts_cold"].append(_timed(lambda: encoder.encode_texts(texts)))
        times["texts_cached"].append(_timed(lambda: encoder.encode_texts(texts)))
        encoder._text_cache.clear()
        times["zs_cache"].append(_timed(lambda: encoder.encode_texts(workload)))
        times["zs_nocache"].append(_timed(no_cache))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "images_per_s": len(images) / med["images"],
        "texts_per_s_cold": len(texts) / med["texts_cold"],
        "texts_per_s_cached": len(texts) / med["texts_cached"],
        "zeroshot_texts_per_s_with_cache": len(workload) / med["zs_cache"],
        "zeroshot_texts_per_s_without_cache": len(workload) / med["zs_nocache"],
        "zeroshot_cache_speedup": med["zs_nocache"] / med["zs_cache"],
    }


def main(argv: list[str] | None = None) -> int:
    from eval.clip.encoders import load_encoder

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="genhancer-tiny:clip", help="encoder spec (eval.clip.encoders.load_encoder)"
    )
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--texts", type=int, default=128)
    p.add_argument(
        "--repeat", type=int, default=4, help="occurrences of each prompt in the zero-shot workload"
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default="", help="where tiny base models are cached")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    encoder = load_encoder(
        args.model, device=args.device, batch_size=args.batch, cache_dir=args.cache_dir or None
    )
    images, texts = synthetic(args.images, args.texts, encoder.image_size)
    res = {
        "model": args.model,
        "device": str(encoder.device),
        "batch": args.batch,
        "images": args.images,
        "texts": args.texts,
        **measure(encoder, images, texts, args.repeat, args.rounds),
    }
    if args.json:
        print(json.dumps(res))
        return 0
    for k, v in res.items():
        print(f"{k:36s} {v:.1f}" if isinstance(v, float) else f"{k:36s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
