"""Linear probe: separable features give ~100%, random labels give ~chance; toy labels."""

from __future__ import annotations

import torch

from eval.clip.probe import accuracy, fit_linear_probe, probe_hits, toy_probe_data


def test_separable_features_are_learned():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=gen)
    centres = torch.randn(4, 16, generator=gen) * 5
    x = centres[y] + torch.randn(400, 16, generator=gen) * 0.5
    acc = accuracy(probe_hits(x[:300], y[:300], x[300:], y[300:]))
    assert acc >= 99.0


def test_random_labels_stay_near_chance():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 16, generator=gen)
    y = torch.randint(0, 4, (1000,), generator=gen)
    acc = accuracy(probe_hits(x[:600], y[:600], x[600:], y[600:]))
    assert 15.0 <= acc <= 35.0  # chance is 25%


def test_probe_is_deterministic_and_standardises():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(100, 8, generator=gen) * 1000 + 50  # badly scaled input
    y = (x[:, 0] > 50).long()
    a, b = fit_linear_probe(x, y, 2), fit_linear_probe(x, y, 2)
    assert torch.equal(a.weight, b.weight)
    assert (a.predict(x) == y).double().mean() > 0.97


def test_toy_probe_data_labels_match_the_world():
    from genhancer.toyworld.world import ToyWorld

    data = toy_probe_data(seed=5, n_train=6, n_test=4, image_size=32, attributes=("color", "count"))
    world = ToyWorld(seed=5)
    assert len(data.images) == 10 and data.n_train == 6
    for i in range(10):
        attrs = world.sample(i).attributes
        assert data.classes["color"][data.labels["color"][i]] == attrs["color"]
        assert data.classes["count"][data.labels["count"][i]] == attrs["count"]
