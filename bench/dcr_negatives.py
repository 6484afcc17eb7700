"""DCR's exact loss (B^2 UNet calls) against the cheaper options, measured in one run.

Prints, per option, the UNet calls per micro-batch, the wall time of loss + backward relative to
exact, and the loss difference from exact over seeds (mean and max |diff|). ``unet_chunk`` is exact
by construction (a memory option); ``sampled`` with K < B-1 is an approximation.

    python bench/dcr_negatives.py --batch 8 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "enhance"))
from test_method_parity import H, L, _dcr_model, tiny_unet  # noqa: E402


def measure(model, b: int, seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)
    noise = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    vec = (torch.randn(b, 1, H, generator=g) + torch.randn(L, H, generator=g)).requires_grad_(True)
    vec_plus = (vec.detach() + 0.3 * torch.randn(b, L, H, generator=g)).requires_grad_(True)
    z_t = model.denoiser.add_noise(x, noise, t)
    t0 = time.perf_counter()
    loss = model.objective(x, noise, t, z_t, vec, vec_plus, torch.Generator().manual_seed(seed))
    loss.backward()
    return float(loss), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    b = args.batch
    unet = tiny_unet()
    options = {"exact": {}, "exact, unet_chunk=8": {"unet_chunk": 8}}
    for k in sorted({1, 3, b // 2}):
        options[f"sampled K={k}"] = {"negatives": "sampled", "num_negatives": k}
    results = {}
    for name, kw in options.items():
        model = _dcr_model(unet, **kw)
        runs = [measure(model, b, s) for s in range(args.seeds)]
        results[name] = (model.unet_calls(b), [r[0] for r in runs], statistics.median(r[1] for r in runs))
    base_calls, base_loss, base_time = results["exact"]
    print(f"batch {b}, {args.seeds} seeds, tiny UNet on CPU (torch threads: {torch.get_num_threads()})")
    print(f"{'option':24s} {'UNet calls':>10s} {'time/exact':>10s} {'mean diff':>10s} {'max |diff|':>10s}")
    for name, (calls, losses, sec) in results.items():
        diffs = [a - e for a, e in zip(losses, base_loss)]
        print(
            f"{name:24s} {calls:10d} {sec / base_time:10.2f} {statistics.mean(diffs):10.4f} "
            f"{max(abs(d) for d in diffs):10.4f}"
        )
    print(SimpleNamespace(exact_loss_mean=statistics.mean(base_loss)))


if __name__ == "__main__":
    main()
