"""Linear probes on toy-world attributes: how much fine detail does the global token carry?

A text-free companion to MMVP-VLM: GenHancer trains the global token to carry the details a
denoiser needs to reconstruct the image, so a linear classifier reading that token should
separate colour, count, orientation and position better after enhancement.

The features are the encoder's global token (:meth:`eval.clip.encoders.DualEncoder.encode_images`,
the same definition ``enhance.backbones`` conditions the denoiser on). The probe is multinomial
logistic regression on standardised features with an L2 penalty, fitted full-batch with L-BFGS
in float64 from zero weights: no randomness, so the same features give the same accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from genhancer.toyworld.world import ToyWorld

DEFAULT_ATTRIBUTES: tuple[str, ...] = ("color", "count", "orientation", "position")


@dataclass
class LinearProbe:
    """A fitted probe: ``argmax(((x - mean) / std) @ weight + bias)``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return (z @ self.weight + self.bias).argmax(1)


def fit_linear_probe(
    x: torch.Tensor,
    y: Sequence[int] | torch.Tensor,
    num_classes: int | None = None,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> LinearProbe:
    """Fit multinomial logistic regression (mean cross-entropy + ``l2 * ||W||^2``) with L-BFGS."""
    x = x.double()
    y = torch.as_tensor(y, dtype=torch.long)
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(z.shape[1], k, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def accuracy(hits: Sequence[bool]) -> float:
    """The percent of ``hits`` that are right: a probe's test accuracy, from its per-image items."""
    return 100.0 * sum(hits) / len(hits)


def probe_hits(
    train_x: torch.Tensor,
    train_y: Sequence[int],
    test_x: torch.Tensor,
    test_y: Sequence[int],
    l2: float = 1e-3,
    max_iter: int = 200,
) -> list[bool]:
    """Per test image: does the probe fitted on the training split predict its label?"""
    test_y = torch.as_tensor(test_y, dtype=torch.long)
    k = int(max(int(torch.as_tensor(train_y).max()), int(test_y.max()))) + 1
    probe = fit_linear_probe(train_x, train_y, k, l2=l2, max_iter=max_iter)
    return (probe.predict(test_x) == test_y).tolist()


@dataclass
class ToyProbeData:
    """Generated images and integer labels per attribute (``classes[attr]`` names the labels)."""

    images: list
    labels: dict[str, list[int]]
    classes: dict[str, list]
    n_train: int


def toy_probe_data(
    seed: int,
    n_train: int,
    n_test: int,
    image_size: int = 64,
    max_count: int = 3,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
) -> ToyProbeData:
    """Toy-world images ``0..n_train+n_test-1`` of world ``seed``; the first ``n_train`` train."""
    world = ToyWorld(seed=seed, image_size=image_size, max_count=max_count)
    samples = [world.sample(i) for i in range(n_train + n_test)]
    labels, classes = {}, {}
    for attr in attributes:
        values = sorted({s.attributes[attr] for s in samples}, key=str)
        index = {v: i for i, v in enumerate(values)}
        labels[attr] = [index[s.attributes[attr]] for s in samples]
        classes[attr] = values
    return ToyProbeData([s.image for s in samples], labels, classes, n_train)


def evaluate_probe_hits(
    encoder, data: ToyProbeData, l2: float = 1e-3, max_iter: int = 200
) -> dict[str, list[bool]]:
    """Per attribute, per test image: right or wrong (:func:`accuracy` makes each a percentage)."""
    feats = encoder.encode_images(data.images, desc="probe images")
    n = data.n_train
    return {
        attr: probe_hits(feats[:n], y[:n], feats[n:], y[n:], l2=l2, max_iter=max_iter)
        for attr, y in data.labels.items()
    }
